"""Reward-model calibration: ECE, reliability diagrams, length correlation, intervals.

A reward model scores each response with a scalar ``r``; under the
Bradley-Terry model (Bradley & Terry, 1952) its probability that the chosen
answer of a preference pair beats the rejected one is::

    p = sigmoid(r_chosen - r_rejected)

Accuracy alone says whether ``p > 0.5`` on most pairs; calibration asks
whether those probabilities mean what they say: among the pairs given
``p ~ 0.7``, is the first answer preferred about 70% of the time?

* :func:`expected_calibration_error` is the binned ECE of Naeini et al. (2015)
  and Guo et al. (2017), and :func:`calibration_bins` the per-bin statistics
  behind it.
* :func:`symmetrised` and :func:`pairwise_calibration` make ECE meaningful on a
  preference eval set, where every pair is stored chosen-first (see
  :func:`symmetrised` for why that matters).
* :func:`reliability_diagram` draws the bins as in Guo et al. (2017), Fig. 1.
* :func:`length_correlation` is the Pearson correlation between reward and
  response length, the first symptom of a length-hacked reward model
  (Singhal et al., 2023).
* :func:`bootstrap_ci` (Efron & Tibshirani, 1993) and :func:`wilson_interval`
  (Wilson, 1927) put confidence intervals on any of these numbers.

Every function takes anything :func:`numpy.asarray` accepts (lists, tuples,
NumPy arrays) and also torch tensors, which are detached and copied to the CPU
as float64 first, so bfloat16 or CUDA tensors with gradients work too.

References
----------
Bradley, R. A. & Terry, M. E. (1952). Rank analysis of incomplete block
designs: I. The method of paired comparisons. *Biometrika* 39(3/4).
Wilson, E. B. (1927). Probable inference, the law of succession, and
statistical inference. *Journal of the American Statistical Association*
22(158), 209-212.
Efron, B. & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*.
Chapman & Hall, ch. 13 (percentile intervals).
Naeini, M. P., Cooper, G. F. & Hauskrecht, M. (2015). Obtaining well
calibrated probabilities using Bayesian binning. *AAAI*.
Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. (2017). On calibration of
modern neural networks. *ICML*.
Singhal, P., Goyal, T., Xu, J. & Durrett, G. (2023). A long way to go:
investigating length correlations in RLHF. arXiv:2310.03716.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CalibrationBin",
    "PairwiseCalibration",
    "bootstrap_ci",
    "calibration_bins",
    "expected_calibration_error",
    "length_correlation",
    "pairwise_calibration",
    "reliability_diagram",
    "symmetrised",
    "wilson_interval",
]


class CalibrationBin(TypedDict):
    """One equal-width probability bin ``[lo, hi)`` (the last one is ``[lo, 1]``).

    ``mean_prob`` and ``accuracy`` (the mean label) are ``None`` for an empty
    bin, so that the statistics stay JSON-serialisable.
    """

    lo: float
    hi: float
    count: int
    mean_prob: float | None
    accuracy: float | None


class PairwiseCalibration(TypedDict):
    """What :func:`pairwise_calibration` returns; see there."""

    ece: float
    bins: list[CalibrationBin]
    accuracy: float
    mean_margin: float
    n: int


# --- input handling -----------------------------------------------------------


def _as_float_array(values: Any, name: str) -> NDArray[np.float64]:
    """``values`` as a float64 NumPy array, converting torch tensors first.

    A tensor is detached, moved to the CPU and cast to float64 before the
    conversion, because ``np.asarray`` refuses tensors that need a gradient,
    live on a GPU, or are bfloat16. Torch is never imported here.
    """
    if hasattr(values, "detach") and hasattr(values, "cpu") and hasattr(values, "double"):
        values = values.detach().cpu().double().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a sequence of numbers (a list, a NumPy array or a torch "
            f"tensor), but converting it to a float array failed: {error}"
        ) from error


def _as_vector(values: Any, name: str) -> NDArray[np.float64]:
    """``values`` as a finite 1-D float64 array (any shape is flattened)."""
    array = _as_float_array(values, name).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, but some values are NaN or infinite.")
    return array


def _check_same_size(a: NDArray[np.float64], b: NDArray[np.float64], what: str) -> None:
    if a.size != b.size:
        raise ValueError(f"{what} must have the same length, but got {a.size} and {b.size}.")


def _check_probabilities(probs: NDArray[np.float64], labels: NDArray[np.float64]) -> None:
    _check_same_size(probs, labels, "probs and labels")
    if probs.size == 0:
        raise ValueError("Calibration needs at least one prediction, but probs is empty.")
    if np.any((probs < 0.0) | (probs > 1.0)):
        raise ValueError("probs must be probabilities in [0, 1], but some are outside it.")
    if np.any((labels < 0.0) | (labels > 1.0)):
        raise ValueError("labels must be in [0, 1] (1 = first answer preferred, 0 = second, 0.5 = tie), but some are outside it.")


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The logistic function, without overflow for large ``|x|``."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# --- expected calibration error -----------------------------------------------


def calibration_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> list[CalibrationBin]:
    """Per-bin statistics of a reliability diagram (Guo et al., 2017, Sec. 2).

    The interval [0, 1] is cut into ``n_bins`` equal-width bins
    ``[k / n_bins, (k + 1) / n_bins)``; ``p == 1.0`` goes in the last bin. A
    probability exactly on an edge goes in the bin that the edge opens, so with
    ten bins ``0.3`` lies in ``[0.3, 0.4)``.

    Args:
        probs: predicted probability that the first answer of each pair is
            preferred, each in [0, 1].
        labels: the outcome of each pair, in [0, 1]: 1 when the first answer
            was preferred, 0 when the second was, 0.5 for a tie (a soft label;
            any value in between is accepted as one).
        n_bins: the number of bins, at least 1.

    Returns:
        ``n_bins`` dicts ``{"lo", "hi", "count", "mean_prob", "accuracy"}`` in
        order, ``accuracy`` being the mean label of the bin; ``mean_prob`` and
        ``accuracy`` are ``None`` for empty bins.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, but it is {n_bins!r}.")
    p = _as_vector(probs, "probs")
    y = _as_vector(labels, "labels")
    _check_probabilities(p, y)

    n_bins = int(n_bins)
    # k / n_bins is correctly rounded, so the edges are the same floats as the
    # decimal literals (0.3 == 3 / 10), unlike np.linspace's 0.30000000000000004.
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    prob_sums = np.bincount(index, weights=p, minlength=n_bins)
    label_sums = np.bincount(index, weights=y, minlength=n_bins)

    bins: list[CalibrationBin] = []
    for k in range(n_bins):
        count = int(counts[k])
        bins.append(
            {
                "lo": float(edges[k]),
                "hi": float(edges[k + 1]),
                "count": count,
                "mean_prob": float(prob_sums[k] / count) if count else None,
                "accuracy": float(label_sums[k] / count) if count else None,
            }
        )
    return bins


