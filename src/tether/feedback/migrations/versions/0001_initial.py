"""The preference store's first schema: prompts, responses, tasks, assignments, judgements,
annotators, guidelines.

Revision ID: 0001
Revises:
Create Date: 2026-05-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("messages", sa.JSON, nullable=True),
        sa.Column("source", sa.String(500), nullable=True),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("key", name="uq_prompts_key"),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("model", sa.String(500), nullable=True),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("prompt_id", "key", name="uq_responses_prompt_key"),
    )
    op.create_index("ix_responses_prompt_id", "responses", ["prompt_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("response_a_id", sa.Integer, sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("response_b_id", sa.Integer, sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("is_golden", sa.Boolean, nullable=False),
        sa.Column("golden_answer", sa.String(4), nullable=True),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("response_a_id", "response_b_id", name="uq_tasks_pair"),
        sa.CheckConstraint("response_a_id <> response_b_id", name="ck_tasks_two_responses"),
        sa.CheckConstraint("required >= 1", name="ck_tasks_required"),
        sa.CheckConstraint("golden_answer IS NULL OR golden_answer IN ('A', 'B', 'tie')", name="ck_tasks_golden_answer"),
    )
    op.create_index("ix_tasks_response_a_id", "tasks", ["response_a_id"])
    op.create_index("ix_tasks_response_b_id", "tasks", ["response_b_id"])
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", name="uq_annotators_name"),
        sa.UniqueConstraint("token_hash", name="uq_annotators_token_hash"),
        sa.CheckConstraint("kind IN ('human', 'judge', 'simulated')", name="ck_annotators_kind"),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("left_side", sa.String(1), nullable=False),
        sa.Column("shown_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_assignments_task_annotator"),
        sa.CheckConstraint("left_side IN ('A', 'B')", name="ck_assignments_left_side"),
    )
    op.create_index("ix_assignments_task_id", "assignments", ["task_id"])
    op.create_index("ix_assignments_annotator_id", "assignments", ["annotator_id"])
    op.create_table(
        "judgements",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("choice", sa.String(4), nullable=False),
        sa.Column("left_side", sa.String(1), nullable=True),
        sa.Column("strength", sa.Float, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("shown_at", sa.DateTime, nullable=True),
        sa.Column("answered_at", sa.DateTime, nullable=False),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("guidelines_version", sa.Integer, nullable=True),
        sa.UniqueConstraint("task_id", "annotator_id", name="uq_judgements_task_annotator"),
        sa.CheckConstraint("choice IN ('A', 'B', 'tie', 'skip')", name="ck_judgements_choice"),
        sa.CheckConstraint("left_side IS NULL OR left_side IN ('A', 'B')", name="ck_judgements_left_side"),
    )
    op.create_index("ix_judgements_task_id", "judgements", ["task_id"])
    op.create_index("ix_judgements_annotator_id", "judgements", ["annotator_id"])
    op.create_index("ix_judgements_answered_at", "judgements", ["answered_at"])
    op.create_table(
        "guidelines",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("guidelines", "judgements", "assignments", "annotators", "tasks", "responses", "prompts"):
        op.drop_table(table)
