"""The store at the size of a real team, on small stores: what an assignment, the statistics and the export cost is
measured in SQL statements and rows read (never in time), and reads run while annotators answer without locking them out.

Rows read: on SQLite, the virtual-machine steps of the statements issued (the progress handler counts them: every row a
statement visits costs steps); on PostgreSQL, the rows each plan node produced or filtered out, from EXPLAIN ANALYZE of
the same statements replayed with their parameters. Both grow with a full scan and stay flat for an index lookup.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

from fastapi.testclient import TestClient
from sqlalchemy import event

from tether.feedback.agreement import stats
from tether.feedback.export import export_preferences
from tether.feedback.store import PAGE, PROGRESS_CAP, Progress, open_store
from tether.feedback.webapp import create_app


class Meter:
    """Counts the statements a store issues, and the rows they read (see the module docstring), while switched on."""

    def __init__(self, engine):
        self.engine, self.on, self.statements, self.selects, self.steps = engine, False, 0, [], 0
        event.listen(engine, "before_cursor_execute", self._before)

    def _step(self) -> int:
        if self.on:
            self.steps += 1
        return 0

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if not self.on:
            return
        self.statements += 1
        if self.engine.dialect.name == "sqlite":
            conn.connection.driver_connection.set_progress_handler(self._step, 1)
        elif statement.lstrip().upper().startswith("SELECT"):
            self.selects.append((statement, parameters))

    @contextmanager
    def __call__(self):
        self.on, self.statements, self.selects, self.steps = True, 0, [], 0
        try:
            yield self
        finally:
            self.on = False

    def rows(self) -> int:
        """Rows read: VM steps on SQLite; rows produced or filtered out by the plans on PostgreSQL."""
        if self.engine.dialect.name == "sqlite":
            return self.steps
        total = 0
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement, parameters in self.selects:
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
                total += _plan_rows(cursor.fetchone()[0][0]["Plan"])
            raw.rollback()
        finally:
            raw.close()
        return total


def _plan_rows(node: dict) -> int:
    loops = node.get("Actual Loops", 1)
    own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)) * loops
    return int(own) + sum(_plan_rows(child) for child in node.get("Plans", []))


def _labelled_store(url: str, n: int, bulk_tasks):
    """A store of ``n`` tasks (3 annotators each) where five annotators have already answered a few each."""
    store = open_store(url, seed=0, golden_rate=0.0)
    bulk_tasks(store, n)
    people = [store.annotator_for_token(store.add_annotator(f"ann{i}")) for i in range(5)]
    for _ in range(4):
        for i, who in enumerate(people):
            store.record_judgement(who, store.next_task_for(who).id, "AB"[i % 2])
    return store, people


def _cost(url: str, n: int, bulk_tasks) -> dict[str, int]:
    store, people = _labelled_store(url, n, bulk_tasks)
    meter = Meter(store.engine)
    who = people[0]
    with meter() as assign:
        task = store.next_task_for(who)  # a fresh assignment: the write path
    cost = {"assign statements": assign.statements, "assign rows": assign.rows()}
    with meter() as again:
        assert store.next_task_for(who).id == task.id  # the pending task again: the read path
    cost |= {"again statements": again.statements, "again rows": again.rows()}
    with meter() as answer:
        store.record_judgement(who, task.id, "A")
    cost |= {"answer statements": answer.statements, "answer rows": answer.rows()}
    with meter() as progress:
        store.progress(who)
    cost |= {"progress statements": progress.statements}
    store.close()
    return cost


def test_an_assignment_reads_a_bounded_number_of_rows_as_the_store_grows(fresh_url, bulk):
    small, large = (_cost(fresh_url(), n, bulk) for n in (200, 4000))
    for what in small:
        if what.endswith("statements"):
            assert large[what] == small[what] <= 16, (what, small, large)
        else:  # the same work on a store twenty times larger: a full scan would read twenty times the rows
            assert large[what] <= 1.2 * small[what] + 200, (what, small, large)


def test_statistics_and_export_are_a_few_queries_however_many_tasks(fresh_url, bulk, tmp_path):
    counts = {}
    for n in (40, 1200):
        store, _ = _labelled_store(fresh_url(), n, bulk)
        meter = Meter(store.engine)
        with meter() as m:
            stats(store)
        statistics = m.statements
        with meter() as m:
            export_preferences(store, tmp_path / f"out{n}.jsonl", include_golden=True)
        counts[n] = (statistics, m.statements)
        store.close()
    assert counts[40] == counts[1200] and counts[40][0] <= 12, counts  # the 20 answered tasks fit one page either way
    assert PAGE >= 20


# --------------------------------------------------------------------------- reads while annotators answer


def test_stats_and_export_run_while_annotators_answer(db_url, bulk, tmp_path):
    """Six annotators answer through the web app, each in a thread of its own, while an admin reads the statistics and
    the store is exported over and over: no 5xx, no lock error, every answer recorded once."""
    store = open_store(db_url, seed=0, golden_rate=0.0)
    bulk(store, 300, required=2)
    tokens = [store.add_annotator(f"ann{i}") for i in range(6)]
    admin = store.add_annotator("boss", admin=True)
    app = create_app(store, allowed_hosts=["testserver"])
    problems: list[str] = []
    answered: list[int] = []
    done = threading.Event()

    def annotator(token: str) -> None:
        with TestClient(app, follow_redirects=False, raise_server_exceptions=False) as c:
            c.headers["Authorization"] = f"Bearer {token}"
            for _ in range(15):
                page = c.get("/")
                if page.status_code != 200:
                    problems.append(f"GET / {page.status_code}: {page.text[:200]}")
                    return
                task = int(page.text.split('name="task_id" value="')[1].split('"')[0])
                csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
                r = c.post("/judge", data={"task_id": task, "choice": "left", "csrf": csrf})
                if r.status_code != 303:
                    problems.append(f"POST /judge {r.status_code}: {r.text[:200]}")
                    return
                answered.append(task)

    def reader() -> None:
        with TestClient(app, raise_server_exceptions=False) as c:
            n = 0
            while not done.is_set() or n < 3:
                r = c.get("/api/stats", headers={"Authorization": f"Bearer {admin}"})
                if r.status_code != 200:
                    problems.append(f"GET /api/stats {r.status_code}: {r.text[:200]}")
                try:
                    export_preferences(store, tmp_path / "out.jsonl", aggregate="per_annotator")
                except Exception as e:  # noqa: BLE001 - the test reports whatever went wrong
                    problems.append(f"export: {type(e).__name__}: {e}")
                n += 1

    threads = [threading.Thread(target=annotator, args=(t,)) for t in tokens]
    reading = threading.Thread(target=reader)
    reading.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    reading.join(120)
    assert problems == []
    assert len(answered) == 90
    votes = store.votes()
    assert len(votes) == 90 and len({(v.task_id, v.annotator) for v in votes}) == 90
    assert stats(store)["judgements"]["total"] == 90
    export_preferences(store, tmp_path / "final.jsonl", aggregate="per_annotator")
    assert sum(1 for _ in (tmp_path / "final.jsonl").open()) == 90
    assert all(json.loads(line)["meta"]["annotator"].startswith("ann") for line in (tmp_path / "final.jsonl").open())
    store.close()


def test_progress_counts_at_most_the_cap_of_open_tasks(db_url, bulk):
    store = open_store(db_url, seed=0, golden_rate=0.0)
    bulk(store, PROGRESS_CAP + 20, required=1)
    token = store.add_annotator("ada")
    ada = store.annotator_for_token(token)
    assert store.progress(ada) == Progress(done_today=0, total=PROGRESS_CAP, more=True)
    page = TestClient(create_app(store, allowed_hosts=["testserver"]), headers={"Authorization": f"Bearer {token}"}).get("/")
    assert f'id="progress">0 of {PROGRESS_CAP + 1}+ today<' in page.text  # the task shown, and the 500 counted
    store.record_judgement(ada, store.next_task_for(ada).id, "A")
    assert store.progress(ada) == Progress(done_today=1, total=1 + PROGRESS_CAP, more=True)
    store.close()