def _ece_from_bins(bins: list[CalibrationBin]) -> float:
    total = sum(b["count"] for b in bins)
    ece = 0.0
    for b in bins:
        if b["count"]:
            assert b["accuracy"] is not None and b["mean_prob"] is not None
            ece += b["count"] / total * abs(b["accuracy"] - b["mean_prob"])
    return ece


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error (Naeini et al., 2015; Guo et al., 2017, eq. 3).

    ``ECE = sum_b (n_b / n) * |mean(labels in b) - mean(probs in b)|`` over
    ``n_bins`` equal-width bins of [0, 1] (see :func:`calibration_bins` for
    the binning). It is 0 for a perfectly calibrated predictor and at most 1.

    ``probs[i]`` is the predicted probability that the *first* answer of pair
    ``i`` is preferred and ``labels[i]`` is 1 if it was, 0 if the second was
    and 0.5 for a tie.

    Warning:
        On a preference eval set stored chosen-first, every label is 1, every
        bin's accuracy is 1, and this reduces to ``1 - mean(probs)`` whatever
        the binning: a measure of confidence, not calibration. Compute the ECE
        of such a set on :func:`symmetrised` probabilities, as
        :func:`pairwise_calibration` does.

    Example: probs ``[0.9, 0.9, 0.2, 0.2]`` with labels ``[1, 0, 0, 0]``
    fill two bins of two: ``|0.5 - 0.9| * 2/4 + |0 - 0.2| * 2/4 = 0.3``.
    """
    return _ece_from_bins(calibration_bins(probs, labels, n_bins))


def symmetrised(probs: ArrayLike, labels: ArrayLike | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Both orientations of every pair: ``(p, y)`` and ``(1 - p, 1 - y)``.

    A Bradley-Terry reward model is antisymmetric: if it gives the first
    answer probability ``p`` of being preferred, it gives the second answer
    ``1 - p``. Which answer a dataset stores first is an accident of storage,
    and preference eval sets store the chosen one first, so every label is 1
    and :func:`expected_calibration_error` degenerates to ``1 - mean(p)``,
    which rewards overconfidence. A model right on 3 pairs in 4 that says
    ``p = 0.75`` when right and ``0.25`` when wrong is perfectly calibrated,
    yet scores ``1 - 0.625 = 0.375``; one that says ``0.99`` and ``0.01``
    instead is not, yet scores the lower ``1 - 0.745 = 0.255``. Symmetrised,
    they score 0 and 0.24, as they should. The calibration of a pairwise
    model is therefore measured on both orientations of every pair, which is
    the expected result of presenting each pair in a random order, and does
    not depend on the order in which the pairs were stored: **the ECE of a
    chosen-first eval set must be computed on its symmetrised set.**

    Args:
        probs: probability that the first answer of each pair is preferred.
        labels: the outcome of each pair in [0, 1]; ``None`` (the default)
            means every pair is stored chosen-first, i.e. all labels are 1.

    Returns:
        ``(probs2, labels2)`` of length ``2 n``: the ``n`` pairs as given,
        followed by the ``n`` pairs flipped, ``(1 - p, 1 - y)``.

    Example: ``symmetrised([0.8])`` is ``([0.8, 0.2], [1.0, 0.0])``; the same
    pair stored the other way round, ``symmetrised([0.2], [0])``, gives
    ``([0.2, 0.8], [0.0, 1.0])``: the same set of predictions.
    """
    p = _as_vector(probs, "probs")
    y = np.ones_like(p) if labels is None else _as_vector(labels, "labels")
    _check_probabilities(p, y)
    return np.concatenate([p, 1.0 - p]), np.concatenate([y, 1.0 - y])


