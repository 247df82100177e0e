"""Tests for the simulated Bradley-Terry annotator."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tether.feedback.gold import gold_score
from tether.feedback.simulated import (
    Judgement,
    SimulatedAnnotator,
    UnreachableAgreementError,
    calibrate_temperature,
    expected_agreement,
    gold_agreement,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def numeric_scorer(prompt: str, response: str) -> float:
    """A stand-in gold scorer for synthetic pairs: the response *is* its score."""
    return float(response)


def synthetic_pairs(n: int, seed: int = 123) -> tuple[list[str], list[str], list[str]]:
    """n pairs whose gold scores are standard normal draws (no ties)."""
    rng = np.random.default_rng(seed)
    firsts = [repr(float(x)) for x in rng.normal(size=n)]
    seconds = [repr(float(x)) for x in rng.normal(size=n)]
    return ["prompt"] * n, firsts, seconds


# --- expected_agreement ---------------------------------------------------


def test_expected_agreement_hand_values() -> None:
    # A tie is followed half the time whatever T is.
    assert expected_agreement(np.array([0.0]), 0.3) == pytest.approx(0.5)
    # |d| / T = 1 for both pairs, the sign does not matter: sigmoid(1) = 0.73106.
    assert expected_agreement(np.array([1.0, -1.0]), 1.0) == pytest.approx(0.7310585786)
    # (0.5 + sigmoid(2 / 2)) / 2 = (0.5 + 0.73106) / 2 = 0.61553.
    assert expected_agreement(np.array([0.0, 2.0]), 2.0) == pytest.approx(0.6155292893)


def test_expected_agreement_decreases_with_temperature() -> None:
    margins = np.random.default_rng(0).normal(size=100)
    values = [expected_agreement(margins, t) for t in (0.01, 0.1, 1.0, 10.0, 100.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert 0.5 < values[-1] < values[0] <= 1.0


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_expected_agreement_rejects_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        expected_agreement(np.array([1.0]), temperature)


def test_expected_agreement_rejects_empty_and_nan_margins() -> None:
    with pytest.raises(ValueError):
        expected_agreement(np.array([]), 1.0)
    with pytest.raises(ValueError):
        expected_agreement(np.array([1.0, math.nan]), 1.0)


# --- calibrate_temperature -------------------------------------------------


def test_calibrate_single_margin_hand_value() -> None:
    # sigmoid(1 / T) = 0.75  <=>  1 / T = log(0.75 / 0.25) = log 3  <=>  T = 1 / log 3.
    assert calibrate_temperature(np.array([1.0]), 0.75) == pytest.approx(1 / math.log(3), rel=1e-9)


@pytest.mark.parametrize("target", [0.55, 0.7, 0.75, 0.8, 0.95, 0.999])
def test_calibrate_hits_target(target: float) -> None:
    margins = np.random.default_rng(1).normal(scale=0.7, size=1000)
    temperature = calibrate_temperature(margins, target)
    assert abs(expected_agreement(margins, temperature) - target) < 1e-3


def test_calibrate_hits_target_with_some_ties() -> None:
    # 20% ties: the most any T can reach is 1 - 0.2 / 2 = 0.9 > 0.75.
    margins = np.concatenate([np.zeros(200), np.random.default_rng(2).normal(size=800)])
    temperature = calibrate_temperature(margins, 0.75)
    assert abs(expected_agreement(margins, temperature) - 0.75) < 1e-3


def test_calibrate_scales_with_margins() -> None:
    # sigmoid(|d| / T) only depends on d / T, so scaling the margins scales T.
    margins = np.random.default_rng(3).normal(size=200)
    t = calibrate_temperature(margins, 0.75)
    assert calibrate_temperature(1000.0 * margins, 0.75) == pytest.approx(1000.0 * t, rel=1e-6)
    assert calibrate_temperature(1e-6 * margins, 0.75) == pytest.approx(1e-6 * t, rel=1e-6)


@pytest.mark.parametrize("target", [0.5, 1.0, 0.3, 1.2])
def test_calibrate_rejects_target_outside_open_interval(target: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0.5"):
        calibrate_temperature(np.array([1.0, 2.0]), target)


def test_calibrate_all_ties_returns_one() -> None:
    assert calibrate_temperature(np.zeros(10), 0.75) == 1.0


def test_calibrate_unreachable_target() -> None:
    # 3 of 4 pairs tied: at best 1/4 * 1 + 3/4 * 0.5 = 0.625 < 0.75.
    with pytest.raises(UnreachableAgreementError, match="0.625") as info:
        calibrate_temperature(np.array([0.0, 0.0, 0.0, 1.0]), 0.75)
    assert isinstance(info.value, ValueError)
    assert expected_agreement(np.array([0.0, 0.0, 0.0, 1.0]), info.value.min_temperature) == (pytest.approx(0.625))


# --- SimulatedAnnotator ----------------------------------------------------


def test_calibrated_annotator_agreement_on_5000_pairs() -> None:
    prompts, firsts, seconds = synthetic_pairs(5000)
    judgements = SimulatedAnnotator(scorer=numeric_scorer, seed=7).label(prompts, firsts, seconds)
    assert len(judgements) == 5000
    # No ties here, so realised agreement estimates the calibrated 0.75
    # (binomial s.e. ~ sqrt(0.75 * 0.25 / 5000) = 0.006).
    assert abs(gold_agreement(judgements) - 0.75) < 0.03


@pytest.mark.parametrize("target", [0.65, 0.85])
def test_calibrated_annotator_follows_other_targets(target: float) -> None:
    prompts, firsts, seconds = synthetic_pairs(5000, seed=5)
    annotator = SimulatedAnnotator(target_agreement=target, scorer=numeric_scorer, seed=1)
    assert abs(gold_agreement(annotator.label(prompts, firsts, seconds)) - target) < 0.03


def test_fixed_temperature_probabilities_and_name() -> None:
    annotator = SimulatedAnnotator(temperature=0.31, scorer=numeric_scorer)
    [j] = annotator.label(["p"], ["1.0"], ["0.5"])
    assert j.annotator == "simulated-bt(T=0.31)"
    assert (j.gold_first, j.gold_second) == (1.0, 0.5)
    # sigmoid((1.0 - 0.5) / 0.31) = sigmoid(1.6129) = 0.83385.
    assert j.p_first == pytest.approx(sigmoid(0.5 / 0.31))
    assert j.choice in (0, 1)


def test_calibrated_name_records_temperature() -> None:
    prompts, firsts, seconds = synthetic_pairs(50)
    judgements = SimulatedAnnotator(scorer=numeric_scorer, name="crowd").label(prompts, firsts, seconds)
    match = re.fullmatch(r"crowd\(T=([0-9.e+-]+)\)", judgements[0].annotator)
    assert match is not None
    margins = np.array([j.gold_first - j.gold_second for j in judgements])
    assert expected_agreement(margins, float(match.group(1))) == pytest.approx(0.75, abs=5e-3)
    assert len({j.annotator for j in judgements}) == 1


def test_choices_follow_p_first() -> None:
    # Near-zero temperature: the annotator always follows the gold ordering.
    annotator = SimulatedAnnotator(temperature=1e-6, scorer=numeric_scorer)
    judgements = annotator.label(["p"] * 3, ["2", "0", "1"], ["1", "3", "-1"])
    assert [j.choice for j in judgements] == [0, 1, 0]
    assert gold_agreement(judgements) == 1.0


def test_determinism_given_seed() -> None:
    prompts, firsts, seconds = synthetic_pairs(300)

    def choices(seed: int) -> list[int]:
        annotator = SimulatedAnnotator(scorer=numeric_scorer, seed=seed)
        first_batch = annotator.label(prompts, firsts, seconds)
        second_batch = annotator.label(prompts, firsts, seconds)
        return [j.choice for j in first_batch + second_batch]

    assert choices(0) == choices(0)
    assert choices(0) != choices(1)
    # The generator advances across calls, so batches get fresh noise.
    labels = choices(0)
    assert labels[:300] != labels[300:]


def test_label_with_real_gold_scorer() -> None:
    prompt = "Give three tips for staying healthy."
    good = "Here are three tips for staying healthy: eat vegetables, sleep well, walk daily."
    bad = "tips tips tips tips tips tips"
    annotator = SimulatedAnnotator(temperature=0.5, seed=3)
    [j] = annotator.label([prompt], [good], [bad])
    assert j.gold_first == pytest.approx(gold_score(prompt, good))
    assert j.gold_second == pytest.approx(gold_score(prompt, bad))
    assert j.p_first > 0.99  # the gold margin is large compared with T = 0.5


def test_unreachable_batch_warns_and_follows_gold() -> None:
    annotator = SimulatedAnnotator(scorer=numeric_scorer)
    with pytest.warns(RuntimeWarning, match="No temperature reaches"):
        judgements = annotator.label(["p"] * 4, ["1", "1", "1", "2"], ["1", "1", "1", "0"])
    assert judgements[3].choice == 0
    assert [j.p_first for j in judgements[:3]] == [0.5, 0.5, 0.5]


def test_label_validates_inputs() -> None:
    annotator = SimulatedAnnotator()
    assert annotator.label([], [], []) == []
    with pytest.raises(ValueError, match="one first and one second response per prompt"):
        annotator.label(["p"], ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="temperature"):
        SimulatedAnnotator(temperature=0.0)
    with pytest.raises(ValueError, match="strictly between 0.5 and 1"):
        SimulatedAnnotator(target_agreement=1.0)


# --- gold_agreement --------------------------------------------------------


def test_gold_agreement_hand_example() -> None:
    judgements = [
        Judgement(choice=0, p_first=0.9, gold_first=2.0, gold_second=1.0, annotator="a"),  # agrees
        Judgement(choice=1, p_first=0.9, gold_first=2.0, gold_second=1.0, annotator="a"),  # disagrees
        Judgement(choice=1, p_first=0.1, gold_first=0.0, gold_second=3.0, annotator="a"),  # agrees
        Judgement(choice=0, p_first=0.5, gold_first=1.0, gold_second=1.0, annotator="a"),  # tie: excluded
    ]
    assert gold_agreement(judgements) == pytest.approx(2 / 3)


def test_gold_agreement_undefined_for_ties_only() -> None:
    tie = Judgement(choice=0, p_first=0.5, gold_first=1.0, gold_second=1.0, annotator="a")
    with pytest.raises(ValueError, match="undefined"):
        gold_agreement([tie])
    with pytest.raises(ValueError, match="undefined"):
        gold_agreement([])
