"""Batch token sequences into padded tensors for training.

* :func:`pad_right` / :func:`pad_left` -- pad lists of ids into ``(B, T)``
  tensors with an attention mask (1 on tokens, 0 on padding). The mask comes
  from the lengths, never from comparing ids with ``pad_id``, so a pad id that
  equals the EOS id (as with many chat models) is safe.
* :func:`encode_demonstration` + :func:`collate_sft` -- supervised
  fine-tuning batches whose labels are -100 on prompt tokens and padding, so
  the loss covers the response (and its EOS) only.
* :func:`collate_pairs` -- reward-model batches: chosen rows first, then
  rejected rows, each ``prompt + response + EOS``, right-padded.
* :func:`drop_identical_pairs` -- leave out pairs whose two responses become the
  same tokens once cut to the response budget (they teach nothing).
* :func:`pack_shared_prompts` -- one row per prompt holding the prompt once and
  then each of its responses, with the positions and segment ids that let a
  block-diagonal attention mask score every response as if it sat alone after
  the prompt (the prompt is computed once instead of once per response).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch

from tether.data.records import Demonstration, PreferencePair
from tether.data.templates import encode_prompt, encode_response_with_flag

__all__ = [
    "IGNORE_INDEX",
    "SFTExample",
    "pad_right",
    "pad_left",
    "encode_demonstration",
    "collate_sft",
    "collate_pairs",
    "drop_identical_pairs",
    "PackedRows",
    "pack_shared_prompts",
]

IGNORE_INDEX = -100
"""Label value that PyTorch's cross-entropy (and transformers) skip."""


