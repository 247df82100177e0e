"""tether: reinforcement learning from human feedback, end to end.

The Python API (tether.api): one function per stage and its config class, e.g.

    from tether import SFTConfig, sft
    summary = sft(SFTConfig(data="demos.jsonl", output_dir="runs/sft"), max_steps=50)

They load on first use, so that `import tether.config` (and the command line's start) stays light.
"""

import importlib

__version__ = "0.1.0"

PUBLIC = [
    "BoNConfig",
    "CollectConfig",
    "ConfigError",
    "DPOConfig",
    "DataError",
    "EvalConfig",
    "GRPOConfig",
    "JudgeConfig",
    "ModelError",
    "PPOConfig",
    "RSConfig",
    "ReviseConfig",
    "RewardConfig",
    "RunConfig",
    "SFTConfig",
    "best_of_n",
    "collect",
    "dpo",
    "evaluate",
    "grpo",
    "judge",
    "load_config",
    "ppo",
    "rejection_sampling",
    "reward",
    "revise",
    "run",
    "sft",
]


__all__ = [*PUBLIC, "__version__"]


def __getattr__(name: str):
    """`tether.sft`, `from tether import SFTConfig`, ...: the names of tether.api, imported when first asked for."""
    if name in PUBLIC:
        return getattr(importlib.import_module("tether.api"), name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *PUBLIC])
