"""The preference store's API, on SQLite and on a real PostgreSQL server (see conftest.py)."""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tether.data.records import PreferencePair
from tether.feedback.schema import AnnotatorRow, AssignmentRow, JudgementRow, ResponseRow
from tether.feedback.store import Candidate, DuplicateJudgementError, Store, StoreError, database_url, open_store

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def add_tasks(store: Store, n: int, required: int = 1) -> list[int]:
    """n tasks, each comparing two answers to its own prompt."""
    return [
        store.add_candidates(f"Question {i}?", [Candidate(f"answer {i} one."), Candidate(f"answer {i} two.")], required=required)[0]
        for i in range(n)
    ]


def person(store: Store, name: str):
    return store.annotator_for_token(store.add_annotator(name))


def answer_all(store: Store, annotator, choice: str = "left") -> list[int]:
    done = []
    while (task := store.next_task_for(annotator)) is not None:
        store.record_judgement(annotator, task.id, choice)
        done.append(task.id)
    return done


def test_sqlite_file_is_in_wal_mode_with_foreign_keys(tmp_path):
    store = open_store(tmp_path / "sub" / "prefs.db")
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_urls():
    assert database_url("postgresql://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
    assert database_url("prefs.db").startswith("sqlite:////")
    with pytest.raises(StoreError, match="cannot read the database URL"):
        database_url("postgresql://h:notaport/db")


def test_unreachable_postgres_is_one_sentence(tmp_path):
    with pytest.raises(StoreError, match=r"cannot open the preference store postgresql\+psycopg://u:\*\*\*@/db"):
        open_store(f"postgresql://u:secret@/db?host={tmp_path}")


def test_prompts_responses_tasks_are_stored_once(store):
    chat = store.add_prompt(CHAT, source="colours.jsonl", meta={"id": 7})
    assert store.add_prompt([dict(m) for m in CHAT]) == chat
    a = store.add_response(chat, Candidate("Red.", "tiny-model", {"temperature": 0.7, "top_p": 0.9}))
    b = store.add_response(chat, "Blue.")
    assert store.add_response(chat, "Red.") == a
    task = store.add_task(a, b, required=2)
    assert store.add_task(b, a) == task  # the same pair in the other order is the same task
    [stored] = store.tasks()
    assert (stored.prompt, stored.response_a, stored.response_b, stored.required, stored.is_golden) == (CHAT, "Red.", "Blue.", 2, False)
    with store.engine.connect() as c:
        row = c.execute(select(ResponseRow.model, ResponseRow.settings).where(ResponseRow.id == a)).one()
    assert row.model == "tiny-model" and row.settings == {"temperature": 0.7, "top_p": 0.9}


def test_bad_content_is_refused_with_a_sentence(store):
    p = store.add_prompt("Hi?")
    a, same = store.add_response(p, "Hello."), store.add_response(p, "Hello. ")
    empty = store.add_response(p, "  ")
    other = store.add_response(store.add_prompt("Other?"), "Yes.")
    with pytest.raises(StoreError, match="two different, non-empty responses"):
        store.add_task(a, same)
    with pytest.raises(StoreError, match="two different, non-empty responses"):
        store.add_task(a, empty)
    with pytest.raises(StoreError, match="different prompts"):
        store.add_task(a, other)
    with pytest.raises(StoreError, match="not in the store"):
        store.add_task(a, 999)
    with pytest.raises(StoreError, match=r"prompt\[0\].role"):
        store.add_prompt([{"role": "robot", "content": "x"}])
    with pytest.raises(StoreError, match="at least 1"):
        store.add_candidates("Q?", [Candidate("x."), Candidate("y.")], required=0)
    assert store.add_candidates("Q2?", [Candidate("x."), Candidate("x."), Candidate("")]) == []  # nothing comparable


def test_annotator_tokens_are_kept_only_as_hashes(store):
    token = store.add_annotator("ada", admin=True)
    ada = store.annotator_for_token(token)
    assert (ada.name, ada.kind, ada.is_admin) == ("ada", "human", True)
    assert store.annotator_for_token(token + "x") is None and store.annotator_for_token("") is None
    with store.engine.connect() as c:
        [stored] = c.execute(select(AnnotatorRow.token_hash)).scalars()
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
    with pytest.raises(StoreError, match="already exists"):
        store.add_annotator("ada")
    with pytest.raises(StoreError, match="kind must be one of"):
        store.add_annotator("bob", "robot")
    judge = store.get_or_add_annotator("judge:tiny", "judge")
    assert store.get_or_add_annotator("judge:tiny", "judge") == judge and judge.kind == "judge"


def test_each_task_gets_the_required_distinct_annotators(store):
    tasks = add_tasks(store, 4, required=2)
    a, b, c = (person(store, n) for n in "abc")
    assert sorted(answer_all(store, a)) == tasks
    assert sorted(answer_all(store, b)) == tasks
    assert answer_all(store, c) == []  # every task has its two annotators
    assert store.next_task_for(a) is None  # nobody sees a task twice
    per_task = {}
    for v in store.votes():
        per_task.setdefault(v.task_id, set()).add(v.annotator)
    assert per_task == {t: {"a", "b"} for t in tasks}


def test_a_shown_task_is_held_and_shown_again_in_the_same_order(store):
    [task_id] = add_tasks(store, 1, required=1)
    a, b = person(store, "a"), person(store, "b")
    first = store.next_task_for(a)
    again = store.next_task_for(a)
    assert (again.id, again.left, again.left_side, again.shown_at) == (first.id, first.left, first.left_side, first.shown_at)
    assert store.next_task_for(b) is None  # its only slot is held by a
    # after the hold runs out the slot goes to someone else
    with store.engine.begin() as c:
        c.execute(AssignmentRow.__table__.update().values(shown_at=first.shown_at - timedelta(hours=2)))
    assert store.next_task_for(b).id == task_id


def test_skips_do_not_fill_a_task(store):
    [task_id] = add_tasks(store, 1, required=1)
    a, b = person(store, "a"), person(store, "b")
    store.record_judgement(a, store.next_task_for(a).id, "skip")
    assert store.next_task_for(a) is None
    assert store.next_task_for(b).id == task_id


def test_an_ai_judges_answer_takes_no_annotator_slot(store):
    (task,) = add_tasks(store, 1, required=1)
    judge = store.get_or_add_annotator("judge:tiny", "judge")
    store.record_judgement(judge, task, "A")  # judges record directly, without being shown the task
    ada = person(store, "ada")
    assert answer_all(store, ada) == [task]  # the one slot is still a person's
    assert store.next_task_for(person(store, "bob")) is None  # and now it is filled


def test_left_and_right_are_recorded_as_responses_a_and_b(store):
    add_tasks(store, 20, required=1)
    a = person(store, "a")
    seen = []
    while (task := store.next_task_for(a)) is not None:
        left_text = task.left
        store.record_judgement(a, task.id, "left")
        seen.append((task.id, task.left_side, left_text))
    assert {side for _, side, _ in seen} == {"A", "B"}  # both orders are drawn
    by_task = {t.id: t for t in store.tasks()}
    for v in store.votes():
        task_id, side, left_text = next(s for s in seen if s[0] == v.task_id)
        assert v.choice == side and v.left_side == side
        assert left_text == (by_task[task_id].response_a if side == "A" else by_task[task_id].response_b)


def test_a_second_answer_is_refused_and_a_repeat_is_harmless(store):
    add_tasks(store, 1)
    a = person(store, "a")
    task = store.next_task_for(a)
    first = store.record_judgement(a, task.id, "A", reason="clearer")
    assert store.record_judgement(a, task.id, "A", reason="clearer") == first
    with pytest.raises(DuplicateJudgementError, match="already answered task"):
        store.record_judgement(a, task.id, "B")
    assert [v.choice for v in store.votes()] == ["A"]


def test_record_judgement_checks_its_input(store):
    [task_id] = add_tasks(store, 1)
    a = person(store, "a")
    with pytest.raises(StoreError, match="was not shown to a"):
        store.record_judgement(a, task_id, "A")  # a person answers only what they were shown
    store.next_task_for(a)
    with pytest.raises(StoreError, match="choice must be one of"):
        store.record_judgement(a, task_id, "C")
    with pytest.raises(StoreError, match="no task 99"):
        store.record_judgement(a, 99, "A")
    judge = store.get_or_add_annotator("judge:m", "judge")
    with pytest.raises(StoreError, match="needs the left/right order"):
        store.record_judgement(judge, task_id, "left")
    store.record_judgement(judge, task_id, "B", strength=0.8)  # a judge may answer directly
    [v] = store.votes()
    assert (v.annotator, v.choice, v.strength, v.left_side, v.seconds) == ("judge:m", "B", 0.8, None, None)


def test_judgement_records_timing_and_guidelines(store):
    add_tasks(store, 2)
    a = person(store, "a")
    store.record_judgement(a, store.next_task_for(a).id, "tie")
    store.add_guidelines("Prefer the shorter answer.")
    v2 = store.add_guidelines("Prefer the correct answer.")
    assert store.guidelines().version == v2 == 2 and store.guidelines().text == "Prefer the correct answer."
    task = store.next_task_for(a)
    assert task.guidelines_version == 2
    store.record_judgement(a, task.id, "right", reason="more accurate")
    first, second = store.votes()
    assert (first.guidelines_version, second.guidelines_version) == (None, 2)
    assert second.reason == "more accurate" and second.seconds >= 0
    with store.engine.connect() as c:
        row = c.execute(select(JudgementRow.shown_at, JudgementRow.answered_at).where(JudgementRow.id == 2)).one()
    assert row.shown_at <= row.answered_at


def test_golden_tasks_are_mixed_in_once_per_annotator(db_url):
    store = open_store(db_url, seed=3, golden_rate=0.5)
    add_tasks(store, 10, required=1)
    golden = store.add_pairs([PreferencePair(f"G{i}?", f"good {i}.", f"bad {i}") for i in range(3)], golden=True)
    a = person(store, "a")
    order = answer_all(store, a)
    assert set(golden) <= set(order) and len(order) == len(set(order)) == 13
    assert order[-1] not in golden  # golden tasks come only while there is real work
    assert [t.golden_answer for t in store.tasks() if t.is_golden] == ["A", "A", "A"]
    b = person(store, "b")
    assert store.next_task_for(b) is None  # regular work is done: no goldens on their own
    store.close()


def test_progress_counts_today_out_of_available(store):
    add_tasks(store, 3, required=1)
    a, b = person(store, "a"), person(store, "b")
    assert (store.progress(a).done_today, store.progress(a).total) == (0, 3)
    task = store.next_task_for(a)
    assert store.progress(a).total == 3 and store.progress(b).total == 2  # one is held for a
    store.record_judgement(a, task.id, "A")
    assert (store.progress(a).done_today, store.progress(a).total) == (1, 3)
    with store.engine.begin() as c:  # a judgement from yesterday does not count today
        c.execute(JudgementRow.__table__.update().values(answered_at=task.shown_at - timedelta(days=1)))
    assert store.progress(a).done_today == 0


def test_foreign_keys_are_enforced(store):
    with pytest.raises(IntegrityError):
        with store.engine.begin() as c:
            c.execute(JudgementRow.__table__.insert().values(task_id=42, annotator_id=42, choice="A", answered_at=datetime(2020, 1, 1)))


def test_concurrent_annotators_never_overfill_a_task(store):
    tasks = add_tasks(store, 15, required=2)
    people = [person(store, f"p{i}") for i in range(4)]
    errors = []

    def label(annotator):
        try:
            answer_all(store, annotator)
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=label, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    per_task = {}
    for v in store.votes():
        per_task.setdefault(v.task_id, []).append(v.annotator)
    assert sorted(per_task) == tasks and all(len(set(who)) == len(who) == 2 for who in per_task.values())


def test_open_store_without_create_refuses_a_missing_file(tmp_path):
    with pytest.raises(StoreError, match=f"no preference store at {tmp_path / 'sub' / 'prefs.db'}"):
        open_store(tmp_path / "sub" / "prefs.db", create=False)
    assert not (tmp_path / "sub").exists()
    open_store(tmp_path / "sub" / "prefs.db").close()
    open_store(tmp_path / "sub" / "prefs.db", create=False).close()
