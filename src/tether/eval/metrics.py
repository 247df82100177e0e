"""Evaluation metrics: win rate with a confidence interval, diversity and length.

* :func:`win_rate` compares a policy with a baseline prompt by prompt under some
  score (in tether's demo, the gold scorer of :mod:`tether.feedback.gold`), as in
  the pairwise evaluations of Stiennon et al. (2020) and Ouyang et al. (2022).
* :func:`distinct_n` is the distinct-n diversity measure of Li et al. (2016):
  RLHF policies often collapse onto a few phrasings, which this exposes.
* :func:`length_stats` tracks length, the first thing a policy learns to
  exploit in a reward model (Singhal et al., 2023).

References
----------
Li, J., Galley, M., Brockett, C., Gao, J. & Dolan, B. (2016). A
diversity-promoting objective function for neural conversation models.
*NAACL*.
Stiennon, N. et al. (2020). Learning to summarize from human feedback.
*NeurIPS*.
Ouyang, L. et al. (2022). Training language models to follow instructions with
human feedback. *NeurIPS*.
Singhal, P., Goyal, T., Xu, J. & Durrett, G. (2023). A long way to go:
investigating length correlations in RLHF. arXiv:2310.03716.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np

__all__ = ["distinct_n", "length_stats", "mean_and_se", "win_rate"]

Z_95: Final[float] = 1.959963984540054
"""The 0.975 quantile of the standard normal, for two-sided 95% intervals."""


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / total n-grams over all texts.

    Texts are split on whitespace and lowercased; n-grams never span two texts,
    and uniqueness is counted over the whole collection. Returns 0.0 when the
    texts contain no n-gram at all.

    Example: ``["the cat sat", "the cat ran"]`` has the bigrams (the cat),
    (cat sat), (the cat), (cat ran), three of them distinct: distinct-2 = 3/4.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, but got n={n}.")
    total = 0
    unique: set[tuple[str, ...]] = set()
    for text in texts:
        tokens = text.lower().split()
        for i in range(len(tokens) - n + 1):
            unique.add(tuple(tokens[i : i + n]))
            total += 1
    return len(unique) / total if total else 0.0


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error, ``sample std (ddof=1) / sqrt(n)``.

    The standard error is 0.0 when there are fewer than two values.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("The mean of no values is undefined; pass at least one value.")
    mean = float(array.mean())
    if array.size < 2:
        return mean, 0.0
    return mean, float(array.std(ddof=1) / math.sqrt(array.size))


def win_rate(
    scores_policy: Sequence[float],
    scores_baseline: Sequence[float],
    tie_tol: float = 1e-9,
) -> dict[str, float]:
    """Paired win rate of a policy over a baseline, with a 95% confidence interval.

    ``scores_policy[i]`` and ``scores_baseline[i]`` score the two systems'
    answers to the same prompt ``i``. Each prompt is an outcome of 1 (win:
    policy higher by more than ``tie_tol``), 0.5 (tie: within ``tie_tol``) or
    0 (loss), and ``win_rate = (wins + 0.5 * ties) / n`` is their mean.

    The interval is the normal approximation on those per-prompt outcomes,
    ``win_rate +- 1.96 * s / sqrt(n)`` with ``s`` their sample standard
    deviation (ddof=1), clipped to [0, 1]. It is a Wald interval: fine for the
    hundreds of prompts of an evaluation, too narrow for a handful, and of
    zero width when every outcome is equal or ``n = 1``.

    Returns:
        ``{"win_rate", "wins", "ties", "losses", "n", "ci_low", "ci_high"}``,
        with the counts as ints.

    Example: policy ``[2, 1, 1]`` against baseline ``[1, 1, 2]`` wins, ties and
    loses once: win rate (1 + 0.5) / 3 = 0.5.
    """
    policy = np.asarray(scores_policy, dtype=np.float64).reshape(-1)
    baseline = np.asarray(scores_baseline, dtype=np.float64).reshape(-1)
    if policy.size != baseline.size:
        raise ValueError(
            f"win_rate compares scores paired by prompt, but got {policy.size} policy "
            f"scores and {baseline.size} baseline scores."
        )
    if policy.size == 0:
        raise ValueError("win_rate needs at least one pair of scores.")
    if not (np.all(np.isfinite(policy)) and np.all(np.isfinite(baseline))):
        raise ValueError("win_rate needs finite scores, but some are NaN or infinite.")
    if not tie_tol >= 0:
        raise ValueError(f"tie_tol must be zero or positive, but it is {tie_tol!r}.")

    diff = policy - baseline
    tie = np.abs(diff) <= tie_tol
    win = (diff > 0) & ~tie
    loss = (diff < 0) & ~tie
    outcomes = win.astype(np.float64) + 0.5 * tie.astype(np.float64)
    rate, se = mean_and_se(outcomes)
    return {
        "win_rate": rate,
        "wins": int(win.sum()),
        "ties": int(tie.sum()),
        "losses": int(loss.sum()),
        "n": int(policy.size),
        "ci_low": max(0.0, rate - Z_95 * se),
        "ci_high": min(1.0, rate + Z_95 * se),
    }


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Mean, median and maximum length in whitespace-separated words.

    Returns:
        ``{"mean_words", "median_words", "max_words"}`` (``max_words`` an int).
    """
    if len(texts) == 0:
        raise ValueError("length_stats needs at least one text.")
    lengths = np.array([len(text.split()) for text in texts], dtype=np.int64)
    return {
        "mean_words": float(lengths.mean()),
        "median_words": float(np.median(lengths)),
        "max_words": int(lengths.max()),
    }
