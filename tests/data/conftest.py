"""Fixtures for the data tests: tiny in-memory tokenizers and data locations.

The tokenizer builder is meant to move to a shared ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A ChatML template like SmolLM2's, without the default system message."""

_CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
    "User: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
    "Rewrite the given sentence so that it is shorter and clearer.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,:;'\"()[]{}",
    "system user assistant You are a helpful assistant.",
]


def build_tiny_tokenizer(*, chat_template: str | None = CHATML_TEMPLATE, bos_token: str | None = None) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained in memory, in about 10 ms.

    Special tokens: ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>``
    (eos) and, when ``bos_token`` is given, that token as BOS. Any text
    encodes (byte-level), so no unknown tokens appear.
    """
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + ([bos_token] if bos_token else [])
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=bos_token,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny chat tokenizer with a ChatML template (eos ``<|im_end|>``, pad ``<|endoftext|>``)."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_base_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny tokenizer with no chat template and a BOS token ``<s>``, like a base model's."""
    return build_tiny_tokenizer(chat_template=None, bos_token="<s>")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared data folder (``$TETHER_SHARED_DATA`` overrides); skips when absent."""
    override = os.environ.get("TETHER_SHARED_DATA")
    folder = Path(override) if override else Path(__file__).resolve().parents[3] / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} not found (set TETHER_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Small slices of the real data, kept in the repository."""
    return Path(__file__).resolve().parent / "fixtures"
