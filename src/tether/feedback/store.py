"""The preference store: prompts, candidate responses, comparison tasks and judgements in one database.

A SQLite file by default (WAL mode, foreign keys on, nothing to set up) or PostgreSQL by URL
for a team. :func:`open_store` opens either and brings its schema to the newest migration:

    store = open_store("runs/prefs.db")                         # or "postgresql://user@host/prefs"
    token = store.add_annotator("ada")                          # shown once; only its SHA-256 is kept
    ada = store.annotator_for_token(token)
    task = store.next_task_for(ada)                             # a pair in random left/right order
    store.record_judgement(ada, task.id, "left", reason="...")  # committed before it returns
    store.progress(ada)                                         # Progress(done_today=1, total=...)

Everything a labelling front end needs is here: ``annotator_for_token``, ``next_task_for``,
``record_judgement``, ``progress`` and ``guidelines``; ``tether.feedback.agreement.stats`` and
``tether.feedback.export.export_preferences`` read the store back.

Assignment. Each task needs ``required`` distinct annotators whose answer is not a skip. A task
shown to an annotator is held for them (an *assignment*, with the left/right order drawn
then) for ``assignment_timeout_s``; after that the slot goes to someone else, though the
annotator can still answer. Asking again before answering shows the same task in the same
order. Nobody is shown a task twice. Tasks are assigned one at a time (SQLite's write lock,
a PostgreSQL advisory lock), so concurrent annotators never over-fill a task. Golden tasks
(known answer) are mixed in at ``golden_rate``, each at most once per annotator, and only
while there is real work left.

Durability. Every judgement is its own transaction, committed (and on SQLite synced to the
WAL file, ``synchronous=FULL``) before ``record_judgement`` returns: an acknowledged judgement
survives a crash or a kill of the process. SQLite transactions start with ``BEGIN IMMEDIATE``,
so concurrent writers wait their turn (up to 30 s) instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exists, func, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tether.data.records import PreferencePair, Prompt, messages_problem, prompt_text
from tether.feedback.schema import (
    CHOICES,
    GOLDEN_ANSWERS,
    KINDS,
    VERSION_TABLE,
    AnnotatorRow,
    AssignmentRow,
    GuidelinesRow,
    JudgementRow,
    PromptRow,
    ResponseRow,
    TaskRow,
    utcnow,
)

MIGRATIONS = Path(__file__).parent / "migrations"
"""The Alembic migrations that create and change the schema."""

_ASSIGNMENT_LOCK = 0x7E7E_0001
"""PostgreSQL advisory lock held while a task is assigned, so two annotators never take the same last slot."""


class StoreError(ValueError):
    """Something the user asked of the store cannot be done; the message says what and why."""


class DuplicateJudgementError(StoreError):
    """An annotator answered a task they had already answered differently."""


@dataclass(frozen=True)
class Annotator:
    """Someone (or something) who labels: ``kind`` is 'human', 'judge' or 'simulated'."""

    id: int
    name: str
    kind: str
    is_admin: bool


@dataclass(frozen=True)
class Task:
    """A comparison as shown to one annotator: ``left`` and ``right`` are the two responses.

    ``left_side`` says which of the task's responses is on the left ('A' or 'B'); answers
    are recorded in terms of A and B (see :meth:`Store.record_judgement`).
    """

    id: int
    prompt: Prompt
    left: str
    right: str
    left_side: str
    shown_at: datetime
    guidelines_version: int | None


@dataclass(frozen=True)
class Progress:
    """``done_today`` answers since midnight UTC, out of ``total`` = done today + still available."""

    done_today: int
    total: int


@dataclass(frozen=True)
class Guidelines:
    """The annotation guidelines of one version."""

    version: int
    text: str


@dataclass(frozen=True)
class Candidate:
    """A response to store: its text, the model and the sampling settings that produced it."""

    text: str
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredTask:
    """A task as stored, with its prompt and both responses (for export and statistics)."""

    id: int
    prompt: Prompt
    response_a: str
    response_b: str
    required: int
    is_golden: bool
    golden_answer: str | None
    meta: dict[str, Any]


@dataclass(frozen=True)
class Vote:
    """One recorded judgement, flattened (for export and statistics)."""

    task_id: int
    annotator: str
    kind: str
    choice: str
    left_side: str | None
    strength: float | None
    reason: str | None
    seconds: float | None
    answered_at: datetime
    guidelines_version: int | None


# --------------------------------------------------------------------------- opening


def database_url(target: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL for a file path (SQLite) or a URL (``postgresql://`` uses psycopg 3)."""
    text = os.fspath(target)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        if path.is_dir():
            raise StoreError(f"the preference store {text} is a folder; expected a database file such as prefs.db or a URL")
        return f"sqlite:///{path}"
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise StoreError(f"cannot read the database URL {text!r}; expected e.g. postgresql://user@host/dbname or a file path") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def _shown(url: str) -> str:
    """A URL fit for an error message (password hidden)."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys, full sync and BEGIN IMMEDIATE."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now: no deadlock on upgrade

    return engine


def _alembic_config(migrations: Path):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations))
    return config


def upgrade_schema(engine: Engine, revision: str = "head", migrations: Path = MIGRATIONS) -> None:
    """Run the Alembic migrations up to ``revision`` (the newest by default), in one transaction."""
    from alembic import command
    from alembic.script import ScriptDirectory

    config = _alembic_config(migrations)
    current = schema_revision(engine)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current is not None and current not in known:
        raise StoreError(
            f"the preference store {_shown(str(engine.url))} has schema revision {current}, which this version "
            f"of tether does not know (it knows {', '.join(sorted(known))}): it was written by a newer tether; upgrade tether"
        )
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at (None: an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def head_revision(migrations: Path = MIGRATIONS) -> str:
    """The newest migration shipped with tether."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(migrations)).get_current_head()


