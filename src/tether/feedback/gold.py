"""The gold scorer: a documented stand-in for human taste in tether's simulated setting.

tether's demo runs RLHF without people. Some function has to play the part of
"what humans actually want", and this module is that function. It is a
*referee*, not a training signal:

* no stage trains on it directly;
* the simulated annotator (:mod:`tether.feedback.simulated`) turns gold scores
  into *noisy* pairwise choices (Bradley & Terry, 1952), the way real labellers
  agree with each other only 70-80% of the time;
* the reward model learns from those noisy choices, PPO optimises the reward
  model, and evaluation reports the policy's win rate *under this scorer*.

So the gold score plays the role of the latent "true preference" that RLHF
papers assume behind human labels (Christiano et al., 2017; Stiennon et al.,
2020; Ouyang et al., 2022), and the gap between it and the learned reward model
is where over-optimisation shows up (Gao, Schulman & Hilton, 2023, who use the
same gold-vs-proxy design with a large reward model as the gold).

What it rewards
---------------
"A helpful, on-topic, well-formed, non-repetitive answer", scored with five
cheap, deterministic features of a ``(prompt, response)`` pair.

Two tokenisations are used:

* *words*: whitespace tokens, lowercased, with leading and trailing
  punctuation stripped; tokens that are pure punctuation are dropped
  (``"Eat well."`` -> ``["eat", "well"]``);
* *alphabetic words*: maximal runs of letters, lowercased
  (``"don't stop"`` -> ``["don", "t", "stop"]``).

Features (``n`` = number of words in the response):

``relevance`` in [0, 1]
    Let *C* be the set of the prompt's content words: alphabetic words of
    length >= 4 that are not in :data:`STOPWORDS`, each passed through
    :func:`stem`. Let *R* be the set of the response's stemmed alphabetic
    words. ``relevance = |C & R| / |C|``, or 0.5 when *C* is empty (no
    evidence either way). :func:`stem` strips one trailing ``ing``, ``es``,
    ``ed`` or ``s`` (tried in that order) when the remaining stem keeps at
    least 4 letters, so "staying" and "stays" both match "stay", while
    "tips" stays "tips".

``complete`` in {0, 1}
    1 when the stripped response ends with terminal punctuation: ``.``, ``!``
    or ``?``, optionally followed by closing quotes, brackets or Markdown
    emphasis (``."``, ``?)``, ``.**``), or with a closing code fence
    ```` ``` ````. The policy's samples are capped at about 48 tokens, so many
    are cut off mid-sentence; this feature separates those from answers that
    were allowed to finish.

``repetition`` in [0, 1)
    Of the response's word 3-grams, the fraction that repeat an earlier 3-gram
    of the same response; 0 for fewer than 3 words. "the cat sat the cat sat"
    has the 3-grams (the cat sat), (cat sat the), (sat the cat),
    (the cat sat), and only the last repeats an earlier one: 1/4.

``length`` in (-inf, 1]
    ``min(n, 25) / 25 - max(0, n - 120) / 120``: grows with length until 25
    words (so saying nothing is not rewarded), is flat up to 120 words, then
    falls (1 at 120 words, 0 at 240, negative beyond).

``empty`` in {0, 1}
    1 when the response contains no alphabetic word at all.

The gold score is the weighted sum ``sum(GOLD_WEIGHTS[k] * features[k])`` with
:data:`GOLD_WEIGHTS` = relevance 2.0, complete 1.0, repetition -2.0,
length 1.0, empty -2.0. A fully relevant, finished, non-repetitive answer of
25-120 words scores the maximum, 4.0; the empty string scores -2.0
(``2.0 * 0.5 - 2.0 = -1.0`` when the prompt has no content words).

Known blind spots (by design: this is a cheap, transparent referee, not a
judge of truth): it cannot tell correct answers from wrong ones; a response
that merely echoes the prompt scores full relevance; an unpunctuated poem
counts as incomplete.

Replacing it
------------
Any function ``(prompt: str, response: str) -> float`` where larger means
"people would prefer this" can take its place: an LLM judge, a large public
reward model, or a lookup into real human ratings. Pass it as ``scorer`` to
:class:`tether.feedback.simulated.SimulatedAnnotator` and use it when scoring
evaluation samples; nothing else in tether depends on these particular
features.

References
----------
Bradley, R. A. & Terry, M. E. (1952). Rank analysis of incomplete block
designs: I. The method of paired comparisons. *Biometrika* 39(3/4).
Christiano, P. et al. (2017). Deep reinforcement learning from human
preferences. *NeurIPS*.
Stiennon, N. et al. (2020). Learning to summarize from human feedback.
*NeurIPS*.
Ouyang, L. et al. (2022). Training language models to follow instructions
with human feedback. *NeurIPS*.
Gao, L., Schulman, J. & Hilton, J. (2023). Scaling laws for reward model
overoptimization. *ICML*.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

__all__ = [
    "GOLD_WEIGHTS",
    "STOPWORDS",
    "GoldScorer",
    "content_words",
    "gold_features",
    "gold_score",
    "gold_scores",
    "stem",
]

GoldScorer = Callable[[str, str], float]
"""The type of a gold scorer: ``(prompt, response) -> score``, larger is better."""

GOLD_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "relevance": 2.0,
        "complete": 1.0,
        "repetition": -2.0,
        "length": 1.0,
        "empty": -2.0,
    }
)
"""Weights of the gold features; the gold score is ``sum(weight * feature)``.

