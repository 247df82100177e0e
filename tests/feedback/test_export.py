"""Exported pairs: majority or per annotator, ties dropped or kept, read by the reward stage unchanged."""

from __future__ import annotations

import pytest

from tether.data.readers import read_preferences
from tether.data.records import PreferencePair
from tether.feedback.export import export_preferences, majority
from tether.feedback.store import Candidate, StoreError
from tether.stages.reward import is_tie


def test_majority():
    assert majority(["A", "A", "B"]) == "A"
    assert majority(["B", "B", "A", "tie"]) == "B"
    assert majority(["A", "A", "tie"]) == "A"
    assert majority(["A", "tie"]) == "tie"  # no majority
    assert majority(["A", "B", "tie"]) == "tie"
    assert majority(["A", "B"]) == "tie"
    assert majority(["tie", "tie", "A"]) == "tie"
    assert majority(["skip", "B"]) == "B"
    assert majority(["skip"]) is None and majority([]) is None


@pytest.fixture
def voted(store):
    """Five tasks answered by three judges, plus a golden task; returns the task ids and the store."""
    votes = {  # task: answers of judges 1, 2, 3
        "A wins": ["A", "A", "B"],
        "B wins": ["B", "B", "tie"],
        "no majority": ["A", "B", "tie"],
        "all skipped": ["skip", "skip", "skip"],
        "B by two": ["skip", "B", "B"],
    }
    ids = {}
    for name, answers in votes.items():
        ids[name] = store.add_candidates(f"{name}?", [Candidate(f"first for {name}."), Candidate(f"second for {name}.")], required=3)[0]
        for j, choice in enumerate(answers):
            store.record_judgement(store.get_or_add_annotator(f"judge-{j}", "judge"), ids[name], choice, reason=f"r{j}")
    ids["golden"] = store.add_pairs([PreferencePair("Golden?", "right.", "wrong")], golden=True)[0]
    store.record_judgement(store.get_or_add_annotator("judge-0", "judge"), ids["golden"], "B")
    return ids, store


def test_majority_export_is_read_by_the_reward_stage(voted, tmp_path):
    ids, store = voted
    summary = export_preferences(store, tmp_path / "prefs.jsonl")
    assert (summary["pairs"], summary["ties"], summary["ties_dropped"]) == (3, 0, 1)
    pairs = read_preferences(tmp_path / "prefs.jsonl")
    got = {p.meta["task_id"]: (p.chosen, p.rejected) for p in pairs}
    assert got == {
        ids["A wins"]: ("first for A wins.", "second for A wins."),
        ids["B wins"]: ("second for B wins.", "first for B wins."),
        ids["B by two"]: ("second for B by two.", "first for B by two."),
    }
    b_wins = next(p for p in pairs if p.meta["task_id"] == ids["B wins"])
    assert b_wins.prompt == "B wins?" and b_wins.meta["votes"] == {"A": 0, "B": 2, "tie": 1}
    assert b_wins.meta["agreement"] == pytest.approx(2 / 3) and b_wins.meta["annotators"] == 3
    assert not any(is_tie(p) for p in pairs)


def test_ties_kept_are_marked_for_the_reward_stage(voted, tmp_path):
    ids, store = voted
    summary = export_preferences(store, tmp_path / "prefs.jsonl", ties="keep")
    assert (summary["pairs"], summary["ties"]) == (4, 1)
    [tie] = [p for p in read_preferences(tmp_path / "prefs.jsonl") if is_tie(p)]
    assert tie.meta["task_id"] == ids["no majority"] and tie.meta["votes"] == {"A": 1, "B": 1, "tie": 1}


def test_golden_tasks_are_exported_with_their_known_answer_only_when_asked(voted, tmp_path):
    ids, store = voted
    export_preferences(store, tmp_path / "with.jsonl", include_golden=True)
    golden = [p for p in read_preferences(tmp_path / "with.jsonl") if p.meta["task_id"] == ids["golden"]]
    assert [(p.chosen, p.rejected, p.meta["golden"]) for p in golden] == [("right.", "wrong", True)]  # judge-0 said B; the answer is A


def test_per_annotator_export(voted, tmp_path):
    ids, store = voted
    summary = export_preferences(store, tmp_path / "each.jsonl", aggregate="per_annotator", ties="keep")
    pairs = read_preferences(tmp_path / "each.jsonl")
    # 15 answers on regular tasks, 4 of them skips (never pairs) -> 11 pairs, 2 of them ties
    assert (summary["pairs"], summary["ties"], len(pairs)) == (11, 2, 11)
    a_wins = [p for p in pairs if p.meta["task_id"] == ids["A wins"]]
    assert [(p.meta["annotator"], p.chosen, p.meta["reason"]) for p in a_wins] == [
        ("judge-0", "first for A wins.", "r0"),
        ("judge-1", "first for A wins.", "r1"),
        ("judge-2", "second for A wins.", "r2"),
    ]
    dropped = export_preferences(store, tmp_path / "each2.jsonl", aggregate="per_annotator")
    assert (dropped["pairs"], dropped["ties_dropped"]) == (9, 2)


def test_the_screen_order_is_undone(store, tmp_path):
    for i in range(12):
        store.add_candidates(f"Q{i}?", [Candidate(f"one {i}."), Candidate(f"two {i}.")])
    ada = store.annotator_for_token(store.add_annotator("ada"))
    shown_left = {}
    while (task := store.next_task_for(ada)) is not None:
        shown_left[task.id] = task.left
        store.record_judgement(ada, task.id, "left")  # ada always picks what was on the left
    export_preferences(store, tmp_path / "p.jsonl", aggregate="per_annotator")
    pairs = read_preferences(tmp_path / "p.jsonl")
    assert len(pairs) == 12 and all(p.chosen == shown_left[p.meta["task_id"]] for p in pairs)
    assert {p.chosen.split()[0] for p in pairs} == {"one", "two"}  # and the left side was not always A


def test_bad_options(store, tmp_path):
    with pytest.raises(StoreError, match="aggregate must be"):
        export_preferences(store, tmp_path / "x.jsonl", aggregate="mean")
    with pytest.raises(StoreError, match="ties must be"):
        export_preferences(store, tmp_path / "x.jsonl", ties="half")