class SFTExample(TypedDict):
    """One encoded demonstration.

    Attributes:
        input_ids: prompt ids followed by response ids.
        labels: ``IGNORE_INDEX`` on the prompt, the response ids after it.
        truncated: whether the prompt or the response was cut to fit.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if len(seqs) == 0:
        raise ValueError("Cannot pad an empty batch: got no sequences.")
    width = max(len(seq) for seq in seqs)
    input_ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if not seq:
            continue
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad sequences on the right into ``(input_ids, attention_mask)``, both LongTensor ``(B, T)``.

    Right padding suits training and scoring (position ``t`` of every row is
    token ``t``).
    """
    return _pad(seqs, pad_id, left=False)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad sequences on the left into ``(input_ids, attention_mask)``, both LongTensor ``(B, T)``.

    Left padding suits batched generation (every prompt ends at the last column).
    """
    return _pad(seqs, pad_id, left=True)


def encode_demonstration(tokenizer: Any, demo: Demonstration, max_prompt_tokens: int, max_response_tokens: int) -> SFTExample:
    """Encode a demonstration for supervised fine-tuning.

    ``input_ids`` is :func:`~tether.data.templates.encode_prompt` followed by
    :func:`~tether.data.templates.encode_response` (with EOS); ``labels``
    repeat the ids with the prompt part set to ``IGNORE_INDEX``. A demonstration with no
    prompt (``""``: a language-modeling text) is the text alone, after the tokenizer's BOS
    when it has one, so every token of it is trained on (the first one too, given a BOS).
    """
    if demo.prompt == "":
        bos = getattr(tokenizer, "bos_token_id", None)
        prompt_ids, prompt_cut = ([bos] if bos is not None else []), False
    else:
        prompt_ids, prompt_cut = encode_prompt(tokenizer, demo.prompt, max_prompt_tokens)
    response_ids, response_cut = encode_response_with_flag(tokenizer, demo.response, max_response_tokens)
    return SFTExample(
        input_ids=prompt_ids + response_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
        truncated=prompt_cut or response_cut,
    )


def collate_sft(examples: Sequence[SFTExample | dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded demonstrations into a batch.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, each LongTensor
        ``(B, T)``; labels are ``IGNORE_INDEX`` on prompt tokens and padding.
        The keys match a causal LM's ``forward``, so ``model(**batch)`` works.
    """
    for index, example in enumerate(examples):
        if len(example["input_ids"]) != len(example["labels"]):
            raise ValueError(
                f"Example {index} has {len(example['input_ids'])} input_ids but {len(example['labels'])} labels; "
                "they must be the same length."
            )
    input_ids, attention_mask = pad_right([example["input_ids"] for example in examples], pad_id)
    labels, _ = pad_right([example["labels"] for example in examples], IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_pairs(
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    max_prompt_tokens: int,
    max_response_tokens: int,
    pad_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """Encode preference pairs into one right-padded batch of ``2B`` rows.

    Rows ``0..B-1`` are ``prompt + chosen`` for pairs ``0..B-1``, rows
    ``B..2B-1`` are ``prompt + rejected`` in the same order, each built as
    :func:`~tether.data.templates.encode_prompt` +
    :func:`~tether.data.templates.encode_response` (with EOS unless cut).
    A reward model reads each row's score at its last attended token.

    Args:
        pad_id: padding id; None takes the tokenizer's pad id, else its EOS id.

    Returns:
        ``input_ids`` and ``attention_mask``, LongTensor ``(2B, T)``.
    """
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "eos_token_id", None)
        if pad_id is None:
            raise ValueError("No pad_id given and the tokenizer has neither a pad nor an EOS token.")
    chosen_rows: list[list[int]] = []
    rejected_rows: list[list[int]] = []
    for pair in pairs:
        prompt_ids, _ = encode_prompt(tokenizer, pair.prompt, max_prompt_tokens)
        chosen_ids, _ = encode_response_with_flag(tokenizer, pair.chosen, max_response_tokens)
        rejected_ids, _ = encode_response_with_flag(tokenizer, pair.rejected, max_response_tokens)
        chosen_rows.append(prompt_ids + chosen_ids)
        rejected_rows.append(prompt_ids + rejected_ids)
    input_ids, attention_mask = pad_right(chosen_rows + rejected_rows, pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def drop_identical_pairs(tokenizer: Any, pairs: Sequence[PreferencePair], max_response_tokens: int) -> tuple[list[PreferencePair], int]:
    """The pairs whose chosen and rejected still differ as tokens once cut to ``max_response_tokens``, and how many did not.

    Two responses that share their first ``max_response_tokens`` tokens become the same
    sequence after truncation (the prompt, cut the same way for both, cannot tell them
    apart either): a reward model scores them equally and the Bradley-Terry or DPO loss of
    the pair is ln 2 whatever the model, so it only dilutes the batch.
    """
    kept = [
        p
        for p in pairs
        if encode_response_with_flag(tokenizer, p.chosen, max_response_tokens)[0]
        != encode_response_with_flag(tokenizer, p.rejected, max_response_tokens)[0]
    ]
    return kept, len(pairs) - len(kept)


class PackedRows(TypedDict):
    """Prompts with their responses packed one row per prompt (see :func:`pack_shared_prompts`).

    Attributes:
        input_ids: LongTensor ``(R, T)``, right-padded with the pad id.
        position_ids: LongTensor ``(R, T)``: each response continues from the end of its prompt.
        segment_ids: LongTensor ``(R, T)``: 0 on the prompt, k on the k-th response (from 1), -1 on padding.
        ends: LongTensor ``(N, 2)``: (row, column) of each response's last token, in input order.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    ends: torch.Tensor


def pack_shared_prompts(rows: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], pad_id: int) -> PackedRows:
    """Pack ``(prompt_ids, [response_ids, ...])`` rows as ``prompt + response_1 + response_2 + ...``.

    Response k gets positions ``len(prompt) .. len(prompt) + len(response_k) - 1``, the
    positions it would have right after the prompt, so with a mask that lets a token see
    only the prompt and its own response (``tether.models.reward_model.shared_prompt_mask``)
    each response is computed exactly as in its own row, and the shared prompt only once.
    ``ends`` lists the responses row by row, in the order given.
    """
    if not rows:
        raise ValueError("Cannot pack an empty batch: got no rows.")
    width = max(len(prompt) + sum(len(r) for r in responses) for prompt, responses in rows)
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    ends: list[tuple[int, int]] = []
    for row, (prompt, responses) in enumerate(rows):
        if any(len(r) == 0 for r in responses):
            raise ValueError(f"Row {row}: a response has no tokens; every response needs at least its EOS.")
        n = len(prompt)
        input_ids[row, :n] = torch.as_tensor(list(prompt), dtype=torch.long)
        position_ids[row, :n] = torch.arange(n)
        segment_ids[row, :n] = 0
        col = n
        for k, response in enumerate(responses, start=1):
            span = slice(col, col + len(response))
            input_ids[row, span] = torch.as_tensor(list(response), dtype=torch.long)
            position_ids[row, span] = torch.arange(n, n + len(response))
            segment_ids[row, span] = k
            col += len(response)
            ends.append((row, col - 1))
    return PackedRows(input_ids=input_ids, position_ids=position_ids, segment_ids=segment_ids, ends=torch.tensor(ends, dtype=torch.long))