def open_store(
    target: str | os.PathLike[str],
    *,
    golden_rate: float = 0.1,
    assignment_timeout_s: float = 3600.0,
    seed: int | None = None,
    create: bool = True,
) -> Store:
    """Open the store at a file path (SQLite) or URL, creating or upgrading its schema in place.

    Args:
        target: ``prefs.db``, ``sqlite:///prefs.db`` or ``postgresql://user:pw@host/db``.
        golden_rate: chance that a task handed out is a golden one (while any are left).
        assignment_timeout_s: how long a shown task holds its slot for the annotator.
        seed: seeds golden mixing and left/right order (None: fresh randomness).
        create: a SQLite file that does not exist yet is created (with its folders); False (commands that only
            read the store) makes it an error instead, so a mistyped path is not answered with an empty store.
    """
    url = database_url(target)
    if not create and url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        raise StoreError(
            f"no preference store at {url[len('sqlite:///') :]} (check the path; `tether label import` or "
            "`tether collect db=...` create one)"
        )
    engine = make_engine(url)
    try:
        upgrade_schema(engine)
    except OperationalError as e:
        engine.dispose()
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        raise StoreError(f"cannot open the preference store {_shown(url)}: {reason}") from None
    return Store(engine, golden_rate=golden_rate, assignment_timeout_s=assignment_timeout_s, seed=seed)


# --------------------------------------------------------------------------- the store


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise StoreError("a prompt must be non-empty text or chat messages; got an empty string")
        return
    problem = messages_problem(prompt, "prompt", last_role="user")
    if problem is not None:
        where, expected, got = problem
        raise StoreError(f"{where}: expected {expected}, got {got!r}")


