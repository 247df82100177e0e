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
order. Nobody is shown a task twice. Each task keeps its open slots in ``tasks.needed``, updated in
the transaction that takes or frees one, so the next task is the first entry of the index
(needed, id) above 0 that this annotator has not seen: an assignment reads a bounded number of
rows however large the store (the annotator's own open tasks, at most a few expired holds, one
task), in a short write transaction (SQLite's write lock; on PostgreSQL the chosen task row is
locked with ``FOR UPDATE SKIP LOCKED``, so concurrent annotators take different tasks and never
over-fill one). Golden tasks (known answer) are mixed in at ``golden_rate``, each at most once
per annotator, and only while there is real work left.

Reads never hold the write lock. On SQLite (WAL mode) a read is a plain deferred transaction, a
snapshot that writers do not wait for; only writes start with ``BEGIN IMMEDIATE``, so concurrent
writers wait their turn (up to 30 s) instead of failing. Statistics and export read the store in a
few set-based queries (:meth:`Store.tallies`, :meth:`Store.iter_answered`, pages of 500 tasks)
inside one snapshot (PostgreSQL: REPEATABLE READ, read only), never one query per task.

Durability. Every judgement is its own transaction, committed (and on SQLite synced to the
WAL file, ``synchronous=FULL``) before ``record_judgement`` returns: an acknowledged judgement
survives a crash or a kill of the process.

Annotators. A person's token expires (``token_lifetime``, 90 days by default); :meth:`Store.rotate_token`
issues a new one, :meth:`Store.revoke_token` stops one, and :meth:`Store.remove_annotator` stops the
annotator while keeping every judgement they gave.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, case, create_engine, event, exists, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

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

READ_ONLY = "tether_read_only"
"""Execution option of the store's read sessions: on SQLite they begin a deferred transaction, not BEGIN IMMEDIATE."""

TOKEN_LIFETIME = timedelta(days=90)
"""How long a new token signs in, unless the store is opened with another ``token_lifetime``."""

PAGE = 500
"""Tasks read per query when exporting (and ids per IN list: SQLite caps the parameters of one statement)."""

PROGRESS_CAP = 500
"""Open tasks counted for an annotator's progress at most: beyond this the page says "500+", and counting stays bounded."""

RELEASE_BATCH = 16
"""Expired holds released per assignment at most (the rest on the next ones): bounded work per request."""


class StoreError(ValueError):
    """Something the user asked of the store cannot be done; the message says what and why."""


class DuplicateJudgementError(StoreError):
    """An annotator answered a task they had already answered differently."""