Read-only; copy with ``dict(GOLD_WEIGHTS)`` to experiment with other weights.
"""

STOPWORDS: Final[frozenset[str]] = frozenset(
    # Common English function words (only those of >= 4 letters matter, as
    # shorter words are never content words).
    """
    about above after again against also among another because been before
    being below between both could does doing down during each either else
    even ever every from further have having here hers herself himself however
    into itself just know like many more most much must myself neither never
    only other ought ours ourselves over same shall should some such than that
    their theirs them themselves then there these they this those through
    under until upon very want well were what when where whether which while
    whom whose will with within without would your yours yourself yourselves
    """.split()
    # Instruction words: they say what to do, not what to talk about, so an
    # answer need not repeat them ("Write a short poem" -> "poem").
    + """
    answer briefly brief create describe explain following give list make
    please provide short simple sentence sentences tell using word words write
    """.split()
)
"""Words that never count as content words for :func:`content_words`."""

_SUFFIXES: Final[tuple[str, ...]] = ("ing", "es", "ed", "s")
_MIN_STEM: Final[int] = 4
_MIN_CONTENT_LEN: Final[int] = 4
_EMPTY_PROMPT_RELEVANCE: Final[float] = 0.5
_LENGTH_SATURATION: Final[int] = 25
_LENGTH_PENALTY_START: Final[int] = 120

_ALPHA_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (Unicode-aware)
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")
# Terminal . ! ? optionally followed by closing quotes, brackets or emphasis.
_TERMINAL = re.compile(r"[.!?][\"'\u201d\u2019\u00bb)\]}*_]*$")
_CODE_FENCE = "```"


def _words(text: str) -> list[str]:
    """Whitespace tokens, lowercased, edge punctuation stripped, empties dropped."""
    words = []
    for token in text.lower().split():
        word = _EDGE_PUNCT.sub("", token)
        if word:
            words.append(word)
    return words


def _alpha_words(text: str) -> list[str]:
    """Maximal runs of letters in ``text``, lowercased."""
    return _ALPHA_WORD.findall(text.lower())


def stem(word: str) -> str:
    """Strip one trailing ``ing``/``es``/``ed``/``s`` if >= 4 letters remain.

    Suffixes are tried in that order and the first that leaves a long enough
    stem is removed: ``"staying" -> "stay"``, ``"classes" -> "class"``,
    ``"trees" -> "tree"`` (``"tre"`` would be too short, so ``s`` is tried),
    ``"tips" -> "tips"``. A deliberately crude stemmer: cheap, deterministic
    and easy to state.
    """
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= _MIN_STEM:
            return word[: -len(suffix)]
    return word


def content_words(prompt: str) -> set[str]:
    """The prompt's stemmed content words (alphabetic, >= 4 letters, not stopwords)."""
    return {stem(word) for word in _alpha_words(prompt) if len(word) >= _MIN_CONTENT_LEN and word not in STOPWORDS}


def _relevance(prompt: str, response: str) -> float:
    wanted = content_words(prompt)
    if not wanted:
        return _EMPTY_PROMPT_RELEVANCE
    present = {stem(word) for word in _alpha_words(response)}
    return len(wanted & present) / len(wanted)


def _complete(response: str) -> float:
    text = response.strip()
    return float(text.endswith(_CODE_FENCE) or _TERMINAL.search(text) is not None)


def _repetition(words: Sequence[str]) -> float:
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not trigrams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for trigram in trigrams:
        if trigram in seen:
            repeats += 1
        seen.add(trigram)
    return repeats / len(trigrams)


def _length(n_words: int) -> float:
    saturating = min(n_words, _LENGTH_SATURATION) / _LENGTH_SATURATION
    overlong = max(0, n_words - _LENGTH_PENALTY_START) / _LENGTH_PENALTY_START
    return saturating - overlong


def gold_features(prompt: str, response: str) -> dict[str, float]:
    """The five gold features of a ``(prompt, response)`` pair.

    Returns a dict with keys ``relevance``, ``complete``, ``repetition``,
    ``length`` and ``empty``; their formulas are in the module docstring.
    """
    words = _words(response)
    return {
        "relevance": _relevance(prompt, response),
        "complete": _complete(response),
        "repetition": _repetition(words),
        "length": _length(len(words)),
        "empty": float(not _alpha_words(response)),
    }


def gold_score(prompt: str, response: str) -> float:
    """Gold score of ``response`` to ``prompt``: ``sum(GOLD_WEIGHTS[k] * feature_k)``.

    This is the simulated "true human taste"; larger is better, the maximum is
    4.0. See the module docstring for what it measures and why it is never
    trained on directly.
    """
    features = gold_features(prompt, response)
    return float(sum(GOLD_WEIGHTS[name] * features[name] for name in GOLD_WEIGHTS))


def gold_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Gold scores of ``responses[i]`` to ``prompts[i]``, paired by index."""
    if len(prompts) != len(responses):
        raise ValueError(f"gold_scores needs one response per prompt, but got {len(prompts)} prompts and {len(responses)} responses.")
    return [gold_score(p, r) for p, r in zip(prompts, responses)]
