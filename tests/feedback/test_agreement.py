"""Agreement statistics on hand-worked and published examples, and `stats` over a store."""

from __future__ import annotations

import json

import pytest

from tether.data.records import PreferencePair
from tether.feedback.agreement import (
    cohen_kappa,
    golden_accuracy,
    krippendorff_alpha,
    pair_agreement,
    pairwise_kappa,
    position_bias,
    stats,
    throughput,
)
from tether.feedback.store import Candidate

# Two annotators on eight tasks (used by several tests below).
FIRST = ["A", "A", "B", "B", "A", "tie", "A", "B"]
SECOND = ["A", "B", "B", "B", "A", "A", "A", "B"]


def test_pair_agreement():
    # A A B: of the 3 annotator pairs only (A, A) agrees: 2*1 / (3*2) = 1/3
    assert pair_agreement(["A", "A", "B"]) == pytest.approx(1 / 3)
    # A A A tie: 3*2 / (4*3) = 1/2
    assert pair_agreement(["A", "A", "A", "tie"]) == pytest.approx(0.5)
    assert pair_agreement(["B", "B"]) == 1.0 and pair_agreement(["A", "B"]) == 0.0
    assert pair_agreement(["A"]) is None


def test_cohen_kappa_hand_worked():
    # equal labels on tasks 1, 3, 4, 5, 7, 8: p_o = 6/8 = 0.75
    # first: A 4, B 3, tie 1; second: A 4, B 4, tie 0 (of 8)
    # p_e = (4*4 + 3*4 + 1*0) / 64 = 28/64 = 0.4375
    # kappa = (0.75 - 0.4375) / (1 - 0.4375) = 0.3125 / 0.5625 = 5/9
    assert cohen_kappa(FIRST, SECOND) == pytest.approx(5 / 9)
    assert cohen_kappa(SECOND, FIRST) == pytest.approx(5 / 9)


def test_cohen_kappa_wikipedia_example():
    # Wikipedia "Cohen's kappa", worked example: 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    first = ["A"] * 25 + ["B"] * 25
    second = ["A"] * 20 + ["B"] * 5 + ["A"] * 10 + ["B"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)


def test_cohen_kappa_edges():
    # always opposite, balanced: p_o = 0, p_e = (2*2 + 2*2)/16 = 0.5, kappa = -0.5/0.5 = -1
    assert cohen_kappa(["A", "B", "A", "B"], ["B", "A", "B", "A"]) == pytest.approx(-1.0)
    assert cohen_kappa(["A", "B"], ["A", "B"]) == pytest.approx(1.0)
    assert cohen_kappa(["A", "A"], ["A", "A"]) is None  # p_e = 1: agreement by chance alone
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="same tasks"):
        cohen_kappa(["A"], ["A", "B"])


def test_pairwise_kappa_uses_common_tasks_only():
    by_annotator = {"x": dict(enumerate(FIRST)), "y": dict(enumerate(SECOND)), "z": {100: "A"}}
    by_annotator["x"][50] = "B"  # a task only x answered changes nothing
    assert pairwise_kappa(by_annotator) == [{"a": "x", "b": "y", "n": 8, "kappa": pytest.approx(5 / 9)}]


def test_krippendorff_alpha_hand_worked():
    # units: [A A A], [A B], [B B tie], [A] (a lone label is left out)
    # coincidences, each ordered pair of labels from different annotators adds 1/(m-1):
    #   [A A A]: 6 pairs (A,A) * 1/2 -> o_AA = 3
    #   [A B]:   (A,B), (B,A) * 1   -> o_AB = 1, o_BA = 1
    #   [B B tie]: (B,B) x2 * 1/2 -> o_BB = 1; (B,tie) x2 * 1/2 -> o_Btie = 1; (tie,B) -> o_tieB = 1
    # n_A = 3 + 1 = 4, n_B = 1 + 1 + 1 = 3, n_tie = 1, n = 8
    # observed disagreement: o_AB + o_BA + o_Btie + o_tieB = 4
    # expected: sum_{c != k} n_c n_k = 2 * (4*3 + 4*1 + 3*1) = 38
    # alpha = 1 - (n - 1) * 4 / 38 = 1 - 28/38 = 10/38
    assert krippendorff_alpha([["A", "A", "A"], ["A", "B"], ["B", "B", "tie"], ["A"]]) == pytest.approx(10 / 38)


