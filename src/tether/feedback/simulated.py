"""A simulated annotator: noisy pairwise preferences drawn from the gold scorer.

Real preference labels are noisy: labellers agree with each other, or with a
careful researcher, only about 63-77% of the time (Stiennon et al., 2020;
Ouyang et al., 2022). To reproduce that in tether's human-free demo, the
annotator scores both responses of a pair with the gold scorer
(:mod:`tether.feedback.gold`) and samples its choice from the Bradley-Terry
model (Bradley & Terry, 1952)::

    P(first preferred) = sigmoid((g_first - g_second) / T)

The temperature ``T`` sets the noise: as ``T -> 0`` the annotator always
follows the gold ordering, as ``T -> inf`` it flips a fair coin. Because the
right ``T`` depends on how spread out the gold scores are, the annotator can
instead be given a *target agreement* (default 0.75) and then picks, on each
batch, the ``T`` whose expected agreement with the gold ordering equals it
(:func:`calibrate_temperature`).

Expected agreement of one pair with gold margin ``d`` is
``sigmoid(|d| / T)``: the probability that the sampled choice matches the gold
ordering, which is 0.5 for a tie (``d = 0``). :func:`expected_agreement`
averages that over a batch, ties included. :func:`gold_agreement` measures the
*realised* agreement and leaves ties out (a tie has no gold ordering to agree
with), so with a fraction ``f`` of tied pairs it estimates
``(A - f / 2) / (1 - f)`` rather than the calibrated ``A``; the two coincide
when there are no ties.

References
----------
Bradley, R. A. & Terry, M. E. (1952). Rank analysis of incomplete block
designs: I. The method of paired comparisons. *Biometrika* 39(3/4).
Stiennon, N. et al. (2020). Learning to summarize from human feedback.
*NeurIPS*.
Ouyang, L. et al. (2022). Training language models to follow instructions
with human feedback. *NeurIPS*.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from tether.feedback.gold import GoldScorer, gold_score

__all__ = [
    "Judgement",
    "SimulatedAnnotator",
    "UnreachableAgreementError",
    "calibrate_temperature",
    "expected_agreement",
    "gold_agreement",
]

_BISECTION_STEPS: Final[int] = 200
_BRACKET_WIDTH: Final[float] = 1e3  # initial bracket: scale / 1e3 .. scale * 1e3
_MAX_EXPANSIONS: Final[int] = 60  # each expansion widens a side by 1e3


class UnreachableAgreementError(ValueError):
    """The target agreement is above what any temperature can reach on these margins.

    Raised by :func:`calibrate_temperature` when too many pairs are gold ties:
    a tie is agreed with half the time whatever ``T`` is, so with a fraction
    ``f`` of ties no temperature gets above ``1 - f / 2``.
    """

    def __init__(self, message: str, min_temperature: float) -> None:
        super().__init__(message)
        self.min_temperature = min_temperature
        """A temperature whose expected agreement is as close to the target as
        the margins allow (the annotator falls back to it)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written with tanh so it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _as_margins(gold_margins: ArrayLike) -> np.ndarray:
    margins = np.asarray(gold_margins, dtype=np.float64).reshape(-1)
    if margins.size == 0:
        raise ValueError("At least one gold margin is needed to compute agreement.")
    if not np.all(np.isfinite(margins)):
        raise ValueError("Gold margins must all be finite numbers, but some are NaN or infinite.")
    return margins


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"The annotator temperature must be a finite positive number, but it is {temperature!r}.")


def expected_agreement(gold_margins: ArrayLike, temperature: float) -> float:
    """Expected fraction of Bradley-Terry choices that follow the gold ordering.

    For each pair with gold margin ``d = g_first - g_second`` the sampled
    choice matches the gold ordering with probability ``sigmoid(|d| / T)``;
    ties (``d = 0``) count 0.5. Returns the mean over pairs, in [0.5, 1].
    """
    margins = _as_margins(gold_margins)
    _check_temperature(temperature)
    return float(np.mean(_sigmoid(np.abs(margins) / temperature)))


def calibrate_temperature(gold_margins: ArrayLike, target_agreement: float = 0.75) -> float:
    """The temperature ``T`` at which :func:`expected_agreement` equals the target.

    Expected agreement falls monotonically from ``1 - f / 2`` (``T -> 0``, with
    ``f`` the fraction of tied margins) to 0.5 (``T -> inf``), so ``T`` is found
    by bisection on ``log T`` after bracketing it around the typical margin
    size. If every margin is 0, every temperature gives 0.5 and 1.0 is
    returned.

    Raises:
        ValueError: ``target_agreement`` is not strictly between 0.5 and 1, or
            the margins are empty or not finite.
        UnreachableAgreementError: too many ties for the target to be reached
            (a subclass of ``ValueError``).
    """
    if not 0.5 < target_agreement < 1.0:
        raise ValueError(
            f"The target agreement must lie strictly between 0.5 (coin flips) and 1 (no noise), but it is {target_agreement!r}."
        )
    margins = np.abs(_as_margins(gold_margins))
    nonzero = margins[margins > 0]
    if nonzero.size == 0:
        return 1.0

    def agreement(log_t: float) -> float:
        return float(np.mean(_sigmoid(margins / math.exp(log_t))))

    scale = math.log(float(np.median(nonzero)))
    width = math.log(_BRACKET_WIDTH)
    lo, hi = scale - width, scale + width  # agreement(lo) >= target >= agreement(hi)

    ceiling = 1.0 - 0.5 * (margins.size - nonzero.size) / margins.size
    if target_agreement >= ceiling:
        min_t = math.exp(math.log(float(nonzero.min())) - width)
        raise UnreachableAgreementError(
            f"No temperature reaches an agreement of {target_agreement:.3f}: "
            f"{margins.size - nonzero.size} of the {margins.size} pairs are gold ties, "
            f"which are agreed with only half the time, so the most any temperature "
            f"can reach is {ceiling:.3f}.",
            min_temperature=min_t,
        )
    for _ in range(_MAX_EXPANSIONS):
        if agreement(lo) >= target_agreement:
            break
        lo -= width
    for _ in range(_MAX_EXPANSIONS):
        if agreement(hi) <= target_agreement:
            break
        hi += width

    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if agreement(mid) > target_agreement:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return math.exp(0.5 * (lo + hi))