def pairwise_calibration(r_chosen: ArrayLike, r_rejected: ArrayLike, n_bins: int = 10) -> PairwiseCalibration:
    """Calibration and accuracy of a reward model on chosen/rejected pairs.

    The model's probability that the chosen answer of pair ``i`` wins is the
    Bradley-Terry ``p_i = sigmoid(r_chosen[i] - r_rejected[i])`` (Bradley &
    Terry, 1952; Stiennon et al., 2020, eq. 1). The ECE and the bins are
    computed on the :func:`symmetrised` set ``{(p_i, 1), (1 - p_i, 0)}``, so
    the bin counts add up to ``2 n``; they are mirror images of each other
    (``bins[k]`` and ``bins[n_bins - 1 - k]`` hold the two orientations), up
    to probabilities lying exactly on a bin edge.

    Returns:
        ``{"ece", "bins", "accuracy", "mean_margin", "n"}``: ``ece`` and
        ``bins`` as in :func:`expected_calibration_error` and
        :func:`calibration_bins` on the symmetrised set; ``accuracy`` the
        fraction of pairs with ``r_chosen > r_rejected``, exact ties counting
        one half; ``mean_margin`` the mean of ``r_chosen - r_rejected``; ``n``
        the number of pairs (not doubled).

    Example: three pairs of margin ``ln 3`` (``p = 0.75``) and one of margin
    ``-ln 3`` (``p = 0.25``) symmetrise to four predictions of 0.75 of which
    three are right and four of 0.25 of which one is: ECE 0, accuracy 3/4.
    """
    chosen = _as_vector(r_chosen, "r_chosen")
    rejected = _as_vector(r_rejected, "r_rejected")
    _check_same_size(chosen, rejected, "r_chosen and r_rejected")
    if chosen.size == 0:
        raise ValueError("pairwise_calibration needs at least one pair of rewards.")

    margins = chosen - rejected
    probs, labels = symmetrised(_sigmoid(margins))
    bins = calibration_bins(probs, labels, n_bins)
    wins = (margins > 0).astype(np.float64) + 0.5 * (margins == 0).astype(np.float64)
    return {
        "ece": _ece_from_bins(bins),
        "bins": bins,
        "accuracy": float(wins.mean()),
        "mean_margin": float(margins.mean()),
        "n": int(margins.size),
    }


# --- length correlation -----------------------------------------------------------


def length_correlation(rewards: ArrayLike, lengths: ArrayLike) -> float:
    """Pearson correlation between rewards and response lengths.

    Singhal et al. (2023) found that RLHF gains largely come from longer
    outputs, because reward models learn to prefer length: a strong positive
    correlation between a reward model's scores and the length of what it
    scores is the first symptom of a length-hacked reward model, worth
    checking before any PPO run. Lengths may be characters, words or tokens;
    the correlation does not depend on the unit.

    Returns ``float('nan')`` when it is undefined: fewer than two values, or
    either input constant (zero variance).
    """
    r = _as_vector(rewards, "rewards")
    n = _as_vector(lengths, "lengths")
    _check_same_size(r, n, "rewards and lengths")
    # Test constancy exactly: the mean of equal floats can differ from them by
    # an ulp, which would turn a constant into spurious tiny deviations.
    if r.size < 2 or np.all(r == r[0]) or np.all(n == n[0]):
        return float("nan")
    dr = r - r.mean()
    dn = n - n.mean()
    denominator = math.sqrt(float(np.dot(dr, dr)) * float(np.dot(dn, dn)))
    if denominator == 0.0:
        return float("nan")
    return float(np.clip(np.dot(dr, dn) / denominator, -1.0, 1.0))


# --- reliability diagram ---------------------------------------------------------