class Store:
    """The preference store over an engine whose schema is at the newest migration (see :func:`open_store`)."""

    def __init__(self, engine: Engine, *, golden_rate: float = 0.1, assignment_timeout_s: float = 3600.0, seed: int | None = None):
        if not 0 <= golden_rate <= 1:
            raise StoreError(f"golden_rate must be between 0 and 1, got {golden_rate}")
        if assignment_timeout_s <= 0:
            raise StoreError(f"assignment_timeout_s must be positive, got {assignment_timeout_s}")
        self.engine = engine
        self.golden_rate = golden_rate
        self.assignment_timeout = timedelta(seconds=assignment_timeout_s)
        self._rng = random.Random(seed)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- content

    def add_prompt(self, prompt: Prompt, *, source: str | None = None, meta: dict[str, Any] | None = None) -> int:
        """Store a prompt (text or chat messages); the same prompt again returns the same id."""
        with self._sessions.begin() as s:
            return self._prompt(s, prompt, source, meta)

    def add_response(self, prompt_id: int, response: Candidate | str) -> int:
        """Store a response to a prompt; the same text for the same prompt returns the same id."""
        with self._sessions.begin() as s:
            if s.get(PromptRow, prompt_id) is None:
                raise StoreError(f"there is no prompt {prompt_id} in the store")
            return self._response(s, prompt_id, response if isinstance(response, Candidate) else Candidate(response))

    def add_task(
        self,
        response_a_id: int,
        response_b_id: int,
        *,
        required: int = 1,
        golden_answer: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Ask for A-versus-B judgements on two responses to one prompt; the same pair (either order) is one task."""
        with self._sessions.begin() as s:
            return self._task(
                s,
                s.get(ResponseRow, response_a_id),
                s.get(ResponseRow, response_b_id),
                required,
                golden_answer,
                meta,
                what=f"responses {response_a_id} and {response_b_id}",
            )

    def add_candidates(
        self,
        prompt: Prompt,
        candidates: Sequence[Candidate],
        pairs: Iterable[tuple[int, int]] | None = None,
        *,
        required: int = 1,
        source: str | None = None,
        prompt_meta: dict[str, Any] | None = None,
    ) -> list[int]:
        """Store a prompt, its candidate responses and comparison tasks for ``pairs`` of them (indices
        into ``candidates``; all pairs by default), in one transaction. Pairs whose responses are
        empty or identical are left out (there is nothing to prefer). Returns the task ids."""
        if pairs is None:
            pairs = [(i, j) for i in range(len(candidates)) for j in range(i + 1, len(candidates))]
        with self._sessions.begin() as s:
            prompt_id = self._prompt(s, prompt, source, prompt_meta)
            ids = [self._response(s, prompt_id, c) for c in candidates]
            return [
                self._task(s, s.get(ResponseRow, ids[i]), s.get(ResponseRow, ids[j]), required, None, None)
                for i, j in pairs
                if _comparable(candidates[i].text, candidates[j].text)
            ]

    def add_pairs(
        self,
        pairs: Iterable[PreferencePair],
        *,
        required: int = 1,
        golden: bool = False,
        source: str | None = None,
        model: str | None = None,
    ) -> list[int]:
        """Store preference pairs as tasks (A = chosen, B = rejected), in one transaction.

        With ``golden``, each becomes a golden task whose known answer is A (or a tie for a pair
        whose meta says ``tie: true``). Pairs with empty or identical responses raise StoreError.
        """
        with self._sessions.begin() as s:
            ids = []
            for n, pair in enumerate(pairs, 1):
                if not _comparable(pair.chosen, pair.rejected):
                    raise StoreError(f"pair {n}: 'chosen' and 'rejected' must be two different, non-empty responses")
                prompt_id = self._prompt(s, pair.prompt, source, None)
                a = self._response(s, prompt_id, Candidate(pair.chosen, model))
                b = self._response(s, prompt_id, Candidate(pair.rejected, model))
                answer = ("tie" if pair.meta.get("tie") else "A") if golden else None
                ids.append(self._task(s, s.get(ResponseRow, a), s.get(ResponseRow, b), required, answer, dict(pair.meta)))
            return ids

    def add_guidelines(self, text: str) -> int:
        """Put a new version of the guidelines in force; returns its version number (1, 2, ...)."""
        if not text.strip():
            raise StoreError("the guidelines are empty; expected the text annotators should follow")
        with self._sessions.begin() as s:
            version = (s.scalar(select(func.max(GuidelinesRow.version))) or 0) + 1
            s.add(GuidelinesRow(version=version, text=text))
            return version

    def guidelines(self) -> Guidelines | None:
        """The guidelines in force (the newest version), or None when none were added."""
        with self._sessions.begin() as s:
            row = s.scalars(select(GuidelinesRow).order_by(GuidelinesRow.version.desc()).limit(1)).first()
            return Guidelines(row.version, row.text) if row else None

    def _prompt(self, s: Session, prompt: Prompt, source: str | None, meta: dict[str, Any] | None) -> int:
        _check_prompt(prompt)
        key = _sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False))
        found = s.scalar(select(PromptRow.id).where(PromptRow.key == key))
        if found is not None:
            return found
        row = PromptRow(
            key=key,
            text=prompt_text(prompt),
            messages=None if isinstance(prompt, str) else [dict(m) for m in prompt],
            source=source,
            meta=dict(meta or {}),
        )
        s.add(row)
        s.flush()
        return row.id

    def _response(self, s: Session, prompt_id: int, c: Candidate) -> int:
        if not isinstance(c.text, str):
            raise StoreError(f"a response must be text, got {c.text!r}")
        key = _sha256(c.text)
        found = s.scalar(select(ResponseRow.id).where(ResponseRow.prompt_id == prompt_id, ResponseRow.key == key))
        if found is not None:
            return found
        row = ResponseRow(prompt_id=prompt_id, key=key, text=c.text, model=c.model, settings=dict(c.settings), meta=dict(c.meta))
        s.add(row)
        s.flush()
        return row.id

    def _task(
        self,
        s: Session,
        a: ResponseRow | None,
        b: ResponseRow | None,
        required: int,
        golden_answer: str | None,
        meta: dict[str, Any] | None,
        what: str = "",
    ) -> int:
        if a is None or b is None:
            raise StoreError(f"cannot compare {what}: {'the first' if a is None else 'the second'} is not in the store")
        if a.prompt_id != b.prompt_id:
            raise StoreError(f"cannot compare {what}: they answer different prompts ({a.prompt_id} and {b.prompt_id})")
        if not _comparable(a.text, b.text):
            raise StoreError(f"cannot compare {what}: a task needs two different, non-empty responses")
        if isinstance(required, bool) or not isinstance(required, int) or required < 1:
            raise StoreError(f"required (annotators per task) must be a whole number of at least 1, got {required!r}")
        if golden_answer is not None and golden_answer not in GOLDEN_ANSWERS:
            raise StoreError(f"golden_answer must be one of 'A', 'B', 'tie' or None, got {golden_answer!r}")
        found = s.scalar(
            select(TaskRow.id).where(
                or_(
                    (TaskRow.response_a_id == a.id) & (TaskRow.response_b_id == b.id),
                    (TaskRow.response_a_id == b.id) & (TaskRow.response_b_id == a.id),
                )
            )
        )
        if found is not None:
            return found
        row = TaskRow(
            response_a_id=a.id,
            response_b_id=b.id,
            required=required,
            is_golden=golden_answer is not None,
            golden_answer=golden_answer,
            meta=dict(meta or {}),
        )
        s.add(row)
        s.flush()
        return row.id

    # ----------------------------------------------------------------- annotators

    def add_annotator(self, name: str, kind: str = "human", *, admin: bool = False) -> str:
        """Register an annotator; returns their token, which is shown this once (only its SHA-256 is stored)."""
        if not name.strip():
            raise StoreError("an annotator needs a non-empty name")
        if kind not in KINDS:
            raise StoreError(f"annotator kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        token = secrets.token_urlsafe(24)
        try:
            with self._sessions.begin() as s:
                if s.scalar(select(AnnotatorRow.id).where(AnnotatorRow.name == name)) is not None:
                    raise StoreError(f"an annotator named {name!r} already exists; choose another name")
                s.add(AnnotatorRow(name=name, kind=kind, token_hash=_sha256(token), is_admin=admin))
        except IntegrityError:
            raise StoreError(f"an annotator named {name!r} already exists; choose another name") from None
        return token

    def annotator_for_token(self, token: str) -> Annotator | None:
        """The annotator whose token this is, or None for an unknown token."""
        if not token:
            return None
        with self._sessions.begin() as s:
            row = s.scalars(select(AnnotatorRow).where(AnnotatorRow.token_hash == _sha256(token))).first()
            return _annotator(row) if row else None

    def find_annotator(self, name: str) -> Annotator | None:
        """The annotator with this name, or None."""
        with self._sessions.begin() as s:
            row = s.scalars(select(AnnotatorRow).where(AnnotatorRow.name == name)).first()
            return _annotator(row) if row else None

    def get_or_add_annotator(self, name: str, kind: str) -> Annotator:
        """The annotator with this name, registered first (its token unused) if new: for judges and simulated annotators."""
        found = self.find_annotator(name)
        if found is None:
            try:
                self.add_annotator(name, kind)
            except StoreError:
                pass  # added meanwhile by another process
            found = self.find_annotator(name)
        if found.kind != kind:
            raise StoreError(f"annotator {name!r} exists as kind {found.kind!r}, not {kind!r}")
        return found

    def annotators(self) -> list[Annotator]:
        with self._sessions.begin() as s:
            return [_annotator(r) for r in s.scalars(select(AnnotatorRow).order_by(AnnotatorRow.id))]

    # ----------------------------------------------------------------- labelling

    def next_task_for(self, annotator: Annotator) -> Task | None:
        """The task this annotator should answer next, or None when nothing is left for them.

        A task they were shown and have not answered comes back, in the same order. Otherwise a
        golden task they have not seen (at ``golden_rate``), else the regular task with the most
        answers already that still needs annotators: tasks are finished before new ones start.
        The left/right order is drawn here and recorded.
        """
        with self._sessions.begin() as s:
            if s.bind.dialect.name == "postgresql":  # one assignment at a time, as BEGIN IMMEDIATE gives on SQLite
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ASSIGNMENT_LOCK})
            now = utcnow()
            pending = s.scalars(
                select(AssignmentRow)
                .where(
                    AssignmentRow.annotator_id == annotator.id,
                    ~_answered(AssignmentRow.task_id, annotator.id),
                )
                .order_by(AssignmentRow.shown_at, AssignmentRow.id)
                .limit(1)
            ).first()
            if pending is not None:
                return self._view(s, pending)
            regular = s.scalars(
                self._open_tasks(annotator, now).order_by(_filled(now, self.assignment_timeout).desc(), TaskRow.id).limit(1)
            ).first()
            if regular is None:
                return None
            task = regular
            if self.golden_rate > 0 and self._rng.random() < self.golden_rate:
                golden = s.scalars(select(TaskRow).where(TaskRow.is_golden, ~_seen(annotator.id)).order_by(TaskRow.id)).all()
                if golden:
                    task = self._rng.choice(golden)
            assignment = AssignmentRow(task_id=task.id, annotator_id=annotator.id, left_side=self._rng.choice("AB"), shown_at=now)
            s.add(assignment)
            s.flush()
            return self._view(s, assignment)

    def _open_tasks(self, annotator: Annotator, now: datetime):
        """Regular tasks this annotator has not seen that still need annotators."""
        return select(TaskRow).where(~TaskRow.is_golden, ~_seen(annotator.id), _filled(now, self.assignment_timeout) < TaskRow.required)

    def _view(self, s: Session, assignment: AssignmentRow) -> Task:
        task = s.get(TaskRow, assignment.task_id)
        prompt = task.response_a.prompt
        left, right = (task.response_a, task.response_b) if assignment.left_side == "A" else (task.response_b, task.response_a)
        return Task(
            id=task.id,
            prompt=prompt.messages if prompt.messages is not None else prompt.text,
            left=left.text,
            right=right.text,
            left_side=assignment.left_side,
            shown_at=assignment.shown_at,
            guidelines_version=s.scalar(select(func.max(GuidelinesRow.version))),
        )

    def record_judgement(
        self,
        annotator: Annotator,
        task_id: int,
        choice: str,
        *,
        strength: float | None = None,
        reason: str | None = None,
        left_side: str | None = None,
        seconds: float | None = None,
    ) -> int:
        """Record an annotator's answer to a task and commit it before returning its id.

        ``choice`` is 'A' or 'B' (the task's response A or B), 'tie' or 'skip', or 'left' /
        'right' for the side it was shown on, which the recorded left/right order turns into
        A or B. For a task handed out by :meth:`next_task_for` the order and the time spent come
        from that assignment; an AI judge or a script may record without one (a person may not),
        giving ``left_side`` and ``seconds`` itself if it knows them.

        The same answer again returns the same id (a retried request is harmless); a different
        answer to a task already answered raises :class:`DuplicateJudgementError`.
        """
        allowed = CHOICES + ("left", "right")
        if choice not in allowed:
            raise StoreError(f"choice must be one of {', '.join(map(repr, allowed))}, got {choice!r}")
        if left_side is not None and left_side not in ("A", "B"):
            raise StoreError(f"left_side must be 'A', 'B' or None, got {left_side!r}")
        now = utcnow()
        try:
            with self._sessions.begin() as s:
                if s.get(TaskRow, task_id) is None:
                    raise StoreError(f"there is no task {task_id} in the store")
                assignment = s.scalars(
                    select(AssignmentRow).where(AssignmentRow.task_id == task_id, AssignmentRow.annotator_id == annotator.id)
                ).first()
                if assignment is not None:
                    if left_side is not None and left_side != assignment.left_side:
                        raise StoreError(
                            f"task {task_id} was shown to {annotator.name} with response {assignment.left_side} "
                            f"on the left, not {left_side}"
                        )
                    left_side = assignment.left_side
                    seconds = (now - assignment.shown_at).total_seconds()
                elif annotator.kind == "human":
                    raise StoreError(f"task {task_id} was not shown to {annotator.name}; ask for the next task first")
                if choice in ("left", "right"):
                    if left_side is None:
                        raise StoreError(
                            f"choice {choice!r} needs the left/right order, and task {task_id} was not shown "
                            f"to {annotator.name} side by side; answer 'A' or 'B'"
                        )
                    choice = left_side if choice == "left" else "AB"[left_side == "A"]
                existing = s.scalars(
                    select(JudgementRow).where(JudgementRow.task_id == task_id, JudgementRow.annotator_id == annotator.id)
                ).first()
                if existing is not None:
                    if (existing.choice, existing.strength, existing.reason) == (choice, strength, reason):
                        return existing.id
                    raise DuplicateJudgementError(
                        f"{annotator.name} has already answered task {task_id} ({existing.choice}); an answer cannot be changed"
                    )
                row = JudgementRow(
                    task_id=task_id,
                    annotator_id=annotator.id,
                    choice=choice,
                    left_side=left_side,
                    strength=strength,
                    reason=reason or None,
                    shown_at=assignment.shown_at if assignment else None,
                    answered_at=now,
                    seconds=seconds,
                    guidelines_version=s.scalar(select(func.max(GuidelinesRow.version))),
                )
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError as e:
            with self._sessions.begin() as s:  # the same annotator answered the same task at the same moment elsewhere?
                if s.scalar(_answered(task_id, annotator.id).select()):
                    raise DuplicateJudgementError(
                        f"{annotator.name} has already answered task {task_id}; an answer cannot be changed"
                    ) from None
            raise StoreError(f"cannot record the answer of {annotator.name} to task {task_id}: {e.orig}") from None

    def progress(self, annotator: Annotator) -> Progress:
        """Answers given since midnight UTC, out of that plus the tasks still available to this annotator."""
        now = utcnow()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        with self._sessions.begin() as s:
            done = s.scalar(
                select(func.count())
                .select_from(JudgementRow)
                .where(JudgementRow.annotator_id == annotator.id, JudgementRow.answered_at >= midnight)
            )
            pending = s.scalar(
                select(func.count())
                .select_from(AssignmentRow)
                .where(AssignmentRow.annotator_id == annotator.id, ~_answered(AssignmentRow.task_id, annotator.id))
            )
            available = s.scalar(select(func.count()).select_from(self._open_tasks(annotator, now).subquery()))
            return Progress(done_today=done, total=done + pending + available)

    # ----------------------------------------------------------------- reading back

    def tasks(self) -> list[StoredTask]:
        """Every task with its prompt and both responses, in id order."""
        with self._sessions.begin() as s:
            out = []
            for t in s.scalars(select(TaskRow).order_by(TaskRow.id)):
                p = t.response_a.prompt
                out.append(
                    StoredTask(
                        t.id,
                        p.messages if p.messages is not None else p.text,
                        t.response_a.text,
                        t.response_b.text,
                        t.required,
                        t.is_golden,
                        t.golden_answer,
                        dict(t.meta),
                    )
                )
            return out

    def first_responses(self, task_ids: Iterable[int]) -> dict[int, str]:
        """The text of each of these tasks' response A: which way round a stored task holds its pair."""
        ids, out = list(task_ids), {}
        with self._sessions.begin() as s:
            for start in range(0, len(ids), 500):  # SQLite caps the parameters of one statement
                rows = s.execute(
                    select(TaskRow.id, ResponseRow.text)
                    .join(ResponseRow, ResponseRow.id == TaskRow.response_a_id)
                    .where(TaskRow.id.in_(ids[start : start + 500]))
                )
                out.update((task_id, text) for task_id, text in rows)
        return out

    def votes(self) -> list[Vote]:
        """Every judgement, in the order recorded."""
        with self._sessions.begin() as s:
            rows = s.execute(select(JudgementRow, AnnotatorRow.name, AnnotatorRow.kind).join(AnnotatorRow).order_by(JudgementRow.id))
            return [
                Vote(j.task_id, name, kind, j.choice, j.left_side, j.strength, j.reason, j.seconds, j.answered_at, j.guidelines_version)
                for j, name, kind in rows
            ]

    # ----------------------------------------------------------------- one annotator's own (for the web app)

    def votes_of(self, annotator: Annotator) -> list[Vote]:
        """This annotator's own judgements, in the order recorded: all that a labelling front end may show them."""
        with self._sessions.begin() as s:
            rows = s.scalars(select(JudgementRow).where(JudgementRow.annotator_id == annotator.id).order_by(JudgementRow.id))
            return [
                Vote(
                    j.task_id,
                    annotator.name,
                    annotator.kind,
                    j.choice,
                    j.left_side,
                    j.strength,
                    j.reason,
                    j.seconds,
                    j.answered_at,
                    j.guidelines_version,
                )
                for j in rows
            ]


# --------------------------------------------------------------------------- query pieces


def _annotator(row: AnnotatorRow) -> Annotator:
    return Annotator(row.id, row.name, row.kind, row.is_admin)


def _comparable(a: str, b: str) -> bool:
    return bool(a.strip()) and bool(b.strip()) and a.strip() != b.strip()


def _answered(task_id, annotator_id):
    """SQL: this annotator has answered this task."""
    return exists().where(JudgementRow.task_id == task_id, JudgementRow.annotator_id == annotator_id)


def _seen(annotator_id: int):
    """SQL: the task (TaskRow) was shown to or answered by this annotator."""
    return or_(
        exists().where(AssignmentRow.task_id == TaskRow.id, AssignmentRow.annotator_id == annotator_id), _answered(TaskRow.id, annotator_id)
    )


def _filled(now: datetime, timeout: timedelta):
    """SQL: a task's (TaskRow) slots taken: answers that are not skips, plus unanswered assignments still held.
    An AI judge's answer takes no slot: the slots are for the annotators the judge is compared with."""
    answers = (
        select(func.count())
        .select_from(JudgementRow)
        .join(AnnotatorRow, AnnotatorRow.id == JudgementRow.annotator_id)
        .where(JudgementRow.task_id == TaskRow.id, JudgementRow.choice != "skip", AnnotatorRow.kind != "judge")
    )
    held = (
        select(func.count())
        .select_from(AssignmentRow)
        .where(
            AssignmentRow.task_id == TaskRow.id,
            AssignmentRow.shown_at > now - timeout,
            ~_answered(AssignmentRow.task_id, AssignmentRow.annotator_id),
        )
    )
    return answers.scalar_subquery() + held.scalar_subquery()
