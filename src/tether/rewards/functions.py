"""Rewards from plain Python functions (rule-based or verifiable rewards).

A reward function takes the prompts (as text), the completions and per-sample metadata,
and returns one float per sample, or None to drop that sample from the update:

    def reward(prompts: list[str], completions: list[str], metadata: list[dict]) -> list[float | None]: ...

It is named as `package.module:function` or `path/to/file.py:function`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

RewardFunction = Callable[[list[str], list[str], list[dict]], list[float | None]]


class RewardFunctionError(ValueError):
    """A reward function that cannot be loaded or returned the wrong thing."""


def load_reward_function(spec: str) -> RewardFunction:
    """Import `module:function` or `file.py:function`."""
    if ":" not in spec:
        raise RewardFunctionError(f"reward_function '{spec}': expected 'package.module:function' or 'path/to/file.py:function'")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.exists():
            raise RewardFunctionError(f"reward_function '{spec}': no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"tether_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise RewardFunctionError(f"reward_function '{spec}': cannot import {where}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardFunctionError(f"reward_function '{spec}': {where} has no function named {name}")
    return fn


def call_reward_function(fn: RewardFunction, prompts: list[str], completions: list[str], metadata: list[dict]) -> list[float | None]:
    """Call `fn` and check it returned one number (or None) per completion."""
    out = list(fn(prompts, completions, metadata))
    if len(out) != len(completions):
        raise RewardFunctionError(f"reward function returned {len(out)} values for {len(completions)} completions")
    for i, v in enumerate(out):
        if v is not None and not isinstance(v, (int, float)):
            raise RewardFunctionError(f"reward function returned {v!r} for sample {i}; expected a number or None")
    return [None if v is None else float(v) for v in out]
