"""Reward sources for the online algorithms: one interface over reward models, ensembles, Python
functions, an LLM judge, and a weighted sum of any of them.

A stage's `reward` config is a list of sources; the reward of a sample is their weighted sum:

    reward:
      - {type: function, path: tether.rewards.arithmetic:exact_match}          # RLVR: a checker
      - {type: model, path: runs/reward/model, weight: 0.5}                     # a trained reward model
      - {type: model, path: runs/reward_ensemble, std_coef: 1.0}               # an ensemble: mean - 1 * std
      - {type: judge, path: default, judge_against: reference, weight: 2.0}    # an LLM judge

Every source maps (prompts, completions, metadata) to one float or None per sample, with
`metadata[i]` the meta of sample i's prompt row (its "meta" object and any extra keys):

* **model** -- a reward model folder (`tether reward train`): its normalised score, read from the
  decoded text with its own tokenizer (the responses to one prompt share one packed row). An
  ensemble folder gives mean - std_coef * std over its members (Coste et al. 2023).
* **function** -- `package.module:function` or `file.py:function` (rewards/functions.py); it may
  return None for a sample, which drops that sample from the update.
* **judge** -- an LLM judge (feedback/judge.py: the next-token probabilities of "A" and "B", both
  orders averaged). `judge_against: reference` scores P(completion better than the reference
  answer in `metadata[i][reference_key]`), in [0, 1]; `judge_against: group` scores each
  completion by its mean P(better) against every other completion to the same prompt in the batch
  (a round robin: n(n-1)/2 pairs for n completions, each pair judged once in both orders), in [0, 1];
  a completion alone with its prompt scores 0.5. A sample without a reference is dropped (None).

The weighted sum is None for a sample when any source returns None for it. `score_pairs` scores the two
responses of each of N pairs (online DPO): a group judge gives each pair its own verdict (P(first better) and
its complement: the round robin of a group of two, whatever other pairs share the prompt); every other source
scores the 2N samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tether.config import RewardSourceSettings
from tether.data.records import Prompt, prompt_key, prompt_text
from tether.feedback.constitution import load_constitution
from tether.feedback.judge import judge_pairs
from tether.models.loading import load_frozen_lm, load_tokenizer, resolve_model
from tether.models.reward_model import batch_rewards, conservative_reward, load_reward_model, score_texts
from tether.rewards.functions import call_reward_function, load_reward_function

ScoreFn = Callable[[list[Prompt], list[str], list[dict]], list[float | None]]

__all__ = [
    "RewardSource",
    "load_reward_sources",
    "load_source",
    "source_names",
    "score_samples",
    "score_pairs",
    "model_source",
    "function_source",
    "judge_source",
    "describe",
]


@dataclass
class RewardSource:
    """A named, weighted reward source: `score(prompts, completions, metadata)` -> one float or None per sample."""

    name: str
    weight: float
    score: ScoreFn


def describe(settings: RewardSourceSettings) -> str:
    """A short name for logs and metrics, e.g. 'function:exact_match' or 'model:reward'."""
    tail = settings.path.rstrip("/").rsplit(":" if settings.type == "function" else "/", 1)[-1]
    return f"{settings.type}:{tail}"


def source_names(settings: list[RewardSourceSettings]) -> list[str]:
    """Each source's name in metrics: `describe`, numbered when two sources would share one."""
    names: list[str] = []
    for i, s in enumerate(settings):
        name = describe(s)
        names.append(f"{name}#{i}" if name in names else name)
    return names


def load_source(settings: RewardSourceSettings, precision: str = "bf16", offload: bool = False) -> ScoreFn:
    """One source's scoring function (a model or judge is loaded here; `offload`: its weights held in CPU memory)."""
    return {"model": model_source, "function": function_source, "judge": judge_source}[settings.type](settings, precision, offload)


def load_reward_sources(settings: list[RewardSourceSettings], precision: str = "bf16", offload: bool = False) -> list[RewardSource]:
    """Load every source of a `reward` list (models and judges are loaded here, once)."""
    return [RewardSource(name, s.weight, load_source(s, precision, offload)) for name, s in zip(source_names(settings), settings)]


def score_samples(
    sources: list[RewardSource], prompts: list[Prompt], completions: list[str], metadata: list[dict]
) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """The weighted sum of every source's scores, and each source's own scores (by name).

    A sample is None (dropped) when any source returned None for it.
    """
    parts = {s.name: s.score(prompts, completions, metadata) for s in sources}
    return weighted_sum(sources, parts, len(completions)), parts


def score_pairs(
    sources: list[RewardSource], prompts: list[Prompt], firsts: list[str], seconds: list[str], metadata: list[dict]
) -> tuple[list[tuple[float, float] | None], dict[str, list[float | None]]]:
    """(score of first, score of second) of each of N pairs, None when either is None; and each source's own 2N scores
    (firsts, then seconds). A source that compares a pair itself (a group judge's `pairs`) judges each pair once; every
    other source scores the 2N samples (prompts + prompts, firsts + seconds) in one call."""
    n = len(prompts)
    parts = {}
    for s in sources:
        pairwise = getattr(s.score, "pairs", None)
        if pairwise is not None:
            scored = pairwise(prompts, firsts, seconds)
            parts[s.name] = [a for a, _ in scored] + [b for _, b in scored]
        else:
            parts[s.name] = s.score(prompts + prompts, firsts + seconds, metadata + metadata)
    total = weighted_sum(sources, parts, 2 * n)
    return [None if a is None or b is None else (a, b) for a, b in zip(total[:n], total[n:])], parts


