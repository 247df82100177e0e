"""A simulated panel labels the store through the same API as people; statistics see what it was built to do."""

from __future__ import annotations

import random

import pytest

from tether.data.readers import read_preferences
from tether.data.records import PreferencePair
from tether.feedback.agreement import stats
from tether.feedback.export import export_preferences
from tether.feedback.gold import gold_score
from tether.feedback.panel import PanelMember, default_panel, member_scorer, run_panel
from tether.feedback.store import Candidate, StoreError, open_store

TOPICS = ["garden", "river", "winter", "music", "bread", "planet", "travel", "market", "forest", "coffee", "engine", "castle"]
FILLER = [
    "calm",
    "bright",
    "small",
    "green",
    "quiet",
    "warm",
    "old",
    "new",
    "slow",
    "fast",
    "deep",
    "open",
    "clear",
    "soft",
    "loud",
    "dark",
    "light",
    "long",
    "short",
    "rich",
    "plain",
    "fresh",
    "wild",
    "kind",
    "true",
    "fair",
    "bold",
]


def answer(rng: random.Random, topic: list[str]) -> str:
    """An answer using some of the prompt's topic words, some filler, finished or not: gold scores vary."""
    words = rng.sample(topic, rng.randint(0, 3)) + rng.sample(FILLER, rng.randint(3, 20))
    rng.shuffle(words)
    return " ".join(words) + ("." if rng.random() < 0.5 else "")


def gold_ordered_pairs(n: int, seed: int) -> list[PreferencePair]:
    """n pairs whose 'chosen' has the higher gold score (no gold ties)."""
    rng, pairs = random.Random(seed), []
    while len(pairs) < n:
        topic = rng.sample(TOPICS, 3)
        prompt = f"Write about {topic[0]}, {topic[1]} and {topic[2]}."
        x, y = answer(rng, topic), answer(rng, topic)
        gx, gy = gold_score(prompt, x), gold_score(prompt, y)
        if gx != gy:
            pairs.append(PreferencePair(prompt, x if gx > gy else y, y if gx > gy else x))
    return pairs


def fill(store, n: int, seed: int = 0, required: int = 3) -> list[int]:
    """Regular tasks for n gold-ordered pairs, stored with the better answer as B half the time."""
    ids, rng = [], random.Random(seed + 1)
    for pair in gold_ordered_pairs(n, seed):
        a, b = (pair.chosen, pair.rejected) if rng.random() < 0.5 else (pair.rejected, pair.chosen)
        ids += store.add_candidates(pair.prompt, [Candidate(a), Candidate(b)], required=required)
    return ids


def gold_agreement(store, name: str) -> float:
    """Share of a member's answers on regular tasks that follow the gold ordering."""
    by_id = {t.id: t for t in store.tasks()}
    votes = [v for v in store.votes() if v.annotator == name and not by_id[v.task_id].is_golden]
    better = {t.id: "A" if gold_score(t.prompt, t.response_a) > gold_score(t.prompt, t.response_b) else "B" for t in by_id.values()}
    return sum(v.choice == better[v.task_id] for v in votes) / len(votes)


def test_a_panel_of_three_labels_every_task_three_times_and_noise_shows(tmp_path):
    store = open_store(tmp_path / "p.db", seed=0, golden_rate=0.0)
    tasks = fill(store, 60)
    report = run_panel(store, default_panel((0.95, 0.75, 0.6)))
    assert {name: r["judgements"] for name, r in report.items()} == {"simulated-1": 60, "simulated-2": 60, "simulated-3": 60}
    per_task = {}
    for v in store.votes():
        per_task.setdefault(v.task_id, set()).add(v.annotator)
    assert set(per_task) == set(tasks) and all(len(who) == 3 for who in per_task.values())
    careful, middling, noisy = (gold_agreement(store, f"simulated-{i}") for i in (1, 2, 3))
    assert careful > 0.85 and noisy < 0.75 and careful > middling > noisy
    # the majority of three beats the noisiest member's agreement with gold
    export_preferences(store, tmp_path / "m.jsonl")
    pairs = read_preferences(tmp_path / "m.jsonl")
    majority_right = sum(gold_score(p.prompt, p.chosen) > gold_score(p.prompt, p.rejected) for p in pairs) / len(pairs)
    assert len(pairs) == 60 and majority_right > noisy
    out = stats(store)
    kappas = {(k["a"], k["b"]): k["kappa"] for k in out["kappa"]}
    assert kappas[("simulated-1", "simulated-2")] > kappas[("simulated-2", "simulated-3")]  # agreement falls with noise
    assert 0 < out["alpha"] < 1
    assert all(s["kind"] == "simulated" for s in out["annotators"].values())
    assert abs(out["position_bias"]["left_win_rate"] - 0.5) < 0.1  # gold does not care about sides
    store.close()


def test_position_bias_and_golden_flags_are_caught(tmp_path):
    store = open_store(tmp_path / "p.db", seed=1, golden_rate=0.4)
    fill(store, 40, seed=1, required=2)
    store.add_pairs(gold_ordered_pairs(15, seed=99), golden=True)
    members = [PanelMember("careful", 0.97, seed=1), PanelMember("lefty", 0.97, left_bias=0.9, seed=2)]
    run_panel(store, members)
    out = stats(store, golden_threshold=0.8)
    assert out["annotators"]["lefty"]["position_bias"]["left_win_rate"] > 0.85
    assert out["annotators"]["lefty"]["position_bias"]["ci"][0] > 0.5  # clearly biased
    assert out["annotators"]["careful"]["position_bias"]["ci"][0] < 0.5 < out["annotators"]["careful"]["position_bias"]["ci"][1]
    careful, lefty = out["annotators"]["careful"]["golden"], out["annotators"]["lefty"]["golden"]
    assert careful["n"] >= 5 and lefty["n"] >= 5
    assert not careful["flagged"] and lefty["flagged"]
    store.close()


def test_individual_gold_gives_each_member_its_own_taste():
    shared = member_scorer(PanelMember("s"))
    assert shared is gold_score
    one, two = member_scorer(PanelMember("x", gold_spread=0.5, seed=1)), member_scorer(PanelMember("y", gold_spread=0.5, seed=2))
    samples = [("Write about rivers.", "rivers are long"), ("Write about rivers.", "Rivers run to the sea."), ("Q?", "")]
    assert [one(p, r) for p, r in samples] != [two(p, r) for p, r in samples]
    assert one(*samples[1]) == member_scorer(PanelMember("x", gold_spread=0.5, seed=1))(*samples[1])  # seeded


def test_a_limit_and_bad_members(tmp_path):
    store = open_store(tmp_path / "p.db", seed=0, golden_rate=0.0)
    fill(store, 5, required=1)
    assert run_panel(store, default_panel((0.8,)), limit=2)["simulated-1"]["judgements"] == 2
    with pytest.raises(StoreError, match="distinct names"):
        run_panel(store, [PanelMember("x"), PanelMember("x")])
    with pytest.raises(StoreError, match="left_bias"):
        run_panel(store, [PanelMember("x", left_bias=2)])
    store.close()
