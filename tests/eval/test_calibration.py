"""Tests for reward-model calibration, with the expected values worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tether.eval.calibration import (
    bootstrap_ci,
    calibration_bins,
    expected_calibration_error,
    length_correlation,
    pairwise_calibration,
    reliability_diagram,
    symmetrised,
    wilson_interval,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3 / (3 + 1) = 0.75


# --- expected_calibration_error -------------------------------------------------


def test_ece_perfectly_calibrated_is_zero() -> None:
    # Bin [0.2, 0.3): four predictions of 0.25, one label 1 -> accuracy 1/4 = 0.25.
    # Bin [0.7, 0.8): four predictions of 0.75, three labels 1 -> accuracy 3/4 = 0.75.
    # Both gaps are 0, so ECE = 0.
    probs = [0.25] * 4 + [0.75] * 4
    labels = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_two_bin_worked_example() -> None:
    # Bin [0.9, 1.0]: probs 0.9, 0.9, labels 1, 0 -> |0.5 - 0.9| = 0.4, weight 2/4.
    # Bin [0.2, 0.3): probs 0.2, 0.2, labels 0, 0 -> |0.0 - 0.2| = 0.2, weight 2/4.
    # ECE = 0.4 * 0.5 + 0.2 * 0.5 = 0.3.
    probs = [0.9, 0.9, 0.2, 0.2]
    labels = [1, 0, 0, 0]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3)


def test_ece_soft_tie_labels() -> None:
    # A tie is a soft label 0.5: p = 0.5 on two ties is perfectly calibrated -> 0;
    # p = 0.9 on two ties is off by |0.5 - 0.9| = 0.4.
    assert expected_calibration_error([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.0)
    assert expected_calibration_error([0.9, 0.9], [0.5, 0.5]) == pytest.approx(0.4)


def test_ece_one_bin_is_gap_of_means() -> None:
    # One bin holds everything: |mean(labels) - mean(probs)| = |2/4 - 0.55| = 0.05.
    probs = [0.1, 0.4, 0.7, 1.0]
    labels = [0, 1, 1, 0]
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.05)


def test_bins_edges_and_endpoints() -> None:
    bins = calibration_bins([0.0, 0.3, 0.3999, 1.0], [0, 1, 1, 1], n_bins=10)
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    # 0.3 sits on an edge and goes into the bin it opens, [0.3, 0.4).
    assert bins[3]["lo"] == 0.3 and bins[3]["hi"] == 0.4
    assert bins[3]["mean_prob"] == pytest.approx((0.3 + 0.3999) / 2)
    # p == 1.0 goes into the last bin, [0.9, 1.0].
    assert bins[9]["mean_prob"] == 1.0 and bins[9]["accuracy"] == 1.0
    # Empty bins carry None, not NaN, so the result stays JSON-serialisable.
    assert bins[1]["mean_prob"] is None and bins[1]["accuracy"] is None
    json.dumps(bins)


def test_chosen_first_ece_degenerates_to_one_minus_mean_prob() -> None:
    # All labels 1: every bin's accuracy is 1, so ECE = 1 - mean(p) = 1 - 0.6 = 0.4.
    probs = [0.2, 0.6, 0.7, 0.9]
    assert expected_calibration_error(probs, [1, 1, 1, 1]) == pytest.approx(0.4)


def test_ece_accepts_torch_tensors() -> None:
    probs = torch.tensor([0.9, 0.9, 0.2, 0.2], dtype=torch.bfloat16, requires_grad=True)
    labels = torch.tensor([1, 0, 0, 0])
    # bfloat16 rounds 0.9 to 0.8984375 and 0.2 to 0.2001953125:
    # |0.5 - 0.8984375| / 2 + |0 - 0.2001953125| / 2 = 0.19921875 + 0.10009765625.
    assert expected_calibration_error(probs, labels) == pytest.approx(0.29931640625)


@pytest.mark.parametrize(
    ("probs", "labels", "n_bins", "message"),
    [
        ([0.5, 1.2], [1, 0], 10, "probabilities in \\[0, 1\\]"),
        ([0.5, 0.5], [1, 2], 10, "labels must be in \\[0, 1\\]"),
        ([0.5], [1, 0], 10, "same length"),
        ([], [], 10, "at least one"),
        ([0.5, float("nan")], [1, 0], 10, "NaN or infinite"),
        ([0.5], [1], 0, "positive integer"),
    ],
)
def test_ece_rejects_bad_input(probs: list, labels: list, n_bins: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(probs, labels, n_bins=n_bins)


# --- symmetrised / pairwise_calibration -----------------------------------------


def test_symmetrised_doubles_and_flips() -> None:
    probs2, labels2 = symmetrised([0.8, 0.3])
    # (0.8, 1), (0.3, 1) followed by (1 - 0.8, 0), (1 - 0.3, 0).
    assert probs2 == pytest.approx([0.8, 0.3, 0.2, 0.7])
    assert labels2.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert probs2.size == 2 * 2


def test_symmetrised_is_invariant_to_storage_orientation() -> None:
    # Chosen-first: pairs (A > B) with P(first) = 0.8, (C > D) with 0.3.
    chosen_first = symmetrised([0.8, 0.3])
    # The same pairs stored rejected-first: (B, A) with P(first) = 0.2 and label 0,
    # (C, D) left as is.
    mixed = symmetrised([0.2, 0.3], [0, 1])
    as_set = lambda pl: sorted(zip(np.round(pl[0], 12), pl[1]))  # noqa: E731
    assert as_set(chosen_first) == as_set(mixed)
    assert expected_calibration_error(*chosen_first) == pytest.approx(expected_calibration_error(*mixed))


def test_pairwise_calibration_perfectly_calibrated() -> None:
    # Three pairs of margin ln 3 (p = 0.75), one of margin -ln 3 (p = 0.25).
    # Symmetrised: (0.75, 1) x3, (0.25, 0) x3, (0.25, 1) x1, (0.75, 0) x1.
    # Bin [0.7, 0.8): 4 predictions of 0.75, 3 right -> 0.75; bin [0.2, 0.3): 4 of
    # 0.25, 1 right -> 0.25. ECE 0.
    r_chosen = [LN3, LN3, LN3, 0.0]
    r_rejected = [0.0, 0.0, 0.0, LN3]
    result = pairwise_calibration(r_chosen, r_rejected)
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)
    assert result["n"] == 4
    assert sum(b["count"] for b in result["bins"]) == 8  # both orientations
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["mean_margin"] == pytest.approx((3 * LN3 - LN3) / 4)  # ln 3 / 2
    assert result["bins"][7]["count"] == 4
    assert result["bins"][7]["mean_prob"] == pytest.approx(0.75)
    assert result["bins"][7]["accuracy"] == pytest.approx(0.75)
    assert set(result["bins"][0]) == {"lo", "hi", "count", "mean_prob", "accuracy"}
    json.dumps(result)


def test_pairwise_calibration_penalises_overconfidence() -> None:
    # Same ranking (3 right, 1 wrong) but p = 0.99 / 0.01: margins +-ln 99.
    # Symmetrised: bin [0.9, 1]: 0.99 x4, 3 right -> |0.75 - 0.99| = 0.24, weight 1/2;
    # bin [0, 0.1): 0.01 x4, 1 right -> |0.25 - 0.01| = 0.24, weight 1/2. ECE 0.24.
    ln99 = math.log(99.0)
    result = pairwise_calibration([ln99, ln99, ln99, 0.0], [0.0, 0.0, 0.0, ln99])
    assert result["ece"] == pytest.approx(0.24)
    assert result["accuracy"] == pytest.approx(0.75)
    # Chosen-first (unsymmetrised) ECE would prefer this model: 1 - mean(p) =
    # 1 - 0.745 = 0.255 here, against 1 - 0.625 = 0.375 for the calibrated one.
    p = [0.99, 0.99, 0.99, 0.01]
    assert expected_calibration_error(p, [1, 1, 1, 1]) == pytest.approx(0.255)
    assert expected_calibration_error([0.75, 0.75, 0.75, 0.25], [1] * 4) == pytest.approx(0.375)


def test_pairwise_calibration_ties_and_mirror_bins() -> None:
    # Margins 2, 0, -1: accuracy (1 + 0.5 + 0) / 3 = 0.5; mean margin 1/3.
    result = pairwise_calibration(torch.tensor([3.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0]))
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["mean_margin"] == pytest.approx(1 / 3)
    bins = result["bins"]
    # Off the edges the symmetrised bins mirror each other: same count, accuracy
    # and mean probability reflected about 1/2.
    for k in (0, 1, 2, 3):
        mirror = bins[9 - k]
        assert bins[k]["count"] == mirror["count"]
        if bins[k]["count"]:
            assert bins[k]["accuracy"] == pytest.approx(1 - mirror["accuracy"])
            assert bins[k]["mean_prob"] == pytest.approx(1 - mirror["mean_prob"])


def test_pairwise_calibration_extreme_margins_do_not_overflow() -> None:
    result = pairwise_calibration([1e4, -1e4], [0.0, 0.0])
    # p = 1 and p = 0: symmetrised (1, 1), (0, 0) are right; (0, 1), (1, 0) are wrong.
    # Bin 0: probs 0, 0 with labels 0, 1 -> gap 0.5; bin 9 likewise -> ECE 0.5.
    assert result["ece"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(0.5)


def test_pairwise_calibration_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="r_chosen and r_rejected must have the same length"):
        pairwise_calibration([1.0, 2.0], [0.0])


# --- length_correlation -------------------------------------------------------------


def test_length_correlation_linear_and_degenerate() -> None:
    lengths = [10, 20, 30, 40]
    assert length_correlation([1.0, 2.0, 3.0, 4.0], lengths) == pytest.approx(1.0)
    assert length_correlation([4.0, 3.0, 2.0, 1.0], lengths) == pytest.approx(-1.0)
    # Constants have zero variance: undefined -> nan (even 3.3, whose float mean
    # is not exactly 3.3).
    assert math.isnan(length_correlation([3.3, 3.3, 3.3], [1, 2, 3]))
    assert math.isnan(length_correlation([1.0, 2.0, 3.0], [5, 5, 5]))
    assert math.isnan(length_correlation([1.0], [5]))


def test_length_correlation_worked_example() -> None:
    # rewards 1, 2, 3 (centred -1, 0, 1); lengths 1, 3, 2 (centred -1, 1, 0).
    # r = (1 + 0 + 0) / sqrt(2 * 2) = 0.5.
    assert length_correlation([1.0, 2.0, 3.0], torch.tensor([1, 3, 2])) == pytest.approx(0.5)


def test_length_correlation_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        length_correlation([1.0, 2.0], [1, 2, 3])


# --- reliability_diagram -------------------------------------------------------------


def test_reliability_diagram_writes_png(tmp_path: Path) -> None:
    import matplotlib
    import matplotlib.image

    backend_before = matplotlib.get_backend()
    result = pairwise_calibration([LN3, LN3, LN3, 0.0, 2.0], [0.0, 0.0, 0.0, LN3, 0.0])
    path = reliability_diagram(result, tmp_path / "nested" / "dir" / "rd.png", title="Toy RM")
    assert path == tmp_path / "nested" / "dir" / "rd.png"
    assert path.is_file() and path.stat().st_size > 0
    image = matplotlib.image.imread(path)
    assert image.shape == (500, 500, 4)  # 5 x 5 inches at 100 dpi, RGBA
    assert matplotlib.get_backend() == backend_before


def test_reliability_diagram_requires_ece_and_bins(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ece' is missing"):
        reliability_diagram({"bins": []}, tmp_path / "x.png")


# --- bootstrap_ci / wilson_interval -----------------------------------------------------


def test_bootstrap_ci_brackets_mean_and_is_deterministic() -> None:
    values = np.random.default_rng(1).normal(loc=2.0, scale=1.0, size=200)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    # Standard error ~ 1 / sqrt(200) = 0.071, so the 95% interval is ~ +-0.14 wide.
    assert 0.2 < high - low < 0.36
    assert bootstrap_ci(values) == (low, high)
    assert bootstrap_ci(values, seed=1) != (low, high)


def test_bootstrap_ci_constant_and_rows() -> None:
    # Every resample of a constant has the same mean: a zero-width interval.
    assert bootstrap_ci([0.7] * 10) == pytest.approx((0.7, 0.7))
    # Rows are resampled whole: a perfectly linear (reward, length) table keeps
    # correlation 1 in every resample with two distinct rows (else nan -> nan).
    table = np.column_stack([np.arange(30.0), 2 * np.arange(30.0) + 1])
    low, high = bootstrap_ci(table, stat=lambda a: length_correlation(a[:, 0], a[:, 1]))
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_bootstrap_ci_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])


def test_wilson_interval_worked_example() -> None:
    # 62 / 100, z = 1.96: centre = (0.62 + 0.019208) / 1.038416 = 0.615560;
    # half = 1.96 * sqrt(0.62 * 0.38 / 100 + 3.8416 / 40000) / 1.038416
    #      = 1.96 * sqrt(0.00245204) / 1.038416 = 0.093465 -> (0.5221, 0.7090).
    low, high = wilson_interval(62, 100)
    assert low == pytest.approx(0.52209, abs=1e-4)
    assert high == pytest.approx(0.70903, abs=1e-4)


def test_wilson_interval_extremes() -> None:
    # 0 / 10: centre = half = (3.8416 / 20) / 1.38416 = 0.13877 -> (0, 0.2775).
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(0.27754, abs=1e-4)
    # Symmetric: 10 / 10 mirrors it.
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0, abs=1e-12)
    assert low == pytest.approx(1 - 0.27754, abs=1e-4)
    # Fractional successes (ties counting one half) are allowed.
    assert wilson_interval(2.5, 5)[0] < 0.5 < wilson_interval(2.5, 5)[1]
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="positive number of trials"):
        wilson_interval(0, 0)