def weighted_sum(sources: list[RewardSource], parts: dict[str, list[float | None]], n: int) -> list[float | None]:
    """Sample i's sum over sources of weight * score, None when any source's score of it is None."""
    total: list[float | None] = []
    for i in range(n):
        values = [parts[s.name][i] for s in sources]
        total.append(None if any(v is None for v in values) else sum(s.weight * v for s, v in zip(sources, values)))
    return total


# --------------------------------------------------------------------------- the kinds


def function_source(settings: RewardSourceSettings, precision: str = "bf16", offload: bool = False) -> ScoreFn:
    """A Python function `(prompts as text, completions, metadata) -> floats or None`."""
    fn = load_reward_function(settings.path)
    return lambda prompts, completions, metadata: call_reward_function(fn, [prompt_text(p) for p in prompts], completions, metadata)


def model_source(settings: RewardSourceSettings, precision: str = "bf16", offload: bool = False) -> ScoreFn:
    """A reward model or ensemble: normalised scores (ensembles: mean - std_coef * std over members)."""
    rm = load_reward_model(settings.path, offload)
    pack: dict[int, bool] = {}  # per member: does packed scoring give the separate-row scores? (checked on first use)

    def packs(k: int, member, prompts, completions) -> bool:
        if k not in pack:
            n = min(4, len(prompts))
            with torch.no_grad():
                args = (
                    member.model,
                    member.tokenizer,
                    prompts[:n],
                    completions[:n],
                    settings.max_prompt_tokens,
                    settings.max_response_tokens,
                )
                pack[k] = bool(torch.allclose(batch_rewards(*args, pack=True), batch_rewards(*args, pack=False), atol=1e-3, rtol=1e-3))
        return pack[k]

    def score(prompts: list[Prompt], completions: list[str], metadata: list[dict]) -> list[float | None]:
        members = torch.stack(
            [
                m.normalization.apply(
                    score_texts(
                        m.model,
                        m.tokenizer,
                        prompts,
                        completions,
                        settings.max_prompt_tokens,
                        settings.max_response_tokens,
                        settings.batch_size,
                        precision,
                        pack=packs(k, m, prompts, completions),
                    )
                )
                for k, m in enumerate(rm.members)
            ]
        )  # (N members, B)
        return conservative_reward(members, settings.std_coef).tolist()

    return score


def judge_source(settings: RewardSourceSettings, precision: str = "bf16", offload: bool = False) -> ScoreFn:
    """An LLM judge: P(better than the reference answer), or the mean P(better) against the rest of the group; a group
    judge also scores pairs directly (`pairs`: (P(first better), P(second better)) of each pair, both orders asked)."""
    rubric = load_constitution(settings.constitution).rubric()
    path = resolve_model(settings.path, "reward[].path")
    tokenizer, model = load_tokenizer(path), load_frozen_lm(path, offload)
    kw = dict(
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        max_response_tokens=settings.max_response_tokens,
        precision=precision,
    )

    def against_reference(prompts, completions, metadata) -> list[float | None]:
        rows = [i for i, m in enumerate(metadata) if isinstance(m.get(settings.reference_key), str)]
        verdicts = judge_pairs(
            model,
            tokenizer,
            [prompts[i] for i in rows],
            [completions[i] for i in rows],
            [metadata[i][settings.reference_key] for i in rows],
            rubric,
            **kw,
        )
        out: list[float | None] = [None] * len(completions)
        for i, v in zip(rows, verdicts):
            out[i] = v.p_first
        return out

    def against_group(prompts, completions, metadata) -> list[float | None]:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(prompt_key(p), []).append(i)
        pairs = [(i, j) for members in groups.values() for i, j in itertools.combinations(members, 2)]
        verdicts = judge_pairs(
            model,
            tokenizer,
            [prompts[i] for i, _ in pairs],
            [completions[i] for i, _ in pairs],
            [completions[j] for _, j in pairs],
            rubric,
            **kw,
        )
        wins, games = [0.0] * len(completions), [0] * len(completions)
        for (i, j), v in zip(pairs, verdicts):
            wins[i] += v.p_first
            wins[j] += 1.0 - v.p_first
            games[i] += 1
            games[j] += 1
        return [w / g if g else 0.5 for w, g in zip(wins, games)]

    def pairs(prompts, firsts, seconds) -> list[tuple[float, float]]:
        return [(v.p_first, 1.0 - v.p_first) for v in judge_pairs(model, tokenizer, prompts, firsts, seconds, rubric, **kw)]

    against_group.pairs = pairs
    return against_reference if settings.judge_against == "reference" else against_group
