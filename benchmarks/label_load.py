"""Benchmark: the labelling app under the load of a real team, on SQLite and on PostgreSQL.

For each backend and store size: build a store of N tasks (one prompt, two responses each; bulk
INSERTs on SQLite, COPY on PostgreSQL, which runs as a throwaway server from Debian's
``postgresql`` package on a Unix socket in a temporary folder), register the annotators, start
``tether label serve`` on a free loopback port, and run for ``--seconds``:

* ``--annotators`` (30) simulated people, one thread each with a keep-alive connection: GET /
  (the next pair), then POST /judge (left, right, tie or skip at random), as fast as the server
  answers, or (``--think S``) after reading the pair for S seconds on average, as people do;
* at the same time an admin reading ``GET /api/stats`` in a loop, and ``tether label stats --json``
  and ``tether label export`` run one after another, as processes of their own, for the whole run;
* halfway, the server is killed with SIGKILL and started again (the annotators retry their request
  once it is back: the connection errors are counted apart from 5xx).

Printed (and written to runs/bench/label_load.json): build time, answers/s, p50/p99 latency of
each route, the CLI stats and export runs (how many, median seconds), the server's CPU time per
request (which machine load does not inflate, unlike latency), 5xx responses, other failed
requests, and, read from the store after the run, acknowledged answers missing from it (lost),
answers stored twice for one annotator and task (duplicated), and tasks holding more answers than
they asked for (over-filled). Answers/s counts the time the server was up (the restart, mostly
Python importing tether, is left out).

    python benchmarks/label_load.py                                    # 10,000 and 1,000,000 tasks, both backends, 60 s each
    python benchmarks/label_load.py --tasks 10000 --seconds 20         # the quick check
    python benchmarks/label_load.py --backend sqlite --tasks 1000000   # one backend
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psycopg
from sqlalchemy import insert, text

from tether.feedback.schema import PromptRow, ResponseRow, TaskRow, utcnow
from tether.feedback.store import open_store

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench"
SRC = ROOT / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH", "")]))}


# --------------------------------------------------------------------------- a throwaway PostgreSQL server


class Postgres:
    """Debian's PostgreSQL, started in a temporary folder on a Unix socket (no TCP port); as root it runs as `postgres`."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True)
        if shutil.which("pg_ctl"):
            found.append(str(Path(shutil.which("pg_ctl")).resolve().parent))
        found = [d for d in found if (Path(d) / "initdb").exists()]
        if not found:
            raise SystemExit("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin); `apt-get install postgresql`")
        self.bin = Path(found[0])
        self.prefix = []
        self.folder = Path(tempfile.mkdtemp(prefix="tether-bench-pg-"))
        if os.geteuid() == 0:
            user = "postgres" if _user_exists("postgres") else "nobody"
            self.prefix = ["runuser", "-u", user, "--"]
            shutil.chown(self.folder, user=user)

    def _call(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, cwd=self.folder, timeout=120)

    def start(self) -> None:
        data = self.folder / "data"
        self._call(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-k {self.folder} -c listen_addresses= -c max_connections=200 -c shared_buffers=256MB"
        self._call(
            str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "server.log"), "-w", "-t", "60", "-o", options, "start"
        )

    def database(self, name: str) -> str:
        with psycopg.connect(host=str(self.folder), user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name}")
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@/{name}?host={self.folder}"

    def stop(self) -> None:
        try:
            self._call(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# --------------------------------------------------------------------------- building a store


def build(url: str, tasks: int, annotators: int, required: int) -> tuple[list[str], str, float]:
    """A store of ``tasks`` tasks at ``url``; returns the annotators' tokens, the admin's token and the seconds it took."""
    start = time.perf_counter()
    store = open_store(url, golden_rate=0.0)
    now = utcnow()
    batch = 20_000
    if store.engine.dialect.name == "postgresql":
        raw = store.engine.raw_connection()
        try:
            cursor = raw.cursor()
            for table, columns, rows in (
                ("prompts", "id, key, text, meta, created_at", lambda i: (i, f"p{i}", f"Question {i}: which answer is better?", "{}", now)),
                ("responses", "id, prompt_id, key, text, settings, meta, created_at", None),
                (
                    "tasks",
                    "id, response_a_id, response_b_id, required, is_golden, meta, created_at, needed",
                    lambda i: (i, 2 * i, 2 * i + 1, required, False, "{}", now, required),
                ),
            ):
                with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for i in range(1, tasks + 1):
                        if rows is None:
                            for k in (0, 1):
                                copy.write_row(
                                    (2 * i + k, i, f"r{k}", f"Answer {k} to question {i}, of a sensible length.", "{}", "{}", now)
                                )
                        else:
                            copy.write_row(rows(i))
            for table in ("prompts", "responses", "tasks"):
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            raw.commit()
            cursor.execute("ANALYZE")
            raw.commit()
        finally:
            raw.close()
    else:
        with store.engine.begin() as c:
            for start_id in range(1, tasks + 1, batch):
                ids = range(start_id, min(start_id + batch, tasks + 1))
                c.execute(
                    insert(PromptRow),
                    [
                        {"id": i, "key": f"p{i}", "text": f"Question {i}: which answer is better?", "meta": {}, "created_at": now}
                        for i in ids
                    ],
                )
                c.execute(
                    insert(ResponseRow),
                    [
                        {
                            "id": 2 * i + k,
                            "prompt_id": i,
                            "key": f"r{k}",
                            "text": f"Answer {k} to question {i}, of a sensible length.",
                            "settings": {},
                            "meta": {},
                            "created_at": now,
                        }
                        for i in ids
                        for k in (0, 1)
                    ],
                )
                c.execute(
                    insert(TaskRow),
                    [
                        {
                            "id": i,
                            "response_a_id": 2 * i,
                            "response_b_id": 2 * i + 1,
                            "required": required,
                            "is_golden": False,
                            "meta": {},
                            "created_at": now,
                            "needed": required,
                        }
                        for i in ids
                    ],
                )
        with store.engine.connect() as c:
            c.execute(text("ANALYZE"))
    tokens = [store.add_annotator(f"annotator{i:02d}") for i in range(annotators)]
    admin = store.add_annotator("admin", admin=True)
    store.close()
    return tokens, admin, time.perf_counter() - start


# --------------------------------------------------------------------------- the server and the load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(url: str, port: int, log: Path) -> subprocess.Popen:
    """`tether label serve` on loopback, once it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tether", "label", "serve", "--db", url, "--host", "127.0.0.1", "--port", str(port), "--golden-rate", "0"],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/login")
            if c.getresponse().status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"`tether label serve` did not start; see {log}")
        time.sleep(0.2)
    raise SystemExit(f"`tether label serve` did not answer within 120 s; see {log}")


class Load:
    """Latencies per route, status counts and acknowledged answers, shared by the threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.server: dict[str, list[float]] = defaultdict(list)  # the app's own time per request (its Server-Timing header)
        self.status: dict[int, int] = defaultdict(int)
        self.failed = 0  # connection errors (the server being killed and restarted) and timeouts
        self.acked: list[tuple[str, int]] = []
        self.cli: dict[str, list[float]] = defaultdict(list)
        self.cli_failed: list[str] = []

    def record(self, route: str, seconds: float, status: int, server: float | None = None) -> None:
        with self.lock:
            self.latency[route].append(seconds)
            self.status[status] += 1
            if server is not None:
                self.server[route].append(server)


def request(conn_box: list, port: int, method: str, path: str, load: Load, route: str, headers: dict, body: str | None = None):
    """One request on the thread's keep-alive connection (reopened after an error); None when it failed to connect."""
    start = time.perf_counter()
    try:
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn_box[0].request(method, path, body=body, headers=headers)
        response = conn_box[0].getresponse()
        data = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        if conn_box[0] is not None:
            conn_box[0].close()
        conn_box[0] = None
        with load.lock:
            load.failed += 1
        time.sleep(0.2)
        return None
    timing = re.search(r"app;dur=([0-9.]+)", response.getheader("server-timing") or "")
    load.record(route, time.perf_counter() - start, response.status, float(timing[1]) / 1000 if timing else None)
    return response.status, data


def annotator(token: str, name: str, port_box: list, load: Load, stop: threading.Event, seed: int, think: float = 0.0) -> None:
    rng = random.Random(seed)
    conn: list = [None]
    auth = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        got = request(conn, port_box[0], "GET", "/", load, "GET /", auth)
        if got is None or got[0] != 200:
            continue
        task = re.search(r'name="task_id" value="(\d+)"', got[1])
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', got[1])
        if task is None or csrf is None:  # nothing left for this annotator
            time.sleep(0.5)
            continue
        if think > 0:  # a person reads the two answers before choosing: uniform in [think/2, 3 think/2] seconds
            stop.wait(rng.uniform(0.5 * think, 1.5 * think))
        choice = rng.choice(["left", "right", "left", "right", "tie", "skip"])
        body = f"task_id={task[1]}&choice={choice}&reason=&csrf={csrf[1]}"
        headers = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
        posted = request(conn, port_box[0], "POST", "/judge", load, "POST /judge", headers, body)
        if posted is not None and posted[0] == 303:
            with load.lock:
                load.acked.append((name, int(task[1])))


def admin_reader(token: str, port_box: list, load: Load, stop: threading.Event) -> None:
    conn: list = [None]
    while not stop.is_set():
        request(conn, port_box[0], "GET", "/api/stats", load, "GET /api/stats", {"Authorization": f"Bearer {token}"})


def cli_reader(url: str, folder: Path, load: Load, stop: threading.Event) -> None:
    """`tether label stats --json` and `tether label export`, one after the other, until the run ends."""
    commands = {
        "tether label stats": ["label", "stats", "--db", url, "--json"],
        "tether label export": ["label", "export", "--db", url, "--out", str(folder / "export.jsonl"), "--aggregate", "per_annotator"],
    }
    while not stop.is_set():
        for name, args in commands.items():
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True, env=ENV)
            if done.returncode != 0:
                load.cli_failed.append(f"{name}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
            else:
                load.cli[name].append(time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(backend: str, url: str, tasks: int, args, folder: Path) -> dict:
    print(f"[{backend}, {tasks:,} tasks] building the store ...", flush=True)
    tokens, admin, built = build(url, tasks, args.annotators, args.required)
    print(f"[{backend}, {tasks:,} tasks] built in {built:.1f} s; serving and loading for {args.seconds} s ...", flush=True)
    log = folder / f"serve-{backend}-{tasks}.log"
    port_box = [free_port()]
    server = serve(url, port_box[0], log)
    load, stop = Load(), threading.Event()
    threads = [
        threading.Thread(target=annotator, args=(t, f"annotator{i:02d}", port_box, load, stop, i, args.think), daemon=True)
        for i, t in enumerate(tokens)
    ]
    threads.append(threading.Thread(target=admin_reader, args=(admin, port_box, load, stop), daemon=True))
    threads.append(threading.Thread(target=cli_reader, args=(url, folder, load, stop), daemon=True))
    start = time.perf_counter()
    for t in threads:
        t.start()
    killed_at = restarted_in = None
    time.sleep(args.seconds / 2)
    server_cpu = 0.0
    if not args.no_kill:
        server_cpu += cpu_seconds(server.pid)
        server.send_signal(signal.SIGKILL)  # mid-run: requests in flight die with it
        server.wait()
        killed_at = time.perf_counter() - start
        server = serve(url, port_box[0], log)
        restarted_in = time.perf_counter() - start - killed_at
    time.sleep(max(0.0, args.seconds - (time.perf_counter() - start)))
    stop.set()
    elapsed = time.perf_counter() - start
    server_cpu += cpu_seconds(server.pid)
    for t in threads:
        t.join(120)
    server.terminate()
    server.wait(30)

    store = open_store(url)
    with store.engine.connect() as c:
        stored = c.execute(
            text(
                "SELECT a.name, j.task_id, count(*) FROM judgements j JOIN annotators a ON a.id = j.annotator_id GROUP BY a.name, j.task_id"
            )
        ).all()
        overfilled = c.execute(
            text(
                "SELECT count(*) FROM (SELECT t.id FROM tasks t JOIN judgements j ON j.task_id = t.id WHERE j.choice <> 'skip' "
                "GROUP BY t.id, t.required HAVING count(*) > t.required) x"
            )
        ).scalar()
        integrity = c.exec_driver_sql("PRAGMA integrity_check").scalar() if backend == "sqlite" else "n/a"
    store.close()
    in_store = {(name, task) for name, task, _ in stored}
    answers = len(load.acked)
    result = {
        "backend": backend,
        "tasks": tasks,
        "annotators": args.annotators,
        "think_s": args.think,
        "seconds": round(elapsed, 1),
        "build_s": round(built, 1),
        "answers": answers,
        "answers_per_s": round(answers / (elapsed - (restarted_in or 0.0)), 1),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, sum(load.status.values())), 1),
        "load_average_1min": os.getloadavg()[0],
        "routes": {
            route: {"n": len(v), "p50_ms": round(1000 * percentile(v, 0.5), 1), "p99_ms": round(1000 * percentile(v, 0.99), 1)}
            for route, v in sorted(load.latency.items())
        },
        "server_routes": {  # the same requests timed inside the app: latency less this is waiting for a core or the client
            route: {"p50_ms": round(1000 * percentile(v, 0.5), 1), "p99_ms": round(1000 * percentile(v, 0.99), 1)}
            for route, v in sorted(load.server.items())
        },
        "cli": {name: {"runs": len(v), "median_s": round(statistics.median(v), 2)} for name, v in load.cli.items()},
        "cli_failed": load.cli_failed[:5],
        "status": dict(sorted(load.status.items())),
        "5xx": sum(n for s, n in load.status.items() if s >= 500),
        "failed_requests": load.failed,
        "killed_at_s": None if killed_at is None else round(killed_at, 1),
        "restart_s": None if restarted_in is None else round(restarted_in, 1),
        "lost": len({a for a in load.acked} - in_store),
        "duplicated": sum(1 for *_, n in stored if n > 1),
        "over_filled_tasks": overfilled,
        "sqlite_integrity": integrity,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def table(results: list[dict]) -> str:
    """The results as a Markdown table (what benchmarks/README.md shows)."""
    head = (
        "| backend | tasks | think | build | answers/s | GET / p50 / p99 | POST /judge p50 / p99 | GET /api/stats p50 / p99 "
        "| in the app: GET / and POST /judge p99 | CLI stats, export runs (median s) | server CPU / request | 5xx | lost | duplicated | over-filled |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        route = {k: f"{v['p50_ms']:.0f} / {v['p99_ms']:.0f} ms" for k, v in r["routes"].items()}
        cli = ", ".join(f"{v['runs']} ({v['median_s']:.1f})" for v in r["cli"].values()) or "-"
        inside = (
            " / ".join(f"{r.get('server_routes', {}).get(k, {}).get('p99_ms', float('nan')):.0f}" for k in ("GET /", "POST /judge")) + " ms"
        )
        lines.append(
            f"| {r['backend']} | {r['tasks']:,} | {r.get('think_s', 0):g} s | {r['build_s']:.0f} s | {r['answers_per_s']} | {route.get('GET /', '-')} "
            f"| {route.get('POST /judge', '-')} | {route.get('GET /api/stats', '-')} | {inside} | {cli} | {r['server_cpu_ms_per_request']} ms "
            f"| {r['5xx']} | {r['lost']} "
            f"| {r['duplicated']} | {r['over_filled_tasks']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000, 1_000_000], help="store sizes")
    parser.add_argument("--seconds", type=float, default=60.0, help="load time per store")
    parser.add_argument("--annotators", type=int, default=30)
    parser.add_argument("--required", type=int, default=3, help="annotators per task")
    parser.add_argument("--no-kill", action="store_true", help="do not kill the server halfway")
    parser.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="mean seconds an annotator reads a pair before answering (0: as fast as the server answers)",
    )
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="tether-label-load-"))
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    postgres = None
    try:
        for backend in backends:
            if backend == "postgresql" and postgres is None:
                postgres = Postgres()
                postgres.start()
            for n in args.tasks:
                url = str(folder / f"prefs-{n}.db") if backend == "sqlite" else postgres.database(f"label_load_{n}")
                results.append(run(backend, url, n, args, folder))
    finally:
        if postgres is not None:
            postgres.stop()
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "label_load.json").write_text(json.dumps(results, indent=2) + "\n")
        if results:
            print(table(results))
        shutil.rmtree(folder, ignore_errors=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
