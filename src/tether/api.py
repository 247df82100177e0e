"""tether's Python API: one function per stage, taking the stage's config and returning its summary.

    from tether import SFTConfig, sft

    summary = sft(SFTConfig(model="default", data="demos.jsonl", output_dir="runs/sft"))
    summary = sft(output_dir="runs/sft", data=my_dataset, max_steps=50, optim={"lr": 1e-4})

Each function runs the stage exactly as its command does (`tether sft --config F key=value` is
`sft(load_config(SFTConfig, F, ["key=value"]))`), in this process, and returns the dict the command
prints (None when a training stage stopped early for `interrupt_after`, leaving a checkpoint).

Settings come as a config object, as keywords (any key of the stage's config; a section as a dict,
merged into the config's), or both; the result is checked exactly as a YAML file's keys are, so a
mistake raises a ConfigError naming the key. Two kinds of value need no file:

- **rows in memory** for any data key (`data`, `eval_data`, `prompts`, `ptx_data`, a section's
  `early_stop={"prompts": ...}`): a `datasets.Dataset` or a list of dicts, in any format a file may
  have (TRL's formats and tether's own);
- **a loaded model** for any model key (`model`, `policy`, `reference`, `baseline`, ...): a
  transformers `PreTrainedModel`, with its tokenizer as `tokenizer=`.

Both are written into the run's folder first, under `output_dir/inputs/` with their content's hash in
the name (`data-3f2a9c1b0d4e.jsonl`, `model-...`), and the config names those paths. So the run's
config.yaml records what it was trained on, a rerun with the same rows or weights resumes or skips as
the command would, other rows are a changed input (fingerprint.py), and an error in a row names its
line in that file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedModel

import tether.config as C
import tether.pipeline
import tether.stages.bon
import tether.stages.collect
import tether.stages.dpo
import tether.stages.evaluate
import tether.stages.grpo
import tether.stages.judge
import tether.stages.ppo
import tether.stages.revise
import tether.stages.reward
import tether.stages.sft
from tether.config import (
    BoNConfig,
    CollectConfig,
    ConfigError,
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    JudgeConfig,
    PPOConfig,
    ReviseConfig,
    RewardConfig,
    RSConfig,
    RunConfig,
    SFTConfig,
    load_config,
)
from tether.data import DataError
from tether.distributed import apply_launcher
from tether.fingerprint import content_id
from tether.models.loading import ModelError
from tether.training import keeping_record, make_output_dir

__all__ = [
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

INPUTS = "inputs"
"""The folder of a run's output_dir that holds the rows and models given in memory."""


# --------------------------------------------------------------------------- the stages


def sft(config: SFTConfig | None = None, /, *, tokenizer=None, **settings) -> dict | None:
    """Supervised fine-tuning on demonstrations (`tether sft`; stages/sft.py)."""
    return _stage(tether.stages.sft.train_sft, SFTConfig, config, tokenizer, settings, training=True)


def collect(config: CollectConfig | None = None, /, *, tokenizer=None, **settings) -> dict:
    """Sample responses per prompt and label the pairs (`tether collect`; stages/collect.py)."""
    return _stage(tether.stages.collect.collect, CollectConfig, config, tokenizer, settings)


def reward(config: RewardConfig | None = None, /, *, tokenizer=None, **settings) -> dict:
    """Train a Bradley-Terry reward model, or an ensemble (`tether reward train`; stages/reward.py)."""
    return _stage(tether.stages.reward.train_reward, RewardConfig, config, tokenizer, settings, training=True)


def ppo(config: PPOConfig | None = None, /, *, tokenizer=None, **settings) -> dict | None:
    """PPO under a KL penalty to the reference (`tether ppo`; stages/ppo.py)."""
    return _stage(tether.stages.ppo.train_ppo, PPOConfig, config, tokenizer, settings, training=True)


