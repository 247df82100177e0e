"""Data: records, readers and writers, prompt templates and batch collation.

The submodules:

* :mod:`tether.data.records` -- ``PromptRecord``, ``Demonstration``, ``PreferencePair``.
* :mod:`tether.data.readers` -- ``read_prompts`` / ``read_demonstrations`` /
  ``read_preferences`` (every TRL dataset format, plain and conversational, and
  tether's, HH-RLHF, Alpaca and Self-Instruct rows; from JSONL/JSON files, from
  CSV, parquet, arrow, dataset folders and cached hub ids through Hugging Face
  ``datasets``, or from a ``datasets.Dataset`` in memory),
  ``write_jsonl`` (atomic), ``split``, ``DataError`` and ``ReadReport``.
* :mod:`tether.data.templates` -- rendering and encoding prompts and responses.
* :mod:`tether.data.collate` -- padding and batches for SFT and reward models.

The collation names load on first use (they need torch), so that the records and readers, and what reads only them
(the preference store, the `tether label` commands), start without torch.
"""

import importlib

from tether.data.readers import (
    DataError,
    ReadReport,
    Source,
    iter_jsonl,
    iter_rows,
    read_demonstrations,
    read_preferences,
    read_prompts,
    split,
    write_jsonl,
)
from tether.data.records import Demonstration, PreferencePair, Prompt, PromptRecord, prompt_text
from tether.data.templates import as_messages, encode_prompt, encode_response, render_prompt

_COLLATE = ("IGNORE_INDEX", "SFTExample", "collate_pairs", "collate_sft", "encode_demonstration", "pad_left", "pad_right")

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "Demonstration",
    "PreferencePair",
    "Prompt",
    "PromptRecord",
    "ReadReport",
    "SFTExample",
    "Source",
    "as_messages",
    "collate_pairs",
    "collate_sft",
    "encode_demonstration",
    "encode_prompt",
    "encode_response",
    "iter_jsonl",
    "iter_rows",
    "pad_left",
    "pad_right",
    "prompt_text",
    "read_demonstrations",
    "read_preferences",
    "read_prompts",
    "render_prompt",
    "split",
    "write_jsonl",
]


def __getattr__(name: str):
    """`from tether.data import collate_sft` and the other names of tether.data.collate, imported when first asked for."""
    if name in _COLLATE:
        return getattr(importlib.import_module("tether.data.collate"), name)
    raise AttributeError(f"module 'tether.data' has no attribute {name!r}")
