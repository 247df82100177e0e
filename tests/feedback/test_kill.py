"""Nothing acknowledged is lost: a process recording judgements is killed (SIGKILL) mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tether.feedback.store import Candidate, open_store

LABELLER = """
import sys
from tether.feedback.store import open_store

store = open_store(sys.argv[1], seed=0, golden_rate=0.0)
annotator = store.annotator_for_token(sys.argv[2])
choices = ["A", "B", "tie", "skip"]
n = 0
while (task := store.next_task_for(annotator)) is not None:
    choice = choices[n % 4]
    store.record_judgement(annotator, task.id, choice, reason=f"answer {n}")
    print(f"ack {task.id} {choice}", flush=True)  # only once the judgement is committed
    n += 1
print("done", flush=True)
"""


def test_every_acknowledged_judgement_survives_a_kill(db_url):
    store = open_store(db_url, seed=0, golden_rate=0.0)
    for i in range(300):
        store.add_candidates(f"Question {i}?", [Candidate(f"yes {i}."), Candidate(f"no {i}.")])
    token = store.add_annotator("ada")
    store.close()

    labeller = subprocess.Popen(
        [sys.executable, "-c", LABELLER, db_url, token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    acked = []
    for line in labeller.stdout:
        assert line.startswith("ack "), line + labeller.stderr.read()
        acked.append(line.split()[1:])
        if len(acked) == 25:
            labeller.send_signal(signal.SIGKILL)  # mid-way: it is busy with the next judgement
            break
    rest = labeller.stdout.read().splitlines()  # printed before it died
    labeller.wait(timeout=30)
    assert labeller.returncode == -signal.SIGKILL and all(line.startswith("ack ") for line in rest)
    acked += [line.split()[1:] for line in rest]

    store = open_store(db_url)
    recorded = {(str(v.task_id), v.choice) for v in store.votes() if v.annotator == "ada"}
    assert {tuple(a) for a in acked} <= recorded
    assert len(acked) <= len(recorded) <= len(acked) + 1  # at most one committed but not yet acknowledged
    assert len(recorded) < 300  # it really was killed mid-way
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    # and labelling carries on where it stopped
    ada = store.find_annotator("ada")
    store.record_judgement(ada, store.next_task_for(ada).id, "A")
    store.close()