def grpo(config: GRPOConfig | None = None, /, *, tokenizer=None, **settings) -> dict | None:
    """GRPO, RLOO or REINFORCE with group baselines (`tether grpo`; stages/grpo.py)."""
    return _stage(tether.stages.grpo.train_grpo, GRPOConfig, config, tokenizer, settings, training=True)


def dpo(config: DPOConfig | None = None, /, *, tokenizer=None, **settings) -> dict | None:
    """DPO and its variants on preference pairs, or online rounds with online=True (`tether dpo`; stages/dpo.py)."""
    return _stage(tether.stages.dpo.run_dpo, DPOConfig, config, tokenizer, settings, training=True)


def evaluate(config: EvalConfig | None = None, /, *, tokenizer=None, **settings) -> dict | None:
    """A policy against a baseline on held-out prompts (`tether eval`; stages/evaluate.py); None when judge=people
    queued the pairs for labelling."""
    return _stage(tether.stages.evaluate.evaluate, EvalConfig, config, tokenizer, settings)


def judge(config: JudgeConfig | None = None, /, *, tokenizer=None, **settings) -> dict:
    """Label candidate pairs with an AI judge (`tether judge`; stages/judge.py)."""
    return _stage(tether.stages.judge.run_judge, JudgeConfig, config, tokenizer, settings)


def revise(config: ReviseConfig | None = None, /, *, tokenizer=None, **settings) -> dict:
    """Constitutional critique and revision into preference pairs (`tether revise`; stages/revise.py)."""
    return _stage(tether.stages.revise.run_revise, ReviseConfig, config, tokenizer, settings)


def best_of_n(config: BoNConfig | None = None, /, *, tokenizer=None, **settings) -> dict:
    """Best-of-N sampling against the reward sources (`tether bon`; stages/bon.py)."""
    return _stage(tether.stages.bon.best_of_n, BoNConfig, config, tokenizer, settings)


def rejection_sampling(config: RSConfig | None = None, /, *, tokenizer=None, **settings) -> dict | None:
    """Rejection-sampling fine-tuning in rounds (`tether rs`; stages/bon.py)."""
    return _stage(tether.stages.bon.rejection_sampling, RSConfig, config, tokenizer, settings)


def run(config: RunConfig | None = None, /, *, tokenizer=None, **settings) -> dict | None:
    """The whole line, SFT -> collect -> reward -> PPO -> eval, and its report (`tether run`; pipeline.py)."""
    return _stage(tether.pipeline.run_pipeline, RunConfig, config, tokenizer, settings)


# --------------------------------------------------------------------------- settings and inputs in memory


def _stage(fn: Callable, cls: type, config, tokenizer, settings: dict[str, Any], training: bool = False):
    """Build the config (`configure`), then run `fn` on it as the command does: under `accelerate launch` its settings
    first (training stages), and a failure before the stage writes anything leaves its folder as it was."""
    cfg = configure(cls, config, tokenizer=tokenizer, **settings)
    if training:
        apply_launcher(cfg)
    with keeping_record(cfg.output_dir):
        return fn(cfg)


def configure(cls: type, config=None, /, *, tokenizer=None, **settings):
    """`config` (or `cls`'s defaults) with `settings` merged in and checked as a YAML file's keys are; rows and models
    in memory written under output_dir/inputs/ and named by their paths (see the module docstring)."""
    if config is not None and not isinstance(config, cls):
        raise ConfigError(f"expected a {cls.__name__} (or keywords), got a {type(config).__name__}")
    where = f"{cls.__name__} keywords: "
    base = C.to_dict(config) if config is not None else {}
    folder = Path(os.fspath(settings.get("output_dir", base.get("output_dir", _default_output_dir(cls))))) / INPUTS
    staged: list[tuple[Callable[[], None], Callable[[], None]]] = []  # (write, discard) for each input in memory
    try:
        given = _plain(settings, cls, folder, tokenizer, staged, where, "")
        cfg = C.from_dict(cls, _merge(base, given), where=where)
    except BaseException:  # a setting failed its checks: nothing is written, no saved model is left behind
        for _, discard in staged:
            discard()
        raise
    for write, _ in staged:  # only once every setting has passed its checks
        write()
    return cfg


