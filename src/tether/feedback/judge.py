"""A pairwise LLM judge (RLAIF): which of two responses is better, read off next-token probabilities.

Any local causal LM can judge (Lee et al. 2023, "RLAIF: Scaling Reinforcement Learning from
Human Feedback with AI Feedback", sec. 2.1; Bai et al. 2022, "Constitutional AI", sec. 4.1).
The judge is shown the constitution's rubric, the conversation and the two responses as
"Response A" and "Response B", and its own turn is begun for it with
:data:`ANSWER_PREFIX` ("The better response is Response"), so the next token is the verdict.
No text is generated or parsed: with l_A, l_B the next-token logits of the letters,

    p(A) = exp(l_A) / (exp(l_A) + exp(l_B)) = sigmoid(l_A - l_B)          (1)

(the two-way renormalisation of Lee et al. 2023, sec. 2.1, over tokens "A" and "B").
Judges favour a position (Lee et al. 2023, sec. 2.1.1; Zheng et al. 2023), so every pair
is asked in both orders, (first, second) and (second, first), and averaged:

    p_first = ( p_AB(A) + p_BA(B) ) / 2 = ( p_AB(A) + 1 - p_BA(A) ) / 2   (2)

Swapping a pair's responses maps p_first to 1 - p_first (exactly, up to floating-point
rounding), and a judge that only likes the letter A gets p_first = 1/2. The verdict is
*position consistent* when both orders prefer the same response, and its strength is
|2 p_first - 1| in [0, 1].

Cost: one forward pass per pair and order, no generation; the pair's two orders share a
left-padded batch, and the instructions and rubric (the same for every pair, about half of
each input) are computed once and reused through the key/value cache (`share_head`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tether.data.collate import pad_left
from tether.data.records import Prompt
from tether.data.templates import as_messages, has_chat_template, render_prompt
from tether.models.loading import ModelError, autocast, device, kv_cache_of, with_kv_cache

__all__ = [
    "JUDGE_TEMPLATE",
    "ANSWER_PREFIX",
    "Verdict",
    "judge_parts",
    "judge_text",
    "verdict_token_ids",
    "two_way_probability",
    "debias_orders",
    "head_cache",
    "verdict_logits",
    "judge_pairs",
]

JUDGE_TEMPLATE = """\
You are comparing two responses of an AI assistant to the same conversation. Judge them by these principles:
{rubric}

Conversation:
{conversation}

Response A:
{first}

Response B:
{second}

Considering the principles above, which response is better? Answer with a single letter, A or B."""
"""The judge's question, in the shape of Lee et al. 2023, sec. 2.1 (a preamble saying what to judge, the
context, the two candidates, an ending that asks for the preferred one; no chain of thought) with the
constitution's principles as the criteria, as in Bai et al. 2022's multiple-choice question (sec. 4.1)."""

ANSWER_PREFIX = "The better response is Response"
"""Begins the judge's own turn, so that its next token is the letter (" A" or " B")."""

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Verdict:
    """The judge's verdict on one (first, second) pair.

    Attributes:
        p_first: P(first is better), both orders averaged: eq. (2).
        p_ab: P(first is better) asked as (A=first, B=second): p_AB(A), eq. (1).
        p_ba: P(first is better) asked as (A=second, B=first): p_BA(B).
    """

    p_first: float
    p_ab: float
    p_ba: float

    @property
    def strength(self) -> float:
        """|2 p_first - 1|: 0 for a coin flip, 1 for certainty."""
        return abs(2 * self.p_first - 1)

    @property
    def position_consistent(self) -> bool:
        """Both orders prefer the same response."""
        return (self.p_ab > 0.5) == (self.p_ba > 0.5)

    @property
    def p_letter_a(self) -> float:
        """Mean probability of the letter A over the two orders: 0.5 = no position bias."""
        return (self.p_ab + 1 - self.p_ba) / 2


# --------------------------------------------------------------------------- the prompt


def format_conversation(prompt: Prompt) -> str:
    """The conversation as 'User: ...' / 'Assistant: ...' paragraphs (a plain prompt is one user turn)."""
    return "\n\n".join(f"{_ROLE_NAMES[m['role']]}: {m['content'].strip()}" for m in as_messages(prompt))


