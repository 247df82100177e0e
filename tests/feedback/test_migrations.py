"""The schema comes from the Alembic migrations, matches the ORM classes, and upgrades in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from tether.feedback.schema import VERSION_TABLE, Base
from tether.feedback.store import (
    MIGRATIONS,
    Candidate,
    Store,
    StoreError,
    database_url,
    head_revision,
    make_engine,
    open_store,
    schema_revision,
    upgrade_schema,
)

SECOND = '''"""Test-only: annotators get an e-mail address.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("email", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.drop_column("email")
'''


def test_the_migrations_create_the_schema_the_orm_describes(db_url):
    engine = make_engine(database_url(db_url))
    assert schema_revision(engine) is None and inspect(engine).get_table_names() == []
    upgrade_schema(engine)
    assert schema_revision(engine) == head_revision() == "0001"
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {VERSION_TABLE}
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []  # the ORM classes and the migrations agree
    engine.dispose()


def test_opening_again_changes_nothing(db_url):
    store = open_store(db_url)
    store.add_candidates("Q?", [Candidate("a."), Candidate("b.")])
    store.close()
    store = open_store(db_url)
    assert schema_revision(store.engine) == head_revision() and len(store.tasks()) == 1
    store.close()


def test_an_existing_database_upgrades_in_place(db_url, tmp_path):
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "0002_email.py").write_text(SECOND)
    url = database_url(db_url)

    old = open_store(url, seed=0)  # the database as shipped: revision 0001, with data in it
    old.add_candidates("Q?", [Candidate("a."), Candidate("b.")])
    ada = old.annotator_for_token(old.add_annotator("ada"))
    old.record_judgement(ada, old.next_task_for(ada).id, "A")
    old.close()

    engine = make_engine(url)
    upgrade_schema(engine, migrations=migrations)
    assert schema_revision(engine) == head_revision(migrations) == "0002"
    assert "email" in {c["name"] for c in inspect(engine).get_columns("annotators")}
    engine.dispose()

    store = Store(make_engine(url))  # the data came through, and the store works on the new schema
    assert [(v.annotator, v.choice) for v in store.votes()] == [("ada", "A")]
    assert store.find_annotator("ada") == ada
    store.close()

    with pytest.raises(StoreError, match="schema revision 0002, which this version of tether does not know"):
        open_store(url)  # tether's shipped migrations stop at 0001: a newer database is refused, not damaged


def test_no_table_is_made_outside_the_migrations():
    source = Path(__file__).resolve().parents[2] / "src" / "tether" / "feedback"
    assert not [p for p in source.rglob("*.py") if ".create_all(" in p.read_text()]