@dataclass(frozen=True)
class Judgement:
    """One simulated pairwise preference.

    Attributes:
        choice: 0 if the first response was preferred, 1 if the second was.
        p_first: The probability with which the first was to be preferred,
            ``sigmoid((gold_first - gold_second) / T)``.
        gold_first: Gold score of the first response.
        gold_second: Gold score of the second response.
        annotator: Who made the choice, e.g. ``"simulated-bt(T=0.31)"``.
    """

    choice: int
    p_first: float
    gold_first: float
    gold_second: float
    annotator: str


@dataclass
class SimulatedAnnotator:
    """Labels response pairs like a noisy person whose taste is the gold scorer.

    Attributes:
        temperature: Bradley-Terry temperature ``T``. ``None`` (the default)
            calibrates ``T`` afresh on each batch passed to :meth:`label` so that
            the expected agreement with the gold ordering is
            ``target_agreement``.
        target_agreement: Agreement to calibrate to when ``temperature`` is
            ``None``; strictly between 0.5 and 1.
        seed: Seed of the annotator's random generator
            (``numpy.random.default_rng(seed)``). The generator is created once,
            so successive :meth:`label` calls draw fresh noise, and two
            annotators with the same settings give identical labels for the
            same sequence of calls.
        name: Prefix of the ``annotator`` string recorded in each judgement.
        scorer: The gold scorer, ``(prompt, response) -> float``; defaults to
            :func:`tether.feedback.gold.gold_score`.
    """

    temperature: float | None = None
    target_agreement: float = 0.75
    seed: int = 0
    name: str = "simulated-bt"
    scorer: GoldScorer = gold_score
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.temperature is not None:
            _check_temperature(self.temperature)
        if not 0.5 < self.target_agreement < 1.0:
            raise ValueError(f"The target agreement must lie strictly between 0.5 and 1, but it is {self.target_agreement!r}.")
        self._rng = np.random.default_rng(self.seed)

    def _temperature_for(self, margins: np.ndarray) -> float:
        if self.temperature is not None:
            return self.temperature
        try:
            return calibrate_temperature(margins, self.target_agreement)
        except UnreachableAgreementError as err:
            warnings.warn(
                f"{err} Labelling this batch at T={err.min_temperature:.3g}, "
                f"which follows the gold ordering on almost every non-tied pair.",
                RuntimeWarning,
                stacklevel=3,
            )
            return err.min_temperature

    def label(
        self,
        prompts: Sequence[str],
        firsts: Sequence[str],
        seconds: Sequence[str],
    ) -> list[Judgement]:
        """Choose between ``firsts[i]`` and ``seconds[i]`` as answers to ``prompts[i]``.

        Both responses are gold-scored, and the first is preferred with
        probability ``sigmoid((g_first - g_second) / T)`` (Bradley & Terry,
        1952).
        """
        if not len(prompts) == len(firsts) == len(seconds):
            raise ValueError(
                f"label needs one first and one second response per prompt, but got "
                f"{len(prompts)} prompts, {len(firsts)} first responses and "
                f"{len(seconds)} second responses."
            )
        if len(prompts) == 0:
            return []
        gold_first = np.array([self.scorer(p, r) for p, r in zip(prompts, firsts)], dtype=float)
        gold_second = np.array([self.scorer(p, r) for p, r in zip(prompts, seconds)], dtype=float)
        margins = gold_first - gold_second
        if not np.all(np.isfinite(margins)):
            raise ValueError("The gold scorer returned a NaN or infinite score for some response.")
        temperature = self._temperature_for(margins)
        p_first = _sigmoid(margins / temperature)
        choices = np.where(self._rng.random(margins.size) < p_first, 0, 1)
        who = f"{self.name}(T={temperature:.3g})"
        return [
            Judgement(
                choice=int(c),
                p_first=float(p),
                gold_first=float(g1),
                gold_second=float(g2),
                annotator=who,
            )
            for c, p, g1, g2 in zip(choices, p_first, gold_first, gold_second)
        ]


def gold_agreement(judgements: Sequence[Judgement]) -> float:
    """Fraction of judgements whose choice follows the gold ordering, ties excluded.

    Raises:
        ValueError: No judgement has distinct gold scores, so there is nothing
            to agree or disagree with.
    """
    decided = [j for j in judgements if j.gold_first != j.gold_second]
    if not decided:
        raise ValueError("Gold agreement is undefined: none of the judgements has two responses with different gold scores.")
    agree = sum((j.choice == 0) == (j.gold_first > j.gold_second) for j in decided)
    return agree / len(decided)
