"""Padding and batches: SFT label masks, preference-pair order and shapes."""

from __future__ import annotations

import pytest
import torch

from tether.data import (
    IGNORE_INDEX,
    Demonstration,
    PreferencePair,
    collate_pairs,
    collate_sft,
    encode_demonstration,
    encode_prompt,
    encode_response,
    pad_left,
    pad_right,
)


def test_pad_right_and_left() -> None:
    ids, mask = pad_right([[1, 2, 3], [4]], pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_mask_ignores_pad_id_equal_to_a_token() -> None:
    """Many chat models pad with EOS; the mask must still cover a real EOS."""
    ids, mask = pad_right([[5, 2], [5]], pad_id=2)
    assert mask.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(ValueError):
        pad_right([], pad_id=0)


def test_encode_demonstration_masks_prompt(tiny_tokenizer) -> None:
    demo = Demonstration("Capital of France?", "Paris.")
    example = encode_demonstration(tiny_tokenizer, demo, max_prompt_tokens=64, max_response_tokens=16)
    prompt_ids, _ = encode_prompt(tiny_tokenizer, demo.prompt, 64)
    response_ids = encode_response(tiny_tokenizer, demo.response, 16)
    assert example["input_ids"] == prompt_ids + response_ids
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    assert example["labels"][-1] == tiny_tokenizer.eos_token_id
    assert example["truncated"] is False
    cut = encode_demonstration(tiny_tokenizer, demo, max_prompt_tokens=4, max_response_tokens=16)
    assert cut["truncated"] is True and len(cut["input_ids"]) == 4 + len(response_ids)
    cut = encode_demonstration(tiny_tokenizer, demo, max_prompt_tokens=64, max_response_tokens=1)
    assert cut["truncated"] is True and cut["labels"][-1] != tiny_tokenizer.eos_token_id


def test_collate_sft(tiny_tokenizer) -> None:
    demos = [Demonstration("Hi", "Hello there, how are you?"), Demonstration([{"role": "user", "content": "Capital of France?"}], "Paris.")]
    examples = [encode_demonstration(tiny_tokenizer, demo, 64, 32) for demo in demos]
    batch = collate_sft(examples, pad_id=tiny_tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    width = max(len(example["input_ids"]) for example in examples)
    for key in batch:
        assert batch[key].shape == (2, width) and batch[key].dtype == torch.long
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == example["input_ids"]
        assert batch["labels"][row, :n].tolist() == example["labels"]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tiny_tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    # Only response tokens (and their EOS) carry labels.
    response_lengths = [len(encode_response(tiny_tokenizer, demo.response, 32)) for demo in demos]
    assert (batch["labels"] != IGNORE_INDEX).sum(dim=1).tolist() == response_lengths


def test_collate_pairs_shapes_and_order(tiny_tokenizer) -> None:
    pairs = [
        PreferencePair("Capital of France?", "Paris.", "I do not know, sorry, maybe Lyon or Rome."),
        PreferencePair([{"role": "user", "content": "Say hi"}], "Hi!", "No."),
        PreferencePair("Bake bread?", "Mix flour, water, salt and yeast, then bake it.", "Buy some."),
    ]
    batch = collate_pairs(tiny_tokenizer, pairs, max_prompt_tokens=64, max_response_tokens=128, pad_id=tiny_tokenizer.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask"}
    rows = []
    for pair in pairs:
        prompt_ids, _ = encode_prompt(tiny_tokenizer, pair.prompt, 64)
        rows.append(
            (
                prompt_ids + encode_response(tiny_tokenizer, pair.chosen, 128),
                prompt_ids + encode_response(tiny_tokenizer, pair.rejected, 128),
            )
        )
    expected = [chosen for chosen, _ in rows] + [rejected for _, rejected in rows]
    width = max(len(row) for row in expected)
    assert batch["input_ids"].shape == (6, width) == batch["attention_mask"].shape
    for index, row in enumerate(expected):
        assert batch["input_ids"][index, : len(row)].tolist() == row
        assert batch["attention_mask"][index].sum().item() == len(row)
        # The last attended token is EOS: the reward model reads its score there.
        assert batch["input_ids"][index, len(row) - 1].item() == tiny_tokenizer.eos_token_id
    # pad_id defaults to the tokenizer's.
    default = collate_pairs(tiny_tokenizer, pairs, 64, 128)
    assert torch.equal(default["input_ids"], batch["input_ids"])