class _Contradiction(StoreError):
    """A golden pair given again (either order) with another known answer; :meth:`Store.add_pairs` names both rows."""

    def __init__(self, task_id: int, said: str):
        super().__init__(f"task {task_id}: {said}")
        self.task_id, self.said = task_id, said


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
    """``done_today`` answers since midnight UTC, out of ``total`` = done today + still available; ``more``: there
    are more available than the :data:`PROGRESS_CAP` counted (the total is then a lower bound)."""

    done_today: int
    total: int
    more: bool = False


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
    """An engine for ``url``; SQLite gets WAL, foreign keys, full sync, and BEGIN IMMEDIATE for every transaction
    but those of connections with the execution option ``READ_ONLY`` (plain, deferred BEGIN)."""
    # room for every worker thread of a web server (anyio's 40) to hold a connection, so none waits out the pool's timeout
    pool = {"pool_size": 10, "max_overflow": 40}
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **pool)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)

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
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")  # deferred: a WAL snapshot that takes no lock writers wait for
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # a write takes the write lock now: no deadlock on upgrade

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
    if current is not None and revision == "head" and current == ScriptDirectory.from_config(config).get_current_head():
        return  # nothing to do: no write transaction, so a command that only reads never waits for the write lock
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at (None: an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
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
    token_lifetime: timedelta | None = TOKEN_LIFETIME,
) -> Store:
    """Open the store at a file path (SQLite) or URL, creating or upgrading its schema in place.

    Args:
        target: ``prefs.db``, ``sqlite:///prefs.db`` or ``postgresql://user:pw@host/db``.
        golden_rate: chance that a task handed out is a golden one (while any are left).
        assignment_timeout_s: how long a shown task holds its slot for the annotator.
        seed: seeds golden mixing and left/right order (None: fresh randomness).
        create: a SQLite file that does not exist yet is created (with its folders); False (commands that only
            read the store) makes it an error instead, so a mistyped path is not answered with an empty store.
        token_lifetime: how long a token issued by this store signs in (None: until revoked).
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
    return Store(engine, golden_rate=golden_rate, assignment_timeout_s=assignment_timeout_s, seed=seed, token_lifetime=token_lifetime)


# --------------------------------------------------------------------------- the store


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_text(value: Any, what: str) -> None:
    """Refuse text no backend stores the same way: a NUL character (PostgreSQL's text cannot hold one) or a lone surrogate."""
    texts = [value] if isinstance(value, str) else [str(m.get("content", "")) for m in value] if isinstance(value, list) else []
    for t in texts:
        if "\x00" in t:
            raise StoreError(f"{what} holds a NUL character (\\u0000), which the store cannot keep; remove it")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise StoreError(f"{what} holds a lone surrogate (half of a UTF-16 pair), which is not text; fix its encoding") from None


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

    def __init__(
        self,
        engine: Engine,
        *,
        golden_rate: float = 0.1,
        assignment_timeout_s: float = 3600.0,
        seed: int | None = None,
        token_lifetime: timedelta | None = TOKEN_LIFETIME,
    ):
        if not 0 <= golden_rate <= 1:
            raise StoreError(f"golden_rate must be between 0 and 1, got {golden_rate}")
        if assignment_timeout_s <= 0:
            raise StoreError(f"assignment_timeout_s must be positive, got {assignment_timeout_s}")
        if token_lifetime is not None and token_lifetime <= timedelta(0):
            raise StoreError(f"token_lifetime must be positive (or None: tokens never expire), got {token_lifetime}")
        self.engine = engine
        self.golden_rate = golden_rate
        self.assignment_timeout = timedelta(seconds=assignment_timeout_s)
        self.token_lifetime = token_lifetime
        self._rng = random.Random(seed)
        self._sessions = sessionmaker(engine, expire_on_commit=False)  # writes (through _write): BEGIN IMMEDIATE on SQLite
        self._writer = threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        self._reads = sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
        snapshot = {READ_ONLY: True}
        if engine.dialect.name == "postgresql":  # one consistent view for a whole export or statistics, taking no locks
            snapshot.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        self._snapshots = sessionmaker(engine.execution_options(**snapshot), expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction. On SQLite the threads of this process first queue at a lock of their own, so that one
        waits its turn instead of polling for SQLite's write lock, whose back-off sleeps (up to 100 ms at a time) let an
        unlucky writer wait for seconds under load; other processes still meet the 30 s busy timeout."""
        with self._writer, self._sessions.begin() as s:
            yield s

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- content

    def add_prompt(self, prompt: Prompt, *, source: str | None = None, meta: dict[str, Any] | None = None) -> int:
        """Store a prompt (text or chat messages); the same prompt again returns the same id."""
        with self._write() as s:
            return self._prompt(s, prompt, source, meta)

    def add_response(self, prompt_id: int, response: Candidate | str) -> int:
        """Store a response to a prompt; the same text for the same prompt returns the same id."""
        with self._write() as s:
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
        with self._write() as s:
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
        with self._write() as s:
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
        lines: Sequence[int] | None = None,
    ) -> list[int]:
        """Store preference pairs as tasks (A = chosen, B = rejected), in one transaction.

        With ``golden``, each becomes a golden task whose known answer is A (or a tie for a pair
        whose meta says ``tie: true``). Pairs with empty or identical responses raise StoreError.
        The same pair twice (either order) is one task; a golden pair that contradicts the known
        answer of the same pair (given earlier in the file, or already in the store) raises
        StoreError naming both rows (``lines``: each pair's line in ``source``; else its row number).
        """
        with self._write() as s:
            ids: list[int] = []
            first: dict[int, int] = {}
            for n, pair in enumerate(pairs, 1):
                where = f"{source + ':' if source else 'pair '}{lines[n - 1] if lines else n}"
                if not _comparable(pair.chosen, pair.rejected):
                    raise StoreError(f"{where}: 'chosen' and 'rejected' must be two different, non-empty responses")
                prompt_id = self._prompt(s, pair.prompt, source, None)
                a = self._response(s, prompt_id, Candidate(pair.chosen, model))
                b = self._response(s, prompt_id, Candidate(pair.rejected, model))
                answer = ("tie" if pair.meta.get("tie") else "A") if golden else None
                try:
                    task = self._task(s, s.get(ResponseRow, a), s.get(ResponseRow, b), required, answer, dict(pair.meta))
                except _Contradiction as e:
                    earlier = first.get(e.task_id)
                    said = f"line {lines[earlier - 1]}" if lines and earlier else f"row {earlier}" if earlier else f"task {e.task_id}"
                    raise StoreError(
                        f"{where}: this pair is the pair of {said}{'' if earlier else ' already in the store'} in the opposite "
                        f"order, and their golden answers contradict each other ({e.said}); fix or remove one of them"
                    ) from None
                first.setdefault(task, n)
                ids.append(task)
            return ids

    def add_guidelines(self, text: str) -> int:
        """Put a new version of the guidelines in force; returns its version number (1, 2, ...)."""
        if not text.strip():
            raise StoreError("the guidelines are empty; expected the text annotators should follow")
        with self._write() as s:
            version = (s.scalar(select(func.max(GuidelinesRow.version))) or 0) + 1
            s.add(GuidelinesRow(version=version, text=text))
            return version

    def guidelines(self) -> Guidelines | None:
        """The guidelines in force (the newest version), or None when none were added."""
        with self._reads.begin() as s:
            row = s.scalars(select(GuidelinesRow).order_by(GuidelinesRow.version.desc()).limit(1)).first()
            return Guidelines(row.version, row.text) if row else None

    def _prompt(self, s: Session, prompt: Prompt, source: str | None, meta: dict[str, Any] | None) -> int:
        _check_prompt(prompt)
        _check_text(prompt, "a prompt")
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
        _check_text(c.text, "a response")
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
        found = s.execute(
            select(TaskRow.id, TaskRow.response_a_id, TaskRow.golden_answer).where(
                or_(
                    (TaskRow.response_a_id == a.id) & (TaskRow.response_b_id == b.id),
                    (TaskRow.response_a_id == b.id) & (TaskRow.response_b_id == a.id),
                )
            )
        ).first()
        if found is not None:
            if golden_answer is not None and found.golden_answer is not None:
                ours = golden_answer if found.response_a_id == a.id else {"A": "B", "B": "A"}.get(golden_answer, golden_answer)
                if ours != found.golden_answer:
                    said = {"A": "the first response wins", "B": "the second response wins", "tie": "a tie"}
                    raise _Contradiction(found.id, f"{said[found.golden_answer]} against {said[ours]}, in the stored order")
            return found.id
        row = TaskRow(
            response_a_id=a.id,
            response_b_id=b.id,
            required=required,
            is_golden=golden_answer is not None,
            golden_answer=golden_answer,
            meta=dict(meta or {}),
            needed=0 if golden_answer is not None else required,
        )
        s.add(row)
        s.flush()
        return row.id

    # ----------------------------------------------------------------- annotators

    def add_annotator(self, name: str, kind: str = "human", *, admin: bool = False) -> str:
        """Register an annotator; returns their token, which is shown this once (only its SHA-256 is stored).
        The token signs in for the store's ``token_lifetime`` (:meth:`rotate_token` issues a new one)."""
        if not name.strip():
            raise StoreError("an annotator needs a non-empty name")
        if kind not in KINDS:
            raise StoreError(f"annotator kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        _check_text(name, "an annotator's name")
        token = secrets.token_urlsafe(24)
        taken = f"an annotator named {name!r} already exists (removed annotators keep their names); choose another name"
        try:
            with self._write() as s:
                if s.scalar(select(AnnotatorRow.id).where(AnnotatorRow.name == name)) is not None:
                    raise StoreError(taken)
                s.add(AnnotatorRow(name=name, kind=kind, token_hash=_sha256(token), is_admin=admin, token_expires_at=self._expiry()))
        except IntegrityError:
            raise StoreError(taken) from None
        return token

    def rotate_token(self, name: str) -> str:
        """A new token for this annotator, returned (shown once); the old one stops signing in at once."""
        token = secrets.token_urlsafe(24)
        with self._write() as s:
            row = _named(s, name)
            row.token_hash, row.token_expires_at = _sha256(token), self._expiry()
        return token

    def revoke_token(self, name: str) -> None:
        """Stop this annotator's token signing in (a browser signed in with it is signed out); their judgements stay,
        and :meth:`rotate_token` gives them a new one."""
        with self._write() as s:
            row = _named(s, name, removed_ok=True)
            row.token_hash = _sha256(secrets.token_urlsafe(32))  # a hash whose token nobody was ever given
            row.token_expires_at = utcnow()

    def remove_annotator(self, name: str) -> int:
        """Remove an annotator: they can no longer sign in or be given tasks, and the tasks they held go to others.
        Their judgements stay in the store, the statistics and the export. Returns how many judgements they keep."""
        now = utcnow()
        with self._write() as s:
            row = _named(s, name)
            row.removed_at = now
            row.token_hash, row.token_expires_at = _sha256(secrets.token_urlsafe(32)), now
            held = s.execute(
                select(AssignmentRow.id, AssignmentRow.task_id).where(AssignmentRow.annotator_id == row.id, AssignmentRow.held)
            ).all()
            self._release(s, held)
            return s.scalar(select(func.count()).select_from(JudgementRow).where(JudgementRow.annotator_id == row.id))

    def _expiry(self) -> datetime | None:
        return None if self.token_lifetime is None else utcnow() + self.token_lifetime

    def annotator_for_token(self, token: str) -> Annotator | None:
        """The annotator whose token this is, or None for an unknown, expired or revoked token or a removed annotator."""
        if not token:
            return None
        with self._reads.begin() as s:
            row = s.scalars(
                select(AnnotatorRow).where(
                    AnnotatorRow.token_hash == _sha256(token),
                    AnnotatorRow.removed_at.is_(None),
                    or_(AnnotatorRow.token_expires_at.is_(None), AnnotatorRow.token_expires_at > utcnow()),
                )
            ).first()
            return _annotator(row) if row else None

    def find_annotator(self, name: str) -> Annotator | None:
        """The annotator with this name (removed ones too), or None."""
        with self._reads.begin() as s:
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
        with self._reads.begin() as s:
            return [_annotator(r) for r in s.scalars(select(AnnotatorRow).order_by(AnnotatorRow.id))]

    # ----------------------------------------------------------------- labelling

    def next_task_for(self, annotator: Annotator) -> Task | None:
        """The task this annotator should answer next, or None when nothing is left for them.

        A task they were shown and have not answered comes back, in the same order (read without
        the write lock). Otherwise, in one short write transaction: up to ``RELEASE_BATCH`` expired
        holds free their slots, then a golden task they have not seen (at ``golden_rate``), else the
        regular task with the fewest slots still open that they have not seen, first by id: tasks
        are finished before new ones start. The left/right order is drawn here and recorded.
        """
        with self._reads.begin() as s:
            pending = _pending(s, annotator.id)
            if pending is not None:
                return self._view(s, pending)
        for _ in range(3):
            try:
                with self._write() as s:
                    return self._assign(s, annotator)
            except IntegrityError:  # the same annotator's other request took this task at the same moment: ask again
                continue
        raise StoreError(f"could not assign a task to {annotator.name}: their requests keep colliding; ask again")

    def _assign(self, s: Session, annotator: Annotator) -> Task | None:
        pending = _pending(s, annotator.id)  # asked twice at once: the other request has assigned one meanwhile
        if pending is not None:
            return self._view(s, pending)
        now = utcnow()
        postgres = s.bind.dialect.name == "postgresql"
        expired = select(AssignmentRow.id, AssignmentRow.task_id).where(
            AssignmentRow.held, AssignmentRow.shown_at < now - self.assignment_timeout
        )
        expired = expired.order_by(AssignmentRow.shown_at).limit(RELEASE_BATCH)
        self._release(s, s.execute(expired.with_for_update(skip_locked=True) if postgres else expired).all())
        regular = select(TaskRow.id).where(TaskRow.needed > 0, ~_seen(annotator.id)).order_by(TaskRow.needed, TaskRow.id).limit(1)
        task_id = s.scalar(regular.with_for_update(of=TaskRow, skip_locked=True) if postgres else regular)
        if task_id is None:
            return None
        golden = self.golden_rate > 0 and self._rng.random() < self.golden_rate and self._golden_for(s, annotator.id)
        if golden:
            task_id = golden
        else:
            s.execute(update(TaskRow).where(TaskRow.id == task_id).values(needed=TaskRow.needed - 1))
        assignment = AssignmentRow(
            task_id=task_id, annotator_id=annotator.id, left_side=self._rng.choice("AB"), shown_at=now, answered=False, held=not golden
        )
        s.add(assignment)
        s.flush()
        return self._view(s, assignment)

    def _golden_for(self, s: Session, annotator_id: int) -> int | None:
        """A golden task this annotator has not seen, drawn at random: the first unseen one from a random id on (then
        from the start), read from the index (is_golden, id), so a large golden set is not loaded."""
        ids = select(TaskRow.id).where(TaskRow.is_golden).limit(1)
        low, high = s.scalar(ids.order_by(TaskRow.id)), s.scalar(ids.order_by(TaskRow.id.desc()))
        if low is None:
            return None
        pivot = self._rng.randint(low, high)
        unseen = select(TaskRow.id).where(TaskRow.is_golden, ~_seen(annotator_id)).limit(1)
        return s.scalar(unseen.where(TaskRow.id >= pivot).order_by(TaskRow.id)) or s.scalar(
            unseen.where(TaskRow.id < pivot).order_by(TaskRow.id.desc())
        )

    def _release(self, s: Session, held: Sequence[tuple[int, int]]) -> None:
        """Free the slots of these (assignment id, task id) holds: the assignments stop holding, their tasks need one more."""
        if not held:
            return
        s.execute(update(AssignmentRow).where(AssignmentRow.id.in_([a for a, _ in held])).values(held=False))
        for task_id, n in sorted(Counter(t for _, t in held).items()):
            s.execute(update(TaskRow).where(TaskRow.id == task_id, ~TaskRow.is_golden).values(needed=TaskRow.needed + n))

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

    def current_task_id(self, annotator: Annotator) -> int | None:
        """The task shown to this annotator and not yet answered (the one they are answering), or None; read only."""
        with self._reads.begin() as s:
            pending = _pending(s, annotator.id)
            return pending.task_id if pending is not None else None

    def has_answered(self, annotator: Annotator, task_id: int) -> bool:
        with self._reads.begin() as s:
            return bool(s.scalar(_answered(task_id, annotator.id).select()))

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
        if reason is not None:
            _check_text(reason, "the reason")
        now = utcnow()
        try:
            with self._write() as s:
                task = s.get(TaskRow, task_id)
                if task is None:
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
                # the task's open slots: an answer that counts takes one (unless its own hold had it already); a skip
                # frees its hold. An AI judge's answer takes no slot: the slots are for the people it is compared with.
                takes = choice != "skip" and annotator.kind != "judge"
                held = assignment is not None and assignment.held
                change = (0 if takes else 1) if held else (-1 if takes else 0)
                if assignment is not None:
                    assignment.answered, assignment.held = True, False
                if change and not task.is_golden:
                    s.execute(update(TaskRow).where(TaskRow.id == task_id).values(needed=TaskRow.needed + change))
                s.flush()
                return row.id
        except IntegrityError as e:
            with self._reads.begin() as s:  # the same annotator answered the same task at the same moment elsewhere?
                if s.scalar(_answered(task_id, annotator.id).select()):
                    raise DuplicateJudgementError(
                        f"{annotator.name} has already answered task {task_id}; an answer cannot be changed"
                    ) from None
            raise StoreError(f"cannot record the answer of {annotator.name} to task {task_id}: {e.orig}") from None

    def progress(self, annotator: Annotator) -> Progress:
        """Answers given since midnight UTC, out of that plus the tasks still available to this annotator (the open
        ones counted up to ``PROGRESS_CAP``, so that a page view stays cheap on a large store)."""
        now = utcnow()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        with self._reads.begin() as s:
            done = s.scalar(
                select(func.count())
                .select_from(JudgementRow)
                .where(JudgementRow.annotator_id == annotator.id, JudgementRow.answered_at >= midnight)
            )
            pending = s.scalar(
                select(func.count()).select_from(AssignmentRow).where(AssignmentRow.annotator_id == annotator.id, ~AssignmentRow.answered)
            )
            open_tasks = select(TaskRow.id).where(TaskRow.needed > 0, ~_seen(annotator.id)).limit(PROGRESS_CAP + 1)
            available = s.scalar(select(func.count()).select_from(open_tasks.subquery()))
            return Progress(done_today=done, total=done + pending + min(available, PROGRESS_CAP), more=available > PROGRESS_CAP)

    # ----------------------------------------------------------------- reading back

    def tasks(self) -> list[StoredTask]:
        """Every task with its prompt and both responses, in id order (one query)."""
        with self._reads.begin() as s:
            return [_stored(row) for row in s.execute(_stored_tasks().order_by(TaskRow.id))]

    def first_responses(self, task_ids: Iterable[int]) -> dict[int, str]:
        """The text of each of these tasks' response A: which way round a stored task holds its pair."""
        ids, out = list(task_ids), {}
        with self._reads.begin() as s:
            for start in range(0, len(ids), PAGE):
                rows = s.execute(
                    select(TaskRow.id, ResponseRow.text)
                    .join(ResponseRow, ResponseRow.id == TaskRow.response_a_id)
                    .where(TaskRow.id.in_(ids[start : start + PAGE]))
                )
                out.update((task_id, text) for task_id, text in rows)
        return out

    def votes(self) -> list[Vote]:
        """Every judgement, in the order recorded."""
        with self._reads.begin() as s:
            return [_vote(row) for row in s.execute(_votes().order_by(JudgementRow.id))]

    def iter_answered(self, include_golden: bool = False) -> Iterator[tuple[StoredTask, list[Vote]]]:
        """Each task that has a judgement (and each golden task, with ``include_golden``), in id order, with its
        judgements in the order recorded: read in pages of ``PAGE`` tasks (three queries a page) inside one snapshot
        that takes no lock, so an export of a large store neither loads it whole nor holds annotators up."""
        with self._snapshots.begin() as s:
            last = 0
            while True:
                ids = list(
                    s.scalars(
                        select(JudgementRow.task_id)
                        .where(JudgementRow.task_id > last)
                        .group_by(JudgementRow.task_id)
                        .order_by(JudgementRow.task_id)
                        .limit(PAGE)
                    )
                )
                if include_golden:
                    golden = s.scalars(select(TaskRow.id).where(TaskRow.is_golden, TaskRow.id > last).order_by(TaskRow.id).limit(PAGE))
                    ids = sorted(set(ids) | set(golden))[:PAGE]
                if not ids:
                    return
                last = ids[-1]
                tasks = {row.id: _stored(row) for row in s.execute(_stored_tasks().where(TaskRow.id.in_(ids)))}
                votes: dict[int, list[Vote]] = defaultdict(list)
                for row in s.execute(_votes().where(JudgementRow.task_id.in_(ids)).order_by(JudgementRow.id)):
                    votes[row.task_id].append(_vote(row))
                for task_id in ids:
                    yield tasks[task_id], votes[task_id]

    def tallies(self, seconds_cap: float = 600.0) -> Tallies:
        """The counts the agreement statistics are made of, in seven set-based queries (GROUP BY and joins) inside one
        snapshot that takes no lock: see :class:`Tallies`."""
        labels = ("A", "B", "tie")
        regular = and_(~TaskRow.is_golden, JudgementRow.choice.in_(labels))
        with self._snapshots.begin() as s:
            total = s.scalar(select(func.count()).select_from(TaskRow))  # both counts read an index, not the table
            golden = s.scalar(select(func.count()).select_from(TaskRow).where(TaskRow.is_golden))
            complete = (
                select(TaskRow.id)
                .join(JudgementRow, JudgementRow.task_id == TaskRow.id)
                .where(~TaskRow.is_golden, JudgementRow.choice.in_(labels))
                .group_by(TaskRow.id, TaskRow.required)
                .having(func.count() >= TaskRow.required)
            )
            complete = s.scalar(select(func.count()).select_from(complete.subquery()))
            choices = dict(s.execute(select(JudgementRow.choice, func.count()).group_by(JudgementRow.choice)).all())

            def total_of(condition) -> Any:
                return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

            capped = case((JudgementRow.seconds < 0, 0.0), (JudgementRow.seconds > seconds_cap, seconds_cap), else_=JudgementRow.seconds)
            decided = and_(JudgementRow.choice.in_(("A", "B")), JudgementRow.left_side.in_(("A", "B")))
            graded = and_(TaskRow.is_golden, JudgementRow.choice != "skip")
            people = s.execute(
                select(
                    AnnotatorRow.name,
                    AnnotatorRow.kind,
                    func.count(),
                    total_of(JudgementRow.choice == "skip"),
                    func.count(JudgementRow.seconds),
                    func.coalesce(func.sum(capped), 0.0),
                    total_of(decided),
                    total_of(and_(decided, JudgementRow.choice == JudgementRow.left_side)),
                    total_of(graded),
                    total_of(and_(graded, JudgementRow.choice == TaskRow.golden_answer)),
                )
                .select_from(JudgementRow)
                .join(AnnotatorRow, AnnotatorRow.id == JudgementRow.annotator_id)
                .join(TaskRow, TaskRow.id == JudgementRow.task_id)
                .group_by(AnnotatorRow.id, AnnotatorRow.name, AnnotatorRow.kind)
                .order_by(AnnotatorRow.name)
            ).all()
            units: dict[int, dict[str, int]] = defaultdict(dict)
            for task_id, choice, n in s.execute(
                select(JudgementRow.task_id, JudgementRow.choice, func.count())
                .join(TaskRow, TaskRow.id == JudgementRow.task_id)
                .where(regular)
                .group_by(JudgementRow.task_id, JudgementRow.choice)
            ):
                units[task_id][choice] = n
            other, first, second = aliased(JudgementRow), aliased(AnnotatorRow), aliased(AnnotatorRow)
            pairs: dict[tuple[str, str], dict[tuple[str, str], int]] = defaultdict(dict)
            for a, b, x, y, n in s.execute(
                select(first.name, second.name, JudgementRow.choice, other.choice, func.count())
                .select_from(JudgementRow)
                .join(other, and_(other.task_id == JudgementRow.task_id, other.annotator_id > JudgementRow.annotator_id))
                .join(TaskRow, TaskRow.id == JudgementRow.task_id)
                .join(first, first.id == JudgementRow.annotator_id)
                .join(second, second.id == other.annotator_id)
                .where(regular, other.choice.in_(labels))
                .group_by(first.name, second.name, JudgementRow.choice, other.choice)
            ):
                if a > b:
                    a, b, x, y = b, a, y, x
                pairs[a, b][x, y] = pairs[a, b].get((x, y), 0) + n
        return Tallies(
            tasks=int(total),
            golden=int(golden),
            complete=int(complete),
            choices={c: int(n) for c, n in choices.items()},
            annotators=[
                AnnotatorTally(name, kind, *(int(v) for v in (n, skips, timed)), float(active), *(int(v) for v in (dec, wins, gn, gc)))
                for name, kind, n, skips, timed, active, dec, wins, gn, gc in people
            ],
            units=list(units.values()),
            pairs={k: pairs[k] for k in sorted(pairs)},
        )

    # ----------------------------------------------------------------- one annotator's own (for the web app)

    def votes_of(self, annotator: Annotator) -> list[Vote]:
        """This annotator's own judgements, in the order recorded: all that a labelling front end may show them."""
        with self._reads.begin() as s:
            return [_vote(row) for row in s.execute(_votes().where(JudgementRow.annotator_id == annotator.id).order_by(JudgementRow.id))]


@dataclass(frozen=True)
class AnnotatorTally:
    """One annotator's counts: judgements, skips, timed judgements and their active seconds (each capped), A/B answers
    with a known screen order and how many of them went to the left, golden answers graded and correct."""

    name: str
    kind: str
    judgements: int
    skips: int
    timed: int
    active_seconds: float
    decided: int
    left_wins: int
    golden: int
    golden_correct: int


@dataclass(frozen=True)
class Tallies:
    """What :func:`tether.feedback.agreement.stats` is computed from, counted by the database.

    ``units``: for each regular task with a label, how many annotators gave each label ('A', 'B', 'tie').
    ``pairs``: for each two annotators (by name, in order) with regular tasks in common, how many of those tasks
    got each pair of labels (first annotator's, second's).
    """

    tasks: int
    golden: int
    complete: int
    choices: dict[str, int]
    annotators: list[AnnotatorTally]
    units: list[dict[str, int]]
    pairs: dict[tuple[str, str], dict[tuple[str, str], int]]


# --------------------------------------------------------------------------- query pieces


def _annotator(row: AnnotatorRow) -> Annotator:
    return Annotator(row.id, row.name, row.kind, row.is_admin)


def _named(s: Session, name: str, removed_ok: bool = False) -> AnnotatorRow:
    row = s.scalars(select(AnnotatorRow).where(AnnotatorRow.name == name)).first()
    if row is None:
        raise StoreError(f"there is no annotator named {name!r} in the store (`tether label add-annotator` registers one)")
    if row.removed_at is not None and not removed_ok:
        raise StoreError(f"annotator {name!r} was removed on {row.removed_at:%Y-%m-%d %H:%M} UTC; register a new name instead")
    return row


def _pending(s: Session, annotator_id: int) -> AssignmentRow | None:
    """The annotator's oldest unanswered assignment (the index (annotator_id, answered, shown_at))."""
    return s.scalars(
        select(AssignmentRow)
        .where(AssignmentRow.annotator_id == annotator_id, ~AssignmentRow.answered)
        .order_by(AssignmentRow.shown_at, AssignmentRow.id)
        .limit(1)
    ).first()


def _stored_tasks():
    """SQL: tasks with their prompt and both responses' texts, one row each."""
    a, b = aliased(ResponseRow), aliased(ResponseRow)
    return (
        select(
            TaskRow.id,
            PromptRow.text,
            PromptRow.messages,
            a.text.label("response_a"),
            b.text.label("response_b"),
            TaskRow.required,
            TaskRow.is_golden,
            TaskRow.golden_answer,
            TaskRow.meta,
        )
        .join(a, a.id == TaskRow.response_a_id)
        .join(b, b.id == TaskRow.response_b_id)
        .join(PromptRow, PromptRow.id == a.prompt_id)
    )


def _stored(row) -> StoredTask:
    prompt = row.messages if row.messages is not None else row.text
    return StoredTask(row.id, prompt, row.response_a, row.response_b, row.required, row.is_golden, row.golden_answer, dict(row.meta))


def _votes():
    """SQL: judgements with their annotator's name and kind."""
    return select(
        JudgementRow.task_id,
        AnnotatorRow.name,
        AnnotatorRow.kind,
        JudgementRow.choice,
        JudgementRow.left_side,
        JudgementRow.strength,
        JudgementRow.reason,
        JudgementRow.seconds,
        JudgementRow.answered_at,
        JudgementRow.guidelines_version,
    ).join(AnnotatorRow, AnnotatorRow.id == JudgementRow.annotator_id)


def _vote(row) -> Vote:
    return Vote(*row)


def _comparable(a: str, b: str) -> bool:
    return bool(a.strip()) and bool(b.strip()) and a.strip() != b.strip()


def _answered(task_id, annotator_id):
    """SQL: this annotator has answered this task."""
    return exists().where(JudgementRow.task_id == task_id, JudgementRow.annotator_id == annotator_id)


def _seen(annotator_id: int):
    """SQL: the task (TaskRow) was shown to or answered by this annotator (two unique-index lookups)."""
    return or_(
        exists().where(AssignmentRow.task_id == TaskRow.id, AssignmentRow.annotator_id == annotator_id), _answered(TaskRow.id, annotator_id)
    )