def _default_output_dir(cls: type) -> str:
    return next(f.default for f in dataclasses.fields(cls) if f.name == "output_dir")


def _merge(base: dict, given: dict) -> dict:
    """`base` with `given` laid over it; a section given as a dict is merged key by key, not replaced."""
    merged = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _plain(value, cls: type | None, folder: Path, tokenizer, staged: list, where: str, name: str):
    """`value` as a YAML file would give it: sections (dataclasses) as dicts, paths as text, and each Dataset, list of
    rows for a data key, or loaded model replaced by the path it will be written to (the writes appended to `staged`).
    `cls`: the dataclass whose keys `value` holds, when it is a mapping of settings (for the field types)."""
    if isinstance(value, datasets.DatasetDict):
        raise ConfigError(f"{where}{name}: a DatasetDict holds several splits ({', '.join(value)}); pass one, e.g. {name}=ds['train']")
    if isinstance(value, (datasets.Dataset, datasets.IterableDataset)):
        return _staged_rows(value, folder, name, staged, where)
    if isinstance(value, PreTrainedModel):
        return _staged_model(value, tokenizer, folder, name, staged, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls, value = type(value), C.to_dict(value)
    if isinstance(value, Mapping):
        hints = typing.get_type_hints(cls) if cls is not None else {}
        return {
            k: _plain(v, _section(hints.get(k)), folder, tokenizer, staged, where, f"{name}.{k}" if name else k) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        if cls is None and value and all(isinstance(row, dict) for row in value):  # rows for a data key (a list setting has a class)
            return _staged_rows(value, folder, name, staged, where)
        return [_plain(v, cls, folder, tokenizer, staged, where, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _section(hint) -> type | None:
    """The dataclass a field holds (itself, or the items of a list of them), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _staged_rows(rows: Iterable[dict], folder: Path, name: str, staged: list, where: str) -> str:
    """The JSONL file under `folder` that will hold `rows`, named by `name` and the hash of its bytes."""
    lines = []
    for number, row in enumerate(rows, 1):
        try:
            lines.append(json.dumps(row, ensure_ascii=False))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}{name}: row {number} cannot be written as JSON ({e})") from None
    if not lines:
        raise ConfigError(f"{where}{name}: no rows (the dataset is empty)")
    text = "".join(line + "\n" for line in lines).encode()
    path = folder / f"{name}-{hashlib.sha256(text).hexdigest()[:12]}.jsonl"

    def write() -> None:
        make_output_dir(folder, "output_dir")
        if not (path.is_file() and path.read_bytes() == text):
            path.write_bytes(text)

    staged.append((write, lambda: None))
    return str(path)


def _staged_model(model: PreTrainedModel, tokenizer, folder: Path, name: str, staged: list, where: str) -> str:
    """The folder under `folder` that will hold `model` and `tokenizer` (save_pretrained), named by the hash of the
    saved files; saved now into a temporary folder, moved into place once the config has passed its checks."""
    if tokenizer is None:
        raise ConfigError(f"{where}{name}: a model object needs its tokenizer: pass tokenizer= as well (or the model's folder)")
    if hasattr(model, "peft_config"):
        raise ConfigError(f"{where}{name}: a PEFT model; pass model.merge_and_unload() (or the base model's folder, with lora: settings)")
    temp = Path(tempfile.mkdtemp(prefix="tether-model-"))
    model.save_pretrained(temp, safe_serialization=True)
    tokenizer.save_pretrained(temp)
    path = folder / f"{name}-{content_id(str(temp))[:12]}"  # the content hash a run's fingerprint takes of a model folder

    def write() -> None:
        make_output_dir(folder, "output_dir")
        if path.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            shutil.move(temp, path)

    staged.append((write, lambda: shutil.rmtree(temp, ignore_errors=True)))
    return str(path)
