"""Constitutional AI: a file of principles, and critique-and-revise with them.

A constitution is a YAML list of principles (Bai et al. 2022, "Constitutional AI:
Harmlessness from AI Feedback", sec. 3 and Appendix C). Each principle holds

* ``name``: a short unique name (recorded in every pair it produced);
* ``critique_request``: asks the model to criticise its own last answer;
* ``revision_request``: asks it to rewrite that answer in the light of the critique;
* ``rubric`` (optional): one sentence for the pairwise judge (`tether.feedback.judge`);
  without it the judge reads the critique request.

The shipped one is ``configs/constitution/default.yaml`` (``constitution=default``).

Critique-and-revise (Bai et al. 2022, sec. 3.1, the SL-CAI stage), per prompt::

    response  ~ model(prompt)
    principle ~ uniform(constitution)
    critique  ~ model(prompt, response, principle.critique_request)
    revision  ~ model(prompt, response, critique_request, critique, principle.revision_request)

written as one chat: the prompt's messages, the response as the assistant's turn, the
critique request as the user's, and so on. With ``rounds > 1`` the revision is critiqued
and revised again with a newly sampled principle (the paper's sequential revisions).
``(response, final revision)`` becomes a ``(rejected, chosen)`` preference pair, so the
reward stage learns the direction "towards the constitution".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tether.config import ConfigError, GenerationSettings, parse_yaml, resolve_path
from tether.data.records import PreferencePair, Prompt
from tether.data.templates import as_messages
from tether.rollout.sampling import sample_responses

__all__ = ["Principle", "Constitution", "load_constitution", "shipped_constitution", "Revision", "critique_and_revise", "revision_pairs"]

_REQUIRED = ("name", "critique_request", "revision_request")
_KEYS = (*_REQUIRED, "rubric")
_SHIPPED = Path(__file__).resolve().parents[1] / "configs" / "constitution"


@dataclass(frozen=True)
class Principle:
    """One principle of a constitution (see the module docstring)."""

    name: str
    critique_request: str
    revision_request: str
    rubric: str | None = None

    @property
    def rubric_text(self) -> str:
        """What the judge reads: the rubric sentence, else the critique request."""
        return self.rubric or self.critique_request


@dataclass(frozen=True)
class Constitution:
    """A named, ordered set of principles loaded from `source`."""

    name: str
    source: str
    principles: tuple[Principle, ...]

    def rubric(self) -> list[str]:
        """One criterion per principle, in file order: the judge's rubric."""
        return [p.rubric_text for p in self.principles]


def shipped_constitution(name: str = "default") -> Path:
    """Path of a constitution shipped in `tether/configs/constitution/` (e.g. 'default')."""
    return _SHIPPED / f"{name}.yaml"


def load_constitution(path_or_name: str | Path = "default") -> Constitution:
    """Read a constitution file; 'default' (or any shipped name) is the shipped one.

    Raises:
        ConfigError: naming the file, the line, the principle and the field, with what
            was expected, e.g. ``my.yaml:12: principle 3 ('honest'), field 'revision_request':
            expected a non-empty string, got 3``.
    """
    text_name = str(path_or_name)
    if "/" not in text_name and not text_name.endswith((".yaml", ".yml")) and shipped_constitution(text_name).exists():
        path = shipped_constitution(text_name)
    else:
        path = Path(resolve_path(text_name))
    shipped = ", ".join(sorted(p.stem for p in _SHIPPED.glob("*.yaml")))
    if not path.is_file():
        raise ConfigError(f"constitution {text_name!r}: no such file (expected a YAML file of principles, or a shipped name: {shipped})")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"constitution {path}: cannot read it: {e.strerror}") from None
    values = parse_yaml(text, f"constitution {path}")  # a key given twice is an error naming the line
    root = yaml.compose(text)
    shape = "a YAML list of principles, each a mapping with keys name, critique_request, revision_request (and optionally rubric)"
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}: expected {shape}, got {_describe(values)}")
    principles, seen = [], {}
    for i, item in enumerate(values):
        node = root.value[i]
        line = node.start_mark.line + 1
        label = f"principle {i + 1}" + (f" ({item['name']!r})" if isinstance(item, dict) and isinstance(item.get("name"), str) else "")
        if not isinstance(item, dict):
            raise ConfigError(f"{path}:{line}: {label}: expected a mapping with keys {', '.join(_KEYS)}, got {_describe(item)}")
        lines = {k.value: v.start_mark.line + 1 for k, v in node.value if hasattr(k, "value")}
        for key in item:
            if key not in _KEYS:
                raise ConfigError(f"{path}:{lines.get(key, line)}: {label}: unknown field {key!r}; valid fields: {', '.join(_KEYS)}")
        for key in _KEYS:
            value = item.get(key)
            if key == "rubric" and value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                got = "nothing (the field is missing)" if key not in item else _describe(value)
                raise ConfigError(f"{path}:{lines.get(key, line)}: {label}, field {key!r}: expected a non-empty string, got {got}")
        if item["name"] in seen:
            raise ConfigError(
                f"{path}:{line}: {label}, field 'name': expected a unique name, got one already used by principle {seen[item['name']]}"
            )
        seen[item["name"]] = i + 1
        principles.append(Principle(*(item[k].strip() if item.get(k) else None for k in _KEYS)))
    return Constitution(name=path.stem, source=str(path), principles=tuple(principles))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else repr(value if len(value) < 50 else value[:47] + "...")
    if isinstance(value, dict):
        return f"a mapping with keys {', '.join(map(str, value))}"
    if isinstance(value, list):
        return f"a list of {len(value)} items" if value else "an empty list"
    return repr(value)