def reliability_diagram(
    calibration: PairwiseCalibration | dict[str, Any],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw a reliability diagram (Guo et al., 2017, Fig. 1) to a PNG file.

    One bar per non-empty bin, of height its accuracy (the mean label) and
    annotated with its count, against the diagonal of perfect calibration; the
    gap between each bar and the bin's mean predicted probability is shaded.
    The ECE is in the title.

    Args:
        calibration: a dict with ``"ece"`` and ``"bins"`` as returned by
            :func:`pairwise_calibration` (or assembled from
            :func:`calibration_bins` and :func:`expected_calibration_error`).
        path: where to write the PNG; missing parent folders are created.
        title: a title to put before the ECE; defaults to "Reliability diagram".

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    The figure is drawn on a bare :class:`matplotlib.figure.Figure` with the
    Agg canvas, so no display is needed and pyplot's global state and backend
    are left alone. It is 5 x 5 inches at 100 dpi: 500 x 500 pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    missing = [key for key in ("ece", "bins") if key not in calibration]
    if missing:
        raise ValueError(
            f"reliability_diagram needs a calibration dict with 'ece' and 'bins' keys, as "
            f"pairwise_calibration returns, but {', '.join(map(repr, missing))} is missing."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    figure = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(
        [0, 1],
        [0, 1],
        linestyle="--",
        color="grey",
        linewidth=1,
        zorder=3,
        label="Perfect calibration",
    )

    labelled = False
    for b in calibration["bins"]:
        if not b["count"] or b["accuracy"] is None or b["mean_prob"] is None:
            continue
        lo, hi = float(b["lo"]), float(b["hi"])
        accuracy, mean_prob = float(b["accuracy"]), float(b["mean_prob"])
        width = hi - lo
        axes.bar(
            lo,
            accuracy,
            width=width,
            align="edge",
            color="tab:blue",
            edgecolor="black",
            linewidth=0.8,
            label=None if labelled else "Accuracy",
        )
        axes.bar(
            lo,
            mean_prob - accuracy,
            bottom=accuracy,
            width=width,
            align="edge",
            color="tab:red",
            alpha=0.3,
            edgecolor="tab:red",
            hatch="//",
            linewidth=0.5,
            label=None if labelled else "Gap to mean probability",
        )
        labelled = True
        axes.annotate(
            str(int(b["count"])),
            xy=(lo + width / 2, max(accuracy, mean_prob)),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )

    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.08)
    axes.set_xlabel("Predicted probability (first answer preferred)")
    axes.set_ylabel("Observed frequency (first answer preferred)")
    axes.set_title(f"{title or 'Reliability diagram'} (ECE = {float(calibration['ece']):.3f})")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


# --- confidence intervals ---------------------------------------------------------


def bootstrap_ci(
    values: ArrayLike,
    stat: Callable[[NDArray[np.float64]], float] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani, 1993, ch. 13).

    Draws ``n_boot`` resamples of ``values`` with replacement (along the first
    axis, so a 2-D array resamples whole rows: pass
    ``np.column_stack([rewards, lengths])`` and a ``stat`` of one array to
    bootstrap :func:`length_correlation`), evaluates ``stat`` on each, and
    returns the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the results.
    Deterministic for a given ``seed``. If ``stat`` returns NaN on some
    resample, the interval is NaN.

    Returns:
        ``(low, high)`` with ``low <= high``.
    """
    array = _as_float_array(values, "values")
    if array.ndim == 0:
        array = array.reshape(1)
    if array.shape[0] == 0:
        raise ValueError("bootstrap_ci needs at least one value to resample.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, but it is {n_boot!r}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, but it is {alpha!r}.")

    rng = np.random.default_rng(seed)
    n = array.shape[0]
    stats = np.empty(int(n_boot), dtype=np.float64)
    for i in range(int(n_boot)):
        stats[i] = float(stat(array[rng.integers(0, n, size=n)]))
    if np.any(np.isnan(stats)):
        return float("nan"), float("nan")
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson (1927) score interval for a proportion ``successes / n``.

    With ``p = successes / n``::

        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    Unlike the Wald interval ``p +- z sqrt(p (1 - p) / n)`` it stays inside
    [0, 1] and keeps a sensible width at ``p = 0`` or ``1`` and for small
    ``n``. ``successes`` may be fractional (an accuracy with ties counting one
    half); ``z = 1.96`` gives a two-sided 95% interval.

    Example: 62 of 100 gives ``centre = 0.639208 / 1.038416 = 0.6156`` and
    ``half = 1.96 * sqrt(0.002356 + 0.00009604) / 1.038416 = 0.0935``, so
    about ``(0.522, 0.709)``.
    """
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"wilson_interval needs a positive number of trials n, but n is {n!r}.")
    if not (math.isfinite(successes) and 0 <= successes <= n):
        raise ValueError(f"successes must lie between 0 and n = {n!r}, but it is {successes!r}.")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a positive number, but it is {z!r}.")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
