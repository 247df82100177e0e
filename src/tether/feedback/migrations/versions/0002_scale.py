"""The store at the size of a real team: open slots kept per task, pending and held assignments indexed,
token expiry and removed annotators.

* ``tasks.needed``: slots still open, so that the next task is read from one index range instead of
  counting every task's answers; ``ix_tasks_golden`` finds golden tasks without a scan.
* ``assignments.answered`` and ``assignments.held``: an annotator's pending task and the expired holds are
  each one index lookup.
* ``annotators.token_expires_at`` (None: never) and ``annotators.removed_at`` (soft delete: the judgements stay).

Existing rows are filled in from the answers and assignments already stored: every unanswered assignment
holds its slot until the store releases it as expired (on the next assignment, at the store's own timeout).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("needed", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("answered", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("token_expires_at", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("removed_at", sa.DateTime, nullable=True))

    op.execute(
        "UPDATE assignments SET answered = EXISTS (SELECT 1 FROM judgements j "
        "WHERE j.task_id = assignments.task_id AND j.annotator_id = assignments.annotator_id)"
    )
    op.execute("UPDATE assignments SET held = NOT answered")
    op.execute(
        "UPDATE tasks SET needed = CASE WHEN is_golden THEN 0 ELSE required "
        "- (SELECT count(*) FROM judgements j JOIN annotators a ON a.id = j.annotator_id "
        "   WHERE j.task_id = tasks.id AND j.choice <> 'skip' AND a.kind <> 'judge') "
        "- (SELECT count(*) FROM assignments s WHERE s.task_id = tasks.id AND s.held) END"
    )
    op.create_index("ix_tasks_needed", "tasks", ["needed", "id"])
    op.create_index("ix_tasks_golden", "tasks", ["is_golden", "id"])
    op.create_index("ix_assignments_pending", "assignments", ["annotator_id", "answered", "shown_at"])
    op.create_index("ix_assignments_held", "assignments", ["held", "shown_at"])


def downgrade() -> None:
    for index, table in (
        ("ix_assignments_held", "assignments"),
        ("ix_assignments_pending", "assignments"),
        ("ix_tasks_golden", "tasks"),
        ("ix_tasks_needed", "tasks"),
    ):
        op.drop_index(index, table_name=table)
    with op.batch_alter_table("annotators") as batch:
        batch.drop_column("removed_at")
        batch.drop_column("token_expires_at")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("held")
        batch.drop_column("answered")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("needed")
