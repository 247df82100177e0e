"""Tests for evaluation metrics, with the expected values worked out by hand."""

from __future__ import annotations

import math

import pytest

from tether.eval.metrics import Z_95, distinct_n, length_stats, mean_and_se, win_rate

# --- distinct_n -------------------------------------------------------------


def test_distinct_n_worked_example() -> None:
    texts = ["the cat sat", "the cat ran"]
    # Unigrams: the cat sat the cat ran -> 4 distinct of 6.
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # Bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 distinct of 4.
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # Trigrams: (the cat sat) (the cat ran) -> 2 of 2; none spans the two texts.
    assert distinct_n(texts, 3) == 1.0


def test_distinct_n_lowercases_whitespace_tokens() -> None:
    # "The the THE" -> the the the: 1 distinct unigram of 3.
    assert distinct_n(["The the THE"], 1) == pytest.approx(1 / 3)
    # Punctuation stays attached: "cat." and "cat" differ -> 2 of 2.
    assert distinct_n(["cat. cat"], 1) == 1.0


def test_distinct_n_without_ngrams_is_zero() -> None:
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "   "], 1) == 0.0
    assert distinct_n(["one two"], 3) == 0.0


def test_distinct_n_rejects_bad_n() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        distinct_n(["a b"], 0)


# --- mean_and_se ------------------------------------------------------------


def test_mean_and_se_worked_example() -> None:
    # Mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, sample
    # variance 5 / 3, s = 1.29099; se = s / sqrt(4) = 0.645497.
    mean, se = mean_and_se([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)


def test_mean_and_se_small_samples() -> None:
    assert mean_and_se([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_and_se([])


# --- win_rate ---------------------------------------------------------------


def test_win_rate_worked_example() -> None:
    result = win_rate([2.0, 1.0, 1.0], [1.0, 1.0, 2.0])
    # Outcomes 1, 0.5, 0: win rate (1 + 0.5) / 3 = 0.5.
    assert result["win_rate"] == pytest.approx(0.5)
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (1, 1, 1, 3)
    # s = 0.5, se = 0.5 / sqrt(3) = 0.2887, half-width 1.96 * 0.2887 = 0.566:
    # the interval [-0.066, 1.066] is clipped to [0, 1].
    assert (result["ci_low"], result["ci_high"]) == (0.0, 1.0)


def test_win_rate_interval_unclipped() -> None:
    # 6 wins, 2 ties, 2 losses: win rate (6 + 1) / 10 = 0.7.
    # Squared deviations 6 * 0.09 + 2 * 0.04 + 2 * 0.49 = 1.6, sample variance
    # 1.6 / 9, se = sqrt(1.6 / 9 / 10) = 2 / 15; half-width 1.96 * 2/15 = 0.2613.
    policy = [1.0] * 6 + [0.0] * 2 + [0.0] * 2
    baseline = [0.0] * 6 + [0.0] * 2 + [1.0] * 2
    result = win_rate(policy, baseline)
    assert result["win_rate"] == pytest.approx(0.7)
    assert (result["wins"], result["ties"], result["losses"]) == (6, 2, 2)
    assert result["ci_low"] == pytest.approx(0.7 - Z_95 * 2 / 15)
    assert result["ci_high"] == pytest.approx(0.7 + Z_95 * 2 / 15)
    assert result["ci_low"] == pytest.approx(0.43867, abs=1e-5)


def test_win_rate_all_wins_has_zero_width_interval() -> None:
    result = win_rate([3.0, 2.0], [1.0, 1.0])
    assert result["win_rate"] == 1.0
    assert (result["ci_low"], result["ci_high"]) == (1.0, 1.0)


def test_win_rate_tie_tolerance() -> None:
    assert win_rate([1.0], [1.0 + 1e-12])["ties"] == 1
    assert win_rate([1.0], [1.1], tie_tol=0.2)["ties"] == 1
    assert win_rate([1.0], [1.1], tie_tol=0.0)["losses"] == 1


def test_win_rate_validates_inputs() -> None:
    with pytest.raises(ValueError, match="paired by prompt"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one pair"):
        win_rate([], [])
    with pytest.raises(ValueError, match="finite"):
        win_rate([math.nan], [1.0])
    with pytest.raises(ValueError, match="tie_tol"):
        win_rate([1.0], [1.0], tie_tol=-1.0)


# --- length_stats -----------------------------------------------------------


def test_length_stats_worked_example() -> None:
    # Lengths 3, 1, 5: mean 3, median 3, max 5.
    stats = length_stats(["a b c", "a", "a b  c\nd e"])
    assert stats == {"mean_words": 3.0, "median_words": 3.0, "max_words": 5}


def test_length_stats_even_count_median_and_empty() -> None:
    # Lengths 0, 2, 4, 4: mean 2.5, median (2 + 4) / 2 = 3.
    stats = length_stats(["", "a b", "a b c d", "a b c d"])
    assert stats == {"mean_words": 2.5, "median_words": 3.0, "max_words": 4}
    with pytest.raises(ValueError):
        length_stats([])
