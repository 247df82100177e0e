"""Fixtures for the preference store: a SQLite file, and a real PostgreSQL server started here.

The server is Debian's `postgresql` package (``/usr/lib/postgresql/<version>/bin``, or
``initdb``/``pg_ctl`` on the PATH; ``TETHER_PG_BIN`` names another folder). It is started
once per test session in a temporary folder, listening only on a Unix socket there (no TCP
port), with fsync off (nothing here needs to survive a power cut; a killed *client* loses
nothing either way). PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` user (or ``nobody``) through ``runuser``. Each test gets an empty database.
Where PostgreSQL is not installed the PostgreSQL half of the tests is skipped, and the reason
is printed at the end of the run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_skip_reason: list[str] = []


def _pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, newest version first."""
    if os.environ.get("TETHER_PG_BIN"):
        candidates = [Path(os.environ["TETHER_PG_BIN"])]
    else:
        candidates = sorted(
            (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")),
            key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
            reverse=True,
        )
        found = shutil.which("pg_ctl")
        if found:
            candidates.append(Path(found).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _run_as() -> tuple[list[str], str | None]:
    """The command prefix that runs the server as a non-root user, and that user (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    if shutil.which("runuser") is None:
        raise RuntimeError("running as root and `runuser` is missing, so PostgreSQL cannot be started as another user")
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


class PostgresServer:
    """A throwaway PostgreSQL server on a Unix socket in ``folder``."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.prefix, user = _run_as()
        self.folder = Path(tempfile.mkdtemp(prefix="tether-pg-"))
        if user is not None:
            shutil.chown(self.folder, user=user)
        self.data = self.folder / "data"
        self._created = False

    def _call(self, *args: str) -> None:
        result = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120, cwd=self.folder)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        self._call(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self._call(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-k {self.folder} -c listen_addresses= -F",
            "start",
        )

    def stop(self) -> None:
        try:
            self._call(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.folder}"

    def fresh_database(self) -> str:
        """An empty database (the same one each time, emptied: far quicker than CREATE DATABASE); returns its URL."""
        import psycopg

        with psycopg.connect(host=str(self.folder), user="postgres", dbname="postgres", autocommit=True) as connection:
            if not self._created:
                connection.execute("CREATE DATABASE tether_test")
                self._created = True
            # connections a previous test left open would hold locks on its tables
            connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'tether_test'")
        with psycopg.connect(host=str(self.folder), user="postgres", dbname="tether_test", autocommit=True) as connection:
            connection.execute("DROP SCHEMA public CASCADE")
            connection.execute("CREATE SCHEMA public")
        return self.url("tether_test")


@pytest.fixture(scope="session")
def postgres():
    """A running PostgreSQL server for the whole session, or a skip that says why there is none."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        where = (
            f"in TETHER_PG_BIN={os.environ['TETHER_PG_BIN']}"
            if os.environ.get("TETHER_PG_BIN")
            else "under /usr/lib/postgresql/*/bin or on the PATH"
        )
        _skip_reason.append(f"PostgreSQL is not installed (no initdb and pg_ctl {where}; `apt-get install postgresql` provides them)")
        pytest.skip(_skip_reason[-1])
    server = None
    try:
        server = PostgresServer(bin_dir)
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        if server is not None:
            shutil.rmtree(server.folder, ignore_errors=True)
        _skip_reason.append(f"PostgreSQL could not be started from {bin_dir}: {e}")
        pytest.skip(_skip_reason[-1])
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """Where a store lives: a SQLite file path, or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "prefs.db")
    return request.getfixturevalue("postgres").fresh_database()


@pytest.fixture
def store(db_url):
    from tether.feedback.store import open_store

    s = open_store(db_url, seed=0, golden_rate=0.0)
    yield s
    s.close()


def pytest_terminal_summary(terminalreporter):
    if _skip_reason:
        terminalreporter.write_line(f"tests/feedback: the PostgreSQL half of the store tests was skipped: {_skip_reason[0]}", yellow=True)


@pytest.fixture
def bulk():
    """:func:`bulk_tasks`, for the tests that vary a store's size."""
    return bulk_tasks


@pytest.fixture
def fresh_url(db_url, request, tmp_path):
    """A maker of empty stores on the backend of ``db_url``: a new SQLite file, or the PostgreSQL database emptied
    (close the previous store first)."""
    made = iter(range(1_000_000))

    def make() -> str:
        if "://" not in db_url:
            return str(tmp_path / f"store{next(made)}.db")
        return request.getfixturevalue("postgres").fresh_database()

    return make


def bulk_tasks(store, n: int, required: int = 3) -> None:
    """Fill ``store`` with ``n`` regular tasks (one prompt and two responses each) in a few bulk INSERTs: far quicker
    than ``add_pairs`` for the stores whose size a test varies."""
    from sqlalchemy import insert

    from tether.feedback.schema import PromptRow, ResponseRow, TaskRow, utcnow

    now = utcnow()
    with store.engine.begin() as c:
        base = (c.scalar(PromptRow.__table__.select().with_only_columns(PromptRow.id).order_by(PromptRow.id.desc()).limit(1)) or 0) + 1
        prompts = [
            {"id": base + i, "key": f"bulk{base + i}", "text": f"Question {base + i}?", "meta": {}, "created_at": now} for i in range(n)
        ]
        responses = [
            {
                "id": 2 * (base + i) + k,
                "prompt_id": base + i,
                "key": f"r{k}",
                "text": f"Answer {k} to {base + i}.",
                "settings": {},
                "meta": {},
                "created_at": now,
            }
            for i in range(n)
            for k in (0, 1)
        ]
        tasks = [
            {
                "response_a_id": 2 * (base + i),
                "response_b_id": 2 * (base + i) + 1,
                "required": required,
                "is_golden": False,
                "meta": {},
                "created_at": now,
                "needed": required,
            }
            for i in range(n)
        ]
        for table, rows in ((PromptRow, prompts), (ResponseRow, responses), (TaskRow, tasks)):
            for start in range(0, len(rows), 5000):
                c.execute(insert(table), rows[start : start + 5000])