def test_krippendorff_alpha_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal data with four
    # observers and missing values (12 units; the last has one value): alpha = 0.743.
    units = [
        ["1", "1", "1"],
        ["2", "2", "3", "2"],
        ["3"] * 4,
        ["3"] * 4,
        ["2"] * 4,
        ["1", "2", "3", "4"],
        ["4"] * 4,
        ["1", "1", "2", "1"],
        ["2"] * 4,
        ["5"] * 3,
        ["1", "1"],
        ["3"],
    ]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_edges():
    assert krippendorff_alpha([["A", "A"], ["B", "B"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["A", "A"], ["A", "A"]]) is None  # one value only: no variation to agree on
    assert krippendorff_alpha([["A"], ["B"]]) is None


def test_throughput():
    # timed: 30, 90, and 1200 capped at 600 -> 720 s active = 0.2 h; 3 judgements -> 15 per hour, 240 s each
    out = throughput([30.0, 90.0, None, 1200.0], cap=600)
    assert out == {
        "judgements": 3,
        "active_hours": pytest.approx(0.2),
        "seconds_per_judgement": pytest.approx(240.0),
        "per_hour": pytest.approx(15.0),
    }
    assert throughput([None])["per_hour"] is None


def test_position_bias():
    # counted: (A, left A) win, (B, left A) loss, (A, left B) loss, (B, left B) win -> 2 of 4;
    # the tie, the skip and the answer with an unknown order say nothing about position
    out = position_bias([("A", "A"), ("B", "A"), ("A", "B"), ("B", "B"), ("tie", "A"), ("skip", "B"), ("A", None)])
    assert (out["n"], out["left_wins"], out["left_win_rate"]) == (4, 2, 0.5)
    assert out["ci"][0] < 0.5 < out["ci"][1]
    assert position_bias([])["left_win_rate"] is None


def test_golden_accuracy():
    # graded: (A, A) right, (B, A) wrong, (tie, tie) right; the skip is not graded -> 2/3
    answers = [("A", "A"), ("B", "A"), ("tie", "tie"), ("skip", "A")]
    assert golden_accuracy(answers, 0.7) == {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3), "flagged": True}
    assert golden_accuracy(answers, 0.6)["flagged"] is False
    assert golden_accuracy([], 0.7) == {"n": 0, "correct": 0, "accuracy": None, "flagged": False}


def test_stats_over_a_store(store):
    tasks = [store.add_candidates(f"Q{i}?", [Candidate(f"a{i}."), Candidate(f"b{i}.")])[0] for i in range(8)]
    golden = store.add_pairs([PreferencePair("G?", "good.", "bad")], golden=True)[0]
    x, y = store.get_or_add_annotator("x", "judge"), store.get_or_add_annotator("y", "judge")
    for task, a, b in zip(tasks, FIRST, SECOND):
        store.record_judgement(x, task, a, left_side="A")
        store.record_judgement(y, task, b, left_side="B")
    store.record_judgement(x, golden, "A", left_side="A")
    store.record_judgement(y, golden, "skip")
    out = stats(store)
    assert out["kappa"] == [{"a": "x", "b": "y", "n": 8, "kappa": pytest.approx(5 / 9)}]
    # alpha for FIRST/SECOND: o_AA = 6, o_BB = 6, o_AB = o_BA = 1, o_Atie = o_tieA = 1
    # n_A = 8, n_B = 7, n_tie = 1, n = 16; observed 4; expected 2 * (8*7 + 8*1 + 7*1) = 142
    # alpha = 1 - 15 * 4 / 142 = 82/142
    assert out["alpha"] == pytest.approx(82 / 142)
    assert out["agreement"] == {"tasks": 8, "mean_pair_agreement": pytest.approx(0.75)}
    # x's left was A: wins where x said A (tasks 1, 2, 5, 7, golden) of its 8 A/B answers -> 5/8
    assert out["annotators"]["x"]["position_bias"]["left_win_rate"] == pytest.approx(5 / 8)
    assert out["annotators"]["x"]["golden"] == {"n": 1, "correct": 1, "accuracy": 1.0, "flagged": False}
    assert out["annotators"]["y"]["golden"]["n"] == 0 and out["annotators"]["y"]["skips"] == 1
    assert out["tasks"] == {"total": 9, "golden": 1, "complete": 8}
    assert out["judgements"]["total"] == 18 and out["judgements"]["skip"] == 1
    json.dumps(out)  # JSON-able as it is
