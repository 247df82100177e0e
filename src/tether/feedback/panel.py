"""A panel of simulated annotators that label the store's tasks as people would, through the same API.

Each member is a :class:`tether.feedback.simulated.SimulatedAnnotator`: a gold score turned into
noisy Bradley-Terry choices. Members differ in how noisy they are (``target_agreement`` with
their gold ordering), may each have their own taste (``gold_spread``: their gold weights are
the shared :data:`tether.feedback.gold.GOLD_WEIGHTS`, each multiplied by ``exp(N(0, spread^2))``),
and may favour the left answer (``left_bias``: that share of the time they pick the left one
without looking), so agreement statistics, position bias, golden-set checks and majority
voting can all be exercised without people.

Members are registered as annotators of kind "simulated" and take turns: each asks
``next_task_for``, sees the pair in the order it was given, and answers "left" or "right"
with ``record_judgement``, exactly as a person in the web app would.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.data.records import prompt_text
from tether.feedback.gold import GOLD_WEIGHTS, GoldScorer, gold_features, gold_score
from tether.feedback.simulated import SimulatedAnnotator, UnreachableAgreementError, calibrate_temperature
from tether.feedback.store import Store, StoreError


@dataclass(frozen=True)
class PanelMember:
    """One simulated annotator of the panel."""

    name: str
    """Annotator name in the store."""
    target_agreement: float = 0.75
    """Expected agreement with the member's own gold ordering on the store's tasks (0.5 to 1)."""
    gold_spread: float = 0.0
    """0: the shared gold scorer; > 0: the member's own gold weights, log-normally spread by this much."""
    left_bias: float = 0.0
    """Share of answers where the member picks the left answer without looking (position bias)."""
    seed: int = 0
    """Seeds the member's choices and its own gold weights."""


def default_panel(agreements: Sequence[float] = (0.9, 0.75, 0.6), gold_spread: float = 0.0, seed: int = 0) -> list[PanelMember]:
    """Members ``simulated-1``, ``simulated-2``, ... with these agreements (one member each)."""
    return [PanelMember(f"simulated-{i + 1}", a, gold_spread, 0.0, seed + i) for i, a in enumerate(agreements)]


def member_scorer(member: PanelMember) -> GoldScorer:
    """The member's gold scorer: the shared one, or one with the member's own weights."""
    if member.gold_spread <= 0:
        return gold_score
    rng = random.Random(member.seed)
    weights = {k: w * math.exp(rng.gauss(0.0, member.gold_spread)) for k, w in GOLD_WEIGHTS.items()}

    def score(prompt: str, response: str) -> float:
        features = gold_features(prompt, response)
        return float(sum(weights[k] * features[k] for k in weights))

    return score


def _temperature(scorer: GoldScorer, store: Store, target: float) -> float:
    """The Bradley-Terry temperature that gives ``target`` agreement on the store's tasks."""
    margins = [scorer(prompt_text(t.prompt), t.response_a) - scorer(prompt_text(t.prompt), t.response_b) for t in store.tasks()]
    if not margins:
        return 1.0
    try:
        return calibrate_temperature(margins, target)
    except UnreachableAgreementError as e:
        return e.min_temperature


def run_panel(store: Store, members: Sequence[PanelMember], limit: int | None = None) -> dict[str, Any]:
    """Let the members label the store's tasks in turns until none is left for any of them.

    ``limit`` caps the judgements per member. Returns, per member, the number of judgements
    and the temperature calibrated for its target agreement.
    """
    if len({m.name for m in members}) != len(members):
        raise StoreError("the panel's members need distinct names")
    annotators, labellers, coins, counts = {}, {}, {}, {}
    for m in members:
        if not 0 <= m.left_bias <= 1:
            raise StoreError(f"panel member {m.name}: left_bias must be between 0 and 1, got {m.left_bias}")
        scorer = member_scorer(m)
        annotators[m.name] = store.get_or_add_annotator(m.name, "simulated")
        labellers[m.name] = SimulatedAnnotator(
            temperature=_temperature(scorer, store, m.target_agreement), seed=m.seed, name=m.name, scorer=scorer
        )
        coins[m.name] = random.Random(m.seed + 7919)
        counts[m.name] = 0
    active = list(members)
    while active:
        for m in list(active):
            task = store.next_task_for(annotators[m.name]) if limit is None or counts[m.name] < limit else None
            if task is None:
                active.remove(m)
                continue
            if coins[m.name].random() < m.left_bias:
                choice, strength = "left", None
            else:
                j = labellers[m.name].label([prompt_text(task.prompt)], [task.left], [task.right])[0]
                choice, strength = ("left", j.p_first) if j.choice == 0 else ("right", 1 - j.p_first)
            store.record_judgement(annotators[m.name], task.id, choice, strength=strength)
            counts[m.name] += 1
    return {m.name: {"judgements": counts[m.name], "temperature": labellers[m.name].temperature} for m in members}
