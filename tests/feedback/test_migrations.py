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

Revision ID: 0099
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "0002"
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
    assert schema_revision(engine) == head_revision() == "0002"
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
    (migrations / "versions" / "0099_email.py").write_text(SECOND)
    url = database_url(db_url)

    old = open_store(url, seed=0)  # the database as shipped: revision 0002, with data in it
    old.add_candidates("Q?", [Candidate("a."), Candidate("b.")])
    ada = old.annotator_for_token(old.add_annotator("ada"))
    old.record_judgement(ada, old.next_task_for(ada).id, "A")
    old.close()

    engine = make_engine(url)
    upgrade_schema(engine, migrations=migrations)
    assert schema_revision(engine) == head_revision(migrations) == "0099"
    assert "email" in {c["name"] for c in inspect(engine).get_columns("annotators")}
    engine.dispose()

    store = Store(make_engine(url))  # the data came through, and the store works on the new schema
    assert [(v.annotator, v.choice) for v in store.votes()] == [("ada", "A")]
    assert store.find_annotator("ada") == ada
    store.close()

    with pytest.raises(StoreError, match="schema revision 0099, which this version of tether does not know"):
        open_store(url)  # tether's shipped migrations stop at 0002: a newer database is refused, not damaged


def test_a_store_of_the_first_schema_gets_its_open_slots_counted(db_url):
    """0001 -> 0002 on a store with answers and assignments: each task's open slots (``needed``) come from what is
    stored, and labelling carries on from there."""
    url = database_url(db_url)
    engine = make_engine(url)
    upgrade_schema(engine, "0001")
    now = "2026-01-01 00:00:00"
    with engine.begin() as c:
        c.exec_driver_sql(f"INSERT INTO prompts (id, key, text, meta, created_at) VALUES (1, 'k', 'Q?', '{{}}', '{now}')")
        for i in range(1, 7):
            c.exec_driver_sql(
                f"INSERT INTO responses (id, prompt_id, key, text, settings, meta, created_at) "
                f"VALUES ({i}, 1, 'k{i}', 'answer {i}.', '{{}}', '{{}}', '{now}')"
            )
        for task, (a, b, golden) in enumerate([(1, 2, None), (3, 4, None), (5, 6, "A")], 1):
            c.exec_driver_sql(
                "INSERT INTO tasks (id, response_a_id, response_b_id, required, is_golden, golden_answer, meta, created_at) "
                f"VALUES ({task}, {a}, {b}, 2, {'true' if golden else 'false'}, {repr(golden) if golden else 'NULL'}, '{{}}', '{now}')"
            )
        for who, kind in enumerate(["human", "human", "judge"], 1):
            c.exec_driver_sql(
                f"INSERT INTO annotators (id, name, kind, token_hash, is_admin, created_at) VALUES ({who}, 'a{who}', '{kind}', 'h{who}', false, '{now}')"
            )
        # task 1: a1 answered, a2 holds it; task 2: a1 skipped, the judge answered; task 3 (golden): a1 answered
        for task, who in [(1, 1), (1, 2), (2, 1), (3, 1)]:
            c.exec_driver_sql(f"INSERT INTO assignments (task_id, annotator_id, left_side, shown_at) VALUES ({task}, {who}, 'A', '{now}')")
        for task, who, choice in [(1, 1, "A"), (2, 1, "skip"), (2, 3, "B"), (3, 1, "A")]:
            c.exec_driver_sql(
                f"INSERT INTO judgements (task_id, annotator_id, choice, answered_at) VALUES ({task}, {who}, '{choice}', '{now}')"
            )
    upgrade_schema(engine)
    assert schema_revision(engine) == "0002"
    with engine.connect() as c:
        assert dict(c.exec_driver_sql("SELECT id, needed FROM tasks").all()) == {1: 0, 2: 2, 3: 0}
        held = c.exec_driver_sql("SELECT task_id, annotator_id, answered, held FROM assignments ORDER BY id").all()
        assert [tuple(map(int, row)) for row in held] == [(1, 1, 1, 0), (1, 2, 0, 1), (2, 1, 1, 0), (3, 1, 1, 0)]
    engine.dispose()

    store = open_store(url, seed=0, golden_rate=0.0, assignment_timeout_s=60)  # a2's hold of 2026-01-01 has long expired
    a2 = store.find_annotator("a2")
    assert store.next_task_for(a2).id == 1  # still pending for a2: shown again
    store.record_judgement(a2, 1, "B")
    assert store.next_task_for(a2).id == 2  # the only regular task with an open slot
    store.close()


def test_no_table_is_made_outside_the_migrations():
    source = Path(__file__).resolve().parents[2] / "src" / "tether" / "feedback"
    assert not [p for p in source.rglob("*.py") if ".create_all(" in p.read_text()]
