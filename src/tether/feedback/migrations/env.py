"""Alembic environment for the preference store.

`tether.feedback.store.upgrade_schema` runs the migrations with an open connection, passed in
``config.attributes["connection"]``. Developers can also run the ``alembic`` command with a
config whose ``sqlalchemy.url`` points at a database (``alembic revision --autogenerate``
compares against ``tether.feedback.schema``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from tether.feedback.schema import VERSION_TABLE, Base


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("The preference store's migrations run online only: give them a database connection.")

given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    with create_engine(context.config.get_main_option("sqlalchemy.url")).connect() as connection:
        run(connection)
        connection.commit()