def _clip(tokenizer, text: str, max_tokens: int, keep_end: bool) -> str:
    """`text` cut to at most `max_tokens` tokens: from the left (keep_end) or from the right."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return "..." + tokenizer.decode(ids[-max_tokens:]) if keep_end else tokenizer.decode(ids[:max_tokens]) + "..."


_SPLIT = "\n\nConversation:\n"  # the judge input before this is the same for every pair


def judge_parts(
    tokenizer, prompt: Prompt, first: str, second: str, rubric: Sequence[str], max_prompt_tokens: int = 192, max_response_tokens: int = 128
) -> tuple[str, str]:
    """The judge input for the order (A=first, B=second) as (shared head, the pair's part), ending where the letter comes.

    The conversation keeps its last `max_prompt_tokens` tokens (the latest turn matters most),
    each response its first `max_response_tokens`. The question is one user message, rendered
    with the tokenizer's chat template, followed by `ANSWER_PREFIX` in the assistant's turn.
    The head (chat preamble, instructions, rubric) is the same for every pair, so it can be
    computed once; the two are tokenized apart, so the split never depends on the tokenizer.
    """
    question = JUDGE_TEMPLATE.format(
        rubric="\n".join(f"- {line}" for line in rubric),
        conversation=_clip(tokenizer, format_conversation(prompt), max_prompt_tokens, keep_end=True),
        first=_clip(tokenizer, first.strip(), max_response_tokens, keep_end=False),
        second=_clip(tokenizer, second.strip(), max_response_tokens, keep_end=False),
    )
    context = render_prompt(tokenizer, question)
    text = context + ("" if context.endswith((" ", "\n")) else " ") + ANSWER_PREFIX
    cut = text.index(_SPLIT) + len(_SPLIT)
    return text[:cut], text[cut:]


def judge_text(
    tokenizer, prompt: Prompt, first: str, second: str, rubric: Sequence[str], max_prompt_tokens: int = 192, max_response_tokens: int = 128
) -> str:
    """The whole judge input (see `judge_parts`) as one string."""
    return "".join(judge_parts(tokenizer, prompt, first, second, rubric, max_prompt_tokens, max_response_tokens))


def _encode_head(tokenizer, text: str) -> list[int]:
    """Token ids of the judge input's head; a BOS in front when there is no chat template (as `encode_prompt` does)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None and not has_chat_template(tokenizer) else []) + _encode(tokenizer, text)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def verdict_token_ids(tokenizer, context: str) -> tuple[int, int]:
    """Token ids of the letters A and B as the next token after `context`.

    Tries " A"/" B" and then "A"/"B": a form is used when `context + letter` tokenizes as
    `context` plus exactly one more token for each letter, and the two tokens differ.

    Raises:
        ModelError: neither form is one token per letter for this tokenizer.
    """
    base = _encode(tokenizer, context)
    for sep in (" ", ""):
        ids = []
        for letter in "AB":
            full = _encode(tokenizer, context + sep + letter)
            if len(full) == len(base) + 1 and full[: len(base)] == base:
                ids.append(full[-1])
        if len(ids) == 2 and ids[0] != ids[1]:
            return ids[0], ids[1]
    raise ModelError(
        f"the judge reads its verdict from the next-token probabilities of the letters A and B, but this tokenizer "
        f"({type(tokenizer).__name__}) does not encode {ANSWER_PREFIX!r} followed by ' A'/' B' or 'A'/'B' as one extra "
        "token per letter; use a judge model with a different tokenizer."
    )


# --------------------------------------------------------------------------- the verdict


def two_way_probability(letter_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (1): P(A) renormalised over the two letters (Lee et al. 2023, sec. 2.1).

    Args:
        letter_logits: (N, 2) next-token logits of the tokens [A, B].
    Returns:
        (N,) p(A) = sigmoid(l_A - l_B), in float32.
    """
    letter_logits = letter_logits.float()
    return torch.sigmoid(letter_logits[:, 0] - letter_logits[:, 1])


def debias_orders(p_ab_a: torch.Tensor, p_ba_a: torch.Tensor) -> torch.Tensor:
    """Eq. (2): P(first better) averaged over both orders, cancelling position bias.

    Args:
        p_ab_a: (N,) P("A") when asked as (A=first, B=second).
        p_ba_a: (N,) P("A") when asked as (A=second, B=first).
    Returns:
        (N,) (p_ab_a + (1 - p_ba_a)) / 2.
    """
    return (p_ab_a + (1 - p_ba_a)) / 2


@torch.no_grad()
def head_cache(model, head_ids: list[int], precision: str = "bf16"):
    """The key/value cache of the shared head (one row), to start every batch from."""
    ids = torch.tensor([head_ids], device=device())  # (1, H)
    with autocast(precision):
        return kv_cache_of(model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **_keep_last(model)))


def _keep_last(model) -> dict:
    """Ask for the last position's logits only, where the model supports it (the output layer is large)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.no_grad()
def verdict_logits(
    model, token_ids: list[list[int]], letter_ids: tuple[int, int], pad_id: int, precision: str = "bf16", cache=None, cache_len: int = 0
) -> torch.Tensor:
    """Next-token logits of the two letters after each sequence, as one left-padded batch.

    Left padding puts every sequence's last token in the last column; positions are counted
    over real tokens only, so padding changes nothing. Only the last column goes through the
    output layer. With `cache` (from `head_cache`, `cache_len` tokens), every sequence is a
    continuation of that shared head: the head is computed once instead of once per row.

    Args:
        token_ids: B sequences of token ids (after the head, when there is one).
    Returns:
        (B, 2) float32 logits of [A, B].
    """
    input_ids, mask = pad_left(token_ids, pad_id)  # (B, T) each
    input_ids, mask = input_ids.to(device()), mask.to(device())
    position_ids = cache_len + (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T), continuing after the head
    extra = {}
    if cache is not None:
        cache = copy.deepcopy(cache)  # the head's cache stays one row for the next batch
        cache.batch_repeat_interleave(input_ids.shape[0])
        extra = with_kv_cache(cache)
        mask = torch.cat([mask.new_ones(mask.shape[0], cache_len), mask], dim=1)  # (B, H + T)
    with autocast(precision):
        logits = model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=cache is not None, **extra, **_keep_last(model)
        ).logits  # (B, T or 1, V)
    return logits[:, -1, list(letter_ids)].float().cpu()


def judge_pairs(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    firsts: Sequence[str],
    seconds: Sequence[str],
    rubric: Sequence[str],
    *,
    batch_size: int = 8,
    max_prompt_tokens: int = 192,
    max_response_tokens: int = 128,
    precision: str = "bf16",
    share_head: bool = True,
    progress=None,
) -> list[Verdict]:
    """Judge N pairs (prompt, first, second): one forward per pair and order, `batch_size` pairs (2 x rows) per batch.

    A pair's two orders share a batch and pairs of similar length are batched together. With
    `share_head`, the rubric and instructions (the same for every pair) are computed once and
    every row continues from their cache (same verdicts, about half the compute).

    Returns:
        N verdicts, in input order.
    """
    if not len(prompts) == len(firsts) == len(seconds):
        raise ValueError(
            f"judge_pairs: {len(prompts)} prompts, {len(firsts)} first and {len(seconds)} second responses; expected as many of each."
        )
    if not prompts:
        return []
    parts_ab = [
        judge_parts(tokenizer, p, a, b, rubric, max_prompt_tokens, max_response_tokens) for p, a, b in zip(prompts, firsts, seconds)
    ]
    parts_ba = [
        judge_parts(tokenizer, p, b, a, rubric, max_prompt_tokens, max_response_tokens) for p, a, b in zip(prompts, firsts, seconds)
    ]
    letters = verdict_token_ids(tokenizer, parts_ab[0][1])
    head_ids = _encode_head(tokenizer, parts_ab[0][0])
    if any(head != parts_ab[0][0] for head, _ in parts_ab + parts_ba):
        raise ValueError(
            "judge_pairs: the chat template renders the judge's instructions differently from pair to pair; "
            "the shared head cannot be shared"
        )
    ids_ab, ids_ba = [_encode(tokenizer, rest) for _, rest in parts_ab], [_encode(tokenizer, rest) for _, rest in parts_ba]
    was_training = model.training
    model.eval()
    cache = head_cache(model, head_ids, precision) if share_head else None
    if not share_head:
        ids_ab, ids_ba = [head_ids + ids for ids in ids_ab], [head_ids + ids for ids in ids_ba]
    order = sorted(range(len(prompts)), key=lambda i: max(len(ids_ab[i]), len(ids_ba[i])))
    p_ab_a, p_ba_a = torch.empty(len(prompts)), torch.empty(len(prompts))  # (N,) P("A") in each order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        letter_logits = verdict_logits(
            model,
            [ids_ab[i] for i in idx] + [ids_ba[i] for i in idx],
            letters,
            tokenizer.pad_token_id,
            precision,
            cache,
            len(head_ids) if share_head else 0,
        )  # (2b, 2)
        p_a = two_way_probability(letter_logits)  # (2b,)
        p_ab_a[idx], p_ba_a[idx] = p_a[: len(idx)], p_a[len(idx) :]
        if progress is not None:
            progress(len(idx))
    model.train(was_training)
    p_first = debias_orders(p_ab_a, p_ba_a)  # (N,)
    return [Verdict(p_first=float(p), p_ab=float(a), p_ba=float(1 - b)) for p, a, b in zip(p_first, p_ab_a, p_ba_a)]
