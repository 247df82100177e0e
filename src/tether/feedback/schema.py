"""The preference store's tables, as SQLAlchemy ORM classes.

The schema itself is created and changed only by the Alembic migrations in
``feedback/migrations/versions`` (never ``create_all``): a team's existing database
upgrades in place, and ``tests/feedback/test_migrations.py`` checks that these classes
and the migrations describe the same tables.

    prompts      one prompt: its text, its chat messages when it is a dialogue, where it came from
    responses    one answer to a prompt, with the model and sampling settings that produced it
    tasks        a comparison: response A against response B, how many distinct annotators it needs,
                 how many slots are still open (``needed``, kept up to date so that assignment reads
                 one index range instead of counting answers), and for a golden task the known answer
    assignments  a task shown to an annotator: which response was on the left, and when; whether it
                 was answered, and whether it still holds a slot of its task
    judgements   an annotator's answer to a task: A, B, tie or skip (A/B name the task's responses,
                 never screen sides), strength, reason, timings, guidelines version
    annotators   people, AI judges and simulated annotators; a person's token is kept only as SHA-256,
                 with the time it expires; a removed annotator stays (their judgements keep their author)
    guidelines   the annotation guidelines, one row per version; the highest version is in force

Times are naive UTC datetimes on both backends.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

CHOICES: tuple[str, ...] = ("A", "B", "tie", "skip")
"""What an annotator may answer: response A, response B, a tie, or skip (no opinion)."""

SIDES: tuple[str, ...] = ("A", "B")
"""The response shown on the left: the task's response A or response B."""

KINDS: tuple[str, ...] = ("human", "judge", "simulated")
"""Who an annotator is: a person, an AI judge, or a simulated annotator."""

GOLDEN_ANSWERS: tuple[str, ...] = ("A", "B", "tie")
"""The known answer of a golden task."""

VERSION_TABLE = "tether_alembic_version"
"""Alembic's bookkeeping table, named so as not to clash with another application's in a shared database."""


def utcnow() -> datetime:
    """The current time as a naive UTC datetime (how every time in the store is kept)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """The store's tables; indexes and unique constraints are named as the migrations name them."""

    metadata = MetaData(naming_convention={"ix": "ix_%(table_name)s_%(column_0_name)s", "uq": "uq_%(table_name)s_%(column_0_name)s"})


class PromptRow(Base):
    __tablename__ = "prompts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the prompt's JSON form: the same prompt added twice is one row."""
    text: Mapped[str] = mapped_column(Text)
    """The prompt as plain text (a dialogue's contents joined with blank lines)."""
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    """The chat messages, for a dialogue prompt; None for a plain-text prompt."""
    source: Mapped[str | None] = mapped_column(String(500), nullable=True)
    """Where the prompt came from (a file, a run directory), or None."""
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Free-form information carried along."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ResponseRow(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "key", name="uq_responses_prompt_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the text: the same answer to the same prompt is one row."""
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(500), nullable=True)
    """The model that wrote the response, or None when unknown."""
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The sampling settings that produced it (temperature, top_p, max_new_tokens, seed, ...)."""
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    prompt: Mapped[PromptRow] = relationship()


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("response_a_id", "response_b_id", name="uq_tasks_pair"),
        CheckConstraint("response_a_id <> response_b_id", name="ck_tasks_two_responses"),
        CheckConstraint("required >= 1", name="ck_tasks_required"),
        CheckConstraint("golden_answer IS NULL OR " + _one_of("golden_answer", GOLDEN_ANSWERS), name="ck_tasks_golden_answer"),
        Index("ix_tasks_needed", "needed", "id"),
        Index("ix_tasks_golden", "is_golden", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    required: Mapped[int] = mapped_column(Integer, default=1)
    """How many distinct annotators must answer it (skips do not count)."""
    is_golden: Mapped[bool] = mapped_column(default=False)
    golden_answer: Mapped[str | None] = mapped_column(String(4), nullable=True)
    """The known answer of a golden task: 'A', 'B' or 'tie'."""
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    needed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Slots still open: ``required`` less the answers that take a slot and the assignments that hold one (0 for a
    golden task, which takes no slots; below 1 when full). The store keeps it up to date in the transaction that
    changes either; the next task for an annotator is the first of the index (needed, id) above 0 they have not seen."""

    response_a: Mapped[ResponseRow] = relationship(foreign_keys=[response_a_id])
    response_b: Mapped[ResponseRow] = relationship(foreign_keys=[response_b_id])


class AnnotatorRow(Base):
    __tablename__ = "annotators"
    __table_args__ = (CheckConstraint(_one_of("kind", KINDS), name="ck_annotators_kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    """'human', 'judge' or 'simulated'."""
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 (hex) of the annotator's token; the token itself is never stored."""
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    token_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    """When the token stops signing in (None: never, as for tokens issued before expiry existed)."""
    removed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    """When the annotator was removed (None: active). A removed annotator cannot sign in; their judgements stay."""


class AssignmentRow(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("task_id", "annotator_id", name="uq_assignments_task_annotator"),
        CheckConstraint(_one_of("left_side", SIDES), name="ck_assignments_left_side"),
        Index("ix_assignments_pending", "annotator_id", "answered", "shown_at"),
        Index("ix_assignments_held", "held", "shown_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    left_side: Mapped[str] = mapped_column(String(1))
    """Which response was shown on the left: 'A' or 'B' (chosen at random when assigned)."""
    shown_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    answered: Mapped[bool] = mapped_column(default=False, server_default=false())
    """The annotator has answered the task."""
    held: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Unanswered and still holding a slot of the task (counted in ``tasks.needed``); released when answered or expired."""


class JudgementRow(Base):
    __tablename__ = "judgements"
    __table_args__ = (
        UniqueConstraint("task_id", "annotator_id", name="uq_judgements_task_annotator"),
        CheckConstraint(_one_of("choice", CHOICES), name="ck_judgements_choice"),
        CheckConstraint("left_side IS NULL OR " + _one_of("left_side", SIDES), name="ck_judgements_left_side"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), index=True)
    choice: Mapped[str] = mapped_column(String(4))
    """'A' or 'B' (the task's response A or B, whatever side it was shown on), 'tie' or 'skip'."""
    left_side: Mapped[str | None] = mapped_column(String(1), nullable=True)
    """Which response was shown on the left ('A' or 'B'); None when not shown side by side."""
    strength: Mapped[float | None] = mapped_column(Float, nullable=True)
    """How strong the preference is (the annotator's or judge's own scale), or None."""
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    shown_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    answered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Time spent: answered_at - shown_at, in seconds."""
    guidelines_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The guidelines in force when the judgement was recorded, or None if there were none."""

    task: Mapped[TaskRow] = relationship()
    annotator: Mapped[AnnotatorRow] = relationship()


class GuidelinesRow(Base):
    __tablename__ = "guidelines"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