# --------------------------------------------------------------------------- critique and revise


@dataclass
class Revision:
    """One prompt's way through critique-and-revise.

    Attributes:
        original: the model's first response.
        revision: the response after the last round.
        steps: one dict per round: principle (name), critique, revision.
    """

    original: str
    revision: str
    steps: list[dict[str, str]]


def critique_and_revise(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    constitution: Constitution,
    settings: GenerationSettings,
    seed: int = 0,
    precision: str = "bf16",
    rounds: int = 1,
    progress=None,
) -> list[Revision]:
    """Answer, critique and revise every prompt (Bai et al. 2022, sec. 3.1), each step one batched generation.

    One principle is sampled per prompt and round (uniformly, seeded by `seed`). Every
    generation goes through `tether.rollout.generate.sample_responses` with `settings`.

    Returns:
        One `Revision` per prompt, in order.
    """
    rng = random.Random(seed)

    def generate(chats, k):
        return [s["response"] for s in sample_responses(model, tokenizer, chats, settings, seed * 7 + k, precision, progress)]

    # 1. the model answers
    originals = generate(list(prompts), 0)
    current, steps = list(originals), [[] for _ in prompts]
    for r in range(rounds):
        principles = [rng.choice(constitution.principles) for _ in prompts]
        # 2. it critiques its answer against a sampled principle (the principle's critique request)
        asked = [
            as_messages(p) + [{"role": "assistant", "content": c}, {"role": "user", "content": pr.critique_request}]
            for p, c, pr in zip(prompts, current, principles)
        ]
        critiques = generate(asked, 2 * r + 1)
        # 3. and rewrites it (the revision request, after its own critique)
        asked = [
            chat + [{"role": "assistant", "content": crit}, {"role": "user", "content": pr.revision_request}]
            for chat, crit, pr in zip(asked, critiques, principles)
        ]
        current = generate(asked, 2 * r + 2)
        for i, (pr, crit, rev) in enumerate(zip(principles, critiques, current)):
            steps[i].append({"principle": pr.name, "critique": crit, "revision": rev})
    return [Revision(o, c, s) for o, c, s in zip(originals, current, steps)]


def revision_pairs(
    prompts: Sequence[Prompt], revisions: Sequence[Revision], meta: dict[str, Any]
) -> tuple[list[PreferencePair], dict[str, int]]:
    """(original, revision) as (rejected, chosen) pairs, skipping the unusable ones.

    A pair needs two different, non-empty responses (the reward stage rejects anything
    else); the skipped ones are counted by reason: ``empty_original``, ``empty_revision``,
    ``unchanged`` (the revision equals the original up to surrounding whitespace).
    Each pair's meta is `meta` plus the principles and critiques of its rounds.
    """
    pairs, skipped = [], {"empty_original": 0, "empty_revision": 0, "unchanged": 0}
    for prompt, rev in zip(prompts, revisions):
        if not rev.original.strip():
            skipped["empty_original"] += 1
        elif not rev.revision.strip():
            skipped["empty_revision"] += 1
        elif rev.revision.strip() == rev.original.strip():
            skipped["unchanged"] += 1
        else:
            pairs.append(
                PreferencePair(
                    prompt=prompt,
                    chosen=rev.revision,
                    rejected=rev.original,
                    meta={
                        **meta,
                        "principle": rev.steps[-1]["principle"],
                        "critique": rev.steps[-1]["critique"],
                        **({"rounds": rev.steps} if len(rev.steps) > 1 else {}),
                    },
                )
            )
    return pairs, skipped
