"""Configs: plain YAML mapped onto typed dataclasses, plus `key=value` overrides.

Every stage has one dataclass below. The docstring under a field says what it is (`tether config STAGE`
lists them); the YAML only supplies values. Loading is strict: an unknown key, a value of the wrong type or
outside its range (RANGES), or a key given twice in a file is an error that names the key (and the file and
line), so a typo never silently falls back to a default. A config built in Python is checked the same way.

    cfg = load_config(SFTConfig, "src/tether/configs/sft/hh_harmless.yaml", ["optim.lr=1e-4", "lora.r=8"])
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import textwrap
import types
import typing
from collections.abc import Hashable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the stage's dataclass.

    `key`, when one field is to blame, is its name in the dataclass that raised the error; the message then reads
    "<key> <message>", and `from_dict` puts the section's dotted prefix and the file in front (`ppo.optim.lr must be ...`).
    """

    def __init__(self, message: str, key: str | None = None, where: str = ""):
        super().__init__(f"{where}{key} {message}" if key else f"{where}{message}")
        self.message, self.key, self.where = message, key, where

    def inside(self, prefix: str, where: str) -> ConfigError:
        """This error, raised while building the section at dotted `prefix` ('ppo.' or ''), as read from `where` ('file: ')."""
        if self.key is not None:
            return ConfigError(self.message, prefix + self.key, self.where or where)
        message = f"in {prefix.rstrip('.')}: {self.message}" if prefix and not self.where else self.message
        return ConfigError(message, None, self.where or where)


# --------------------------------------------------------------------------- checks

# The valid values of every int and float field, by field name ("Class.field" where one class differs), in interval
# notation; an Optional field is checked when it is set, and a float must also be finite (no nan, no inf). A second
# string is a hint added to the error. tests/test_config_validation.py checks that every numeric field has an entry.
# A few bounds are wider than a run would use, for tests: lr=0 (the policy never moves), early_stop.max_kl < 0 (a k1
# estimate of a small KL can be negative, so only a negative ceiling stops a run at its first check for sure).
RANGES: dict[str, str | tuple[str, str]] = {
    # sizes and counts
    "batch_size": "[1, inf)",
    "mini_batch_size": "[1, inf)",
    "micro_batch_size": "[1, inf)",
    "ptx_batch_size": "[1, inf)",
    "grad_accum": "[1, inf)",
    "epochs": "[1, inf)",
    "ppo_epochs": "[1, inf)",
    "iterations": "[1, inf)",
    "steps": "[1, inf)",
    "max_steps": "[1, inf)",
    "max_new_tokens": "[1, inf)",
    "max_prompt_tokens": "[1, inf)",
    "max_response_tokens": "[1, inf)",
    "max_model_len": "[1, inf)",
    "max_tokens_per_forward": ("[0, inf)", "0 = no limit"),
    "limit": "[1, inf)",
    "eval_limit": "[1, inf)",
    "offset": "[0, inf)",
    "max_words": "[1, inf)",
    "normalize_samples": "[1, inf)",
    "n": ("[1, inf)", "samples per prompt"),
    "rounds": "[1, inf)",
    "eval_samples": "[1, inf)",
    "responses_per_prompt": ("[2, inf)", "two responses make a pair"),
    "samples_per_prompt": "[1, inf)",
    "prompts_per_step": "[1, inf)",
    "group_size": "[1, inf)",
    "prompts_per_round": "[1, inf)",
    "annotators_per_task": "[1, inf)",
    "ensemble": "[1, inf)",
    "freeze_layers": "[0, inf)",
    "r": "[1, inf)",
    "alpha": "[1, inf)",
    "cpus_per_model": "[1, inf)",
    "gpus_per_model": "[0, inf)",
    "horizon": "[1, inf)",
    "seed": "[0, inf)",
    # schedules, in steps
    "save_every": ("[0, inf)", "0 = only at the end"),
    "eval_every": ("[0, inf)", "0 = only at the end"),
    "samples_every": ("[0, inf)", "0 = never"),
    "every": "[1, inf)",
    "every_near": "[1, inf)",
    "patience": ("[0, inf)", "0 = never"),
    "interrupt_after": "[1, inf)",
    # fractions and probabilities
    "eval_fraction": ("[0, 1)", "the rest is trained on"),
    "warmup_ratio": "[0, 1)",
    "dropout": "[0, 1)",
    "top_p": "(0, 1]",
    "gpu_memory_utilization": "(0, 1)",
    "min_labelled": "(0, 1]",
    "min_strength": "[0, 1)",
    "label_smoothing": "[0, 0.5)",
    "target_agreement": ("(0.5, 1)", "0.5 is a coin flip, 1 never disagrees"),
    "baseline_decay": "[0, 1)",
    "gamma": "[0, 1]",
    "lam": "[0, 1]",
    "eps_low": "(0, 1)",
    # optimisation
    "lr": ("[0, inf)", "0 leaves the weights where they are"),
    "value_lr": "[0, inf)",
    "adam_eps": "(0, inf)",
    "weight_decay": "[0, inf)",
    "max_grad_norm": ("[0, inf)", "0 = no clipping"),
    # coefficients, scales and limits
    "temperature": ("(0, inf)", "use a small value such as 0.01 for near-greedy"),
    "is_cap": ("[1, inf)", "a token vLLM sampled as likely as the trainer would gets weight 1"),
    "init_beta": "[0, inf)",
    "target": "(0, inf)",
    "beta": "[0, inf)",
    "DPOConfig.beta": "(0, inf)",
    "clip_eps": "(0, inf)",
    "value_clip_eps": "(0, inf)",
    "eps_high": "(0, inf)",
    "vf_coef": "[0, inf)",
    "ent_coef": "[0, inf)",
    "ptx_coef": "[0, inf)",
    "reward_clip": "(0, inf)",
    "std_coef": "[0, inf)",
    "center_rewards_coefficient": "[0, inf)",
    "max_kl": "(-inf, inf)",
    "near_kl": "[0, inf)",
    "tolerance": ("[0, inf)", "reward units; 0 keeps the best reading"),
    "max_minutes": ("(0, inf)", "or null for no budget"),
    # any finite number
    "weight": "(-inf, inf)",
    "threshold": "(-inf, inf)",
    "missing_eos_penalty": "(-inf, inf)",
}


def check_fields(cfg) -> None:
    """Check every field of config dataclass `cfg` against its type hint (as a YAML value is: an int becomes a float in
    a float field) and its range in RANGES. Every config class calls it first in __post_init__, so a config built in
    Python is checked as one read from a file; a stage's `chat_template`, when set, must name a file. Raises ConfigError
    naming the field, its value and what was expected."""
    cls = type(cfg)
    for name, tp in _field_types(cls).items():
        value = _coerce(tp, getattr(cfg, name), name, "")
        setattr(cfg, name, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rule = RANGES.get(f"{cls.__name__}.{name}", RANGES.get(name, "(-inf, inf)"))
        interval, hint = rule if isinstance(rule, tuple) else (rule, "")
        expected = _expected(interval, isinstance(value, int))
        if isinstance(value, float) and not math.isfinite(value):
            expected = f"a finite number {expected}".rstrip()
        elif _inside(value, interval):
            continue
        raise ConfigError(f"must be {expected}, got {value!r}" + (f" ({hint})" if hint else ""), key=name)
    template = getattr(cfg, "chat_template", None)  # the stages that load a tokenizer: a file the run can read
    if template is not None and not Path(resolve_path(template)).is_file():
        raise ConfigError(
            f"{template}: no such file{did_you_mean(resolve_path(template))}; expected a Jinja chat template file (null = the model's own)",
            key="chat_template",
        )


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _bounds(interval: str) -> tuple[float, float]:
    low, high = interval[1:-1].split(",")
    return float(low), float(high)


def _inside(value: float, interval: str) -> bool:
    """Whether `value` lies in `interval`, e.g. '[1, inf)' or '(0, 1]'."""
    low, high = _bounds(interval)
    above = low < value or (interval[0] == "[" and value == low)
    below = value < high or (interval[-1] == "]" and value == high)
    return above and below


def _expected(interval: str, integer: bool) -> str:
    """'[1, inf)' reads 'at least 1' for an integer, '>= 1' for a number; '(0, inf)' reads '> 0'; '(-inf, inf)' reads ''."""
    low, high = _bounds(interval)
    text = interval[1:-1].split(",")[0].strip()
    if high == math.inf and low == -math.inf:
        return ""
    if high == math.inf:
        return (f"at least {text}" if integer else f">= {text}") if interval[0] == "[" else f"> {text}"
    return f"in {interval}"


# --------------------------------------------------------------------------- pieces


@dataclass
class LoraSettings:
    """Low-rank adapters (Hu et al. 2021) through peft."""

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""
    r: int = 16
    """Rank of each adapter."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout inside the adapters (keep 0 for RL: dropout makes log-probs noisy)."""
    target_modules: str = "all-linear"
    """Which linear layers get adapters: 'all-linear' or a comma-separated list of names."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class GenerationSettings:
    """How responses are sampled."""

    max_new_tokens: int = 48
    """Longest response in tokens; a response cut here did not finish (no EOS)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs for RL are computed with logits / temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 samples from the full distribution, as PPO assumes)."""
    batch_size: int = 16
    """Prompts generated together in one batch."""
    max_prompt_tokens: int = 192
    """Prompts longer than this are cut from the left (the end holds the question)."""
    stop_strings: list[str] = field(default_factory=list)
    """End a response at the first of these strings (kept in the response); it then counts as finished."""

    def __post_init__(self) -> None:
        check_fields(self)
        if any(not s for s in self.stop_strings):
            raise ConfigError(
                f"must all be non-empty (an empty one would end every response at once), got {self.stop_strings!r}", key="stop_strings"
            )


@dataclass
class VLLMSettings:
    """vLLM as the sampler, for `engine=vllm` (rollout/vllm_engine.py; the extra tether[vllm]; a CUDA GPU)."""

    gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM takes for its copy of the weights and its KV cache; the rest is the trainer's."""
    max_model_len: int | None = None
    """Longest prompt + response vLLM plans for; None = generation.max_prompt_tokens + generation.max_new_tokens."""
    dtype: str = "auto"
    """vLLM's weight dtype ('auto' = the model's own, 'bfloat16', 'float16', 'float32')."""
    is_cap: float = 2.0
    """Each token's policy-gradient term is weighed by min(pi_old / pi_vllm, is_cap): truncated importance sampling for
    the log-prob gap between vLLM's kernels and the trainer's."""

    def __post_init__(self) -> None:
        check_fields(self)


def check_engine(cfg) -> None:
    if cfg.engine != "vllm":
        return
    if cfg.parallel.fsdp:
        raise ConfigError(
            "engine=vllm pushes the whole policy into vLLM after every update; with parallel.fsdp=true it is sharded: choose one"
        )


@dataclass
class ParallelSettings:
    """How a training stage spreads the model it trains over its processes and memory (`parallel:` in every training
    stage: sft, reward, ppo, grpo, dpo). Sharding (FSDP2, distributed.shard_blocks) and offloading change where the
    weights, gradients and Adam moments live and activation checkpointing what is recomputed, never the updates (up to
    rounding; the fingerprint ignores offload_trainable and activation_checkpointing). The models a stage does not train
    are placed by its own keys (offload_frozen, placement)."""

    fsdp: bool = False
    """With several processes (--num-processes), shard each of the trained model's transformer blocks (weights, gradients,
    Adam moments) across them (PyTorch FSDP2): a block's weights are gathered only while it runs, so each process holds
    about 1/N of the blocks' memory. Full fine-tuning only (lora.enabled=false); a no-op in one process."""
    zero_stage: Literal[2, 3] = 3
    """With fsdp=true, what a block does with its gathered weights between its forward and backward passes: 3 = give them
    back and gather them again for the backward (ZeRO-3: the least memory); 2 = keep them whole until the backward (ZeRO-2's
    trade, as FSDP's SHARD_GRAD_OP: one gather per micro-batch instead of two, for one whole block set held at a time).
    Gradients and optimizer moments are sharded either way."""
    offload_trainable: bool = False
    """With fsdp=true, keep the blocks' shards, their gradients and Adam moments in CPU memory and run the optimizer step
    there (FSDP2's CPUOffloadPolicy; ZeRO-Offload with DeepSpeed's offload_param and offload_optimizer set to cpu): a block
    is copied to the accelerator only while it computes. For models whose training state does not fit the accelerators;
    like fsdp, a no-op in one process."""
    activation_checkpointing: bool = False
    """Recompute each trained model's block activations in the backward pass: far less activation memory, about a third
    more compute per update (transformers' gradient checkpointing, non-reentrant). In one process too."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.offload_trainable and not self.fsdp:
            raise ConfigError(
                "offload_trainable=true moves the sharded blocks' training state to CPU memory; set fsdp=true (and "
                "lora.enabled=false) or leave offload_trainable off"
            )
        if self.zero_stage == 2 and not self.fsdp:
            raise ConfigError(
                "zero_stage=2 chooses how fsdp=true holds a block's weights; set fsdp=true (and lora.enabled=false) "
                "or leave zero_stage at 3"
            )


def check_parallel(cfg) -> None:
    """The checks of a stage's `parallel` section that need its other keys (the section checks its own)."""
    if cfg.parallel.fsdp and cfg.lora.enabled:
        raise ConfigError(
            "parallel.fsdp=true shards full fine-tuning; with LoRA the trained weights are small and every process "
            "keeps them whole: set lora.enabled=false, or leave parallel.fsdp off"
        )


@dataclass
class OptimSettings:
    """AdamW with warm-up and a decaying schedule."""

    lr: float = 2e-5
    """Peak learning rate."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up, to 0 at the last step."""
    warmup_ratio: float = 0.05
    """Fraction of steps spent warming up linearly from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 = off)."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ColumnNames:
    """Which of your columns holds each field tether reads (`dataset.columns`), e.g. {prompt: question, chosen: good,
    rejected: bad}; {text: content} is TRL's dataset_text_field. A column left unset is read under its own name."""

    text: str | None = None
    """Plain language-modelling text (TRL's 'text')."""
    messages: str | None = None
    """A conversation: a list of {role, content} messages (TRL's 'messages')."""
    prompt: str | None = None
    """The prompt: text or messages."""
    completion: str | None = None
    """The reply to imitate (TRL's prompt-completion and unpaired preference rows)."""
    response: str | None = None
    """The reply to imitate (tether's own demonstration rows)."""
    chosen: str | None = None
    """The preferred reply (or the whole preferred exchange when there is no prompt column)."""
    rejected: str | None = None
    """The other reply (or exchange)."""
    label: str | None = None
    """Whether the completion is good (TRL's unpaired preference rows)."""

    def __post_init__(self) -> None:
        check_fields(self)
        named = [value for value in vars(self).values() if value is not None]
        for key, value in vars(self).items():
            if value is not None and (not value.strip() or named.count(value) > 1):
                raise ConfigError(f"must be a column name that no other field uses, got {value!r}", key=key)


@dataclass
class DatasetSettings:
    """How a stage reads its data (`dataset:` in every stage that reads data): the split and subset of a Hugging Face
    dataset (a hub id 'org/name' in the local cache, a dataset folder or a save_to_disk folder) and the names of the
    columns. JSON Lines, JSON, CSV, parquet and arrow files have one split and no subset."""

    split: str | None = None
    """The split of the training data (None = 'train', or the only split there is)."""
    eval_split: str | None = None
    """The split of the held-out data (reward's and dpo's eval_data, ppo's and grpo's early_stop.prompts, rs's eval_prompts) when it is a
    dataset with splits (None = 'test'); a file has one split, read whatever this says."""
    subset: str | None = None
    """The subset (configuration) of a hub dataset, load_dataset's `name`, e.g. 'harmless-base' (None = its default)."""
    columns: ColumnNames = field(default_factory=ColumnNames)
    """Your column names for the fields tether reads."""

    def __post_init__(self) -> None:
        check_fields(self)

    def read_args(self, held_out: bool = False) -> dict[str, Any]:
        """The keyword arguments of tether.data's readers: split (eval_split or 'test' when `held_out`), subset, columns."""
        columns = {key: value for key, value in vars(self.columns).items() if value is not None}
        return {"split": (self.eval_split or "test") if held_out else self.split, "subset": self.subset, "columns": columns}


# --------------------------------------------------------------------------- stages


@dataclass
class SFTConfig:
    """`tether sft`: next-token cross-entropy on response tokens."""

    model: str = "default"
    """Base model: 'default' (SmolLM2-135M-Instruct), a local Hugging Face directory or a hub id org/name in the local Hugging Face cache."""
    data: str = "shared:alpaca_seed_tasks.jsonl"
    """Demonstrations: a JSONL/JSON(.gz), CSV, parquet or arrow file, a dataset folder or a cached hub id org/name, in TRL's
    language-modeling or prompt-completion format, tether's, Alpaca's or Self-Instruct's (tether.data.readers). 'shared:' = ../shared/data."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `data` and its demonstrations are read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/sft"
    """Where checkpoints, metrics.jsonl, summary.json and the final model go."""
    limit: int | None = None
    """Use only the first N demonstrations (None = all)."""
    eval_fraction: float = 0.1
    """Held-out fraction for eval loss."""
    max_prompt_tokens: int = 192
    """Prompt tokens kept (cut from the left)."""
    max_response_tokens: int = 128
    """Response tokens kept (cut from the right)."""
    epochs: int = 1
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None = epochs decide)."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    bucket_by_length: bool = True
    """Within windows of 32 batches, batch examples of similar length together (less padding); batches are then shuffled."""
    optim: OptimSettings = field(default_factory=OptimSettings)
    """Optimizer and schedule."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA instead of full fine-tuning; the adapter is merged into the saved model."""
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    """Sharding over the processes (FSDP), CPU offload of the training state and activation checkpointing."""
    eval_every: int = 0
    """Compute eval loss every N steps (0 = only at the end)."""
    save_every: int = 25
    """Write a resumable checkpoint every N optimizer steps (0 = only at the end)."""
    interrupt_after: int | None = None
    """Stop as if interrupted after N steps (leaves a checkpoint; used to test resume)."""
    resume: bool = True
    """Resume from a checkpoint in output_dir (an interrupted run with the same settings and inputs); false = discard it and start again."""
    keep_checkpoint: bool = False
    """Keep output_dir/checkpoint after the final model is written (by default it is removed then)."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own); the saved model keeps it."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision: bf16 autocast keeps fp32 master weights and runs ~2x faster on modern CPUs; fp16, for GPUs
    without bf16 (V100, T4), adds dynamic loss scaling to every training stage (training.LossScaler)."""
    seed: int = 0
    """Seeds data order, initialisation and dropout."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Also send metrics.jsonl's rows to TensorBoard (<output_dir>/tensorboard) or Weights & Biases (optional extras)."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_parallel(self)


def check_offload(cfg) -> None:
    if cfg.offload_frozen and getattr(cfg, "placement", "local") == "ray":
        raise ConfigError(
            "offload_frozen keeps the frozen models in this process's CPU memory and placement=ray moves them to Ray "
            "actors (ray.gpus_per_model=0 keeps them off the GPUs there): choose one"
        )
    if cfg.offload_frozen and getattr(cfg, "value_model", None) == "reward_adapter":
        raise ConfigError(
            "value_model=reward_adapter trains an adapter on the reward model's weights, which offload_frozen keeps "
            "off the accelerator: set value_model=policy_head or value_model=reward_model, or leave offload_frozen off"
        )


@dataclass
class AnnotatorSettings:
    """The simulated annotator: gold score -> noisy Bradley-Terry choice."""

    kind: Literal["simulated"] = "simulated"
    """Who labels the pairs (people and AI judges come with the feedback issue)."""
    temperature: float | None = None
    """Bradley-Terry temperature on gold margins; None = calibrate to target_agreement."""
    target_agreement: float = 0.75
    """Expected agreement with the gold ordering when temperature is None (people: ~0.7-0.8)."""
    seed: int = 0
    """Seeds the annotator's coin flips."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class CollectConfig:
    """`tether collect`: sample K responses per prompt and label pairs."""

    model: str = "default"
    """Model that samples the responses (the SFT model in the pipeline)."""
    prompts: str = "shared:alpaca_seed_tasks.jsonl"
    """Prompts file (any format `tether` reads)."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/collect"
    """Writes samples.jsonl, preferences.jsonl, summary.json."""
    limit: int | None = None
    """Use only the first N prompts."""
    responses_per_prompt: int = 2
    """K >= 2 samples per prompt; all K*(K-1)/2 pairs are labelled."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings."""
    engine: Literal["tether", "vllm"] = "tether"
    """Who samples: 'tether' = tether's own sampler, on any device; 'vllm' = vLLM on a CUDA GPU (`vllm`; extra tether[vllm])."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM's share of GPU memory and dtype, for engine=vllm."""
    annotator: AnnotatorSettings = field(default_factory=AnnotatorSettings)
    """Who labels."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own)."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision for generation."""
    seed: int = 0
    """Seeds sampling."""
    db: str | None = None
    """Preference store (a SQLite file or a postgresql:// URL) that also gets the prompts, responses and comparison tasks; None = JSONL only."""
    annotators_per_task: int = 3
    """Distinct annotators each comparison task written to `db` asks for."""
    store_judgements: bool = False
    """Also record the simulated annotator's judgement of each task in `db` (as annotator kind 'simulated'); off when
    people are to label the tasks. `tether run` stores its simulated rounds in <round>/collect/preferences.db."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class RewardConfig:
    """`tether reward train`: SFT trunk + scalar head, Bradley-Terry loss."""

    model: str = "default"
    """Trunk to start from (the SFT model in the pipeline)."""
    data: str = "runs/collect/preferences.jsonl"
    """Preference pairs: a file, dataset folder or cached hub id, in TRL's preference formats (explicit or implicit prompt,
    plain or conversational) or HH-RLHF's."""
    eval_data: str | None = None
    """Held-out pairs; None = split eval_fraction off `data`."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `data` and `eval_data` (dataset.eval_split) are read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/reward"
    """Writes the reward model (HF directory + tether_reward.json), metrics, summary."""
    limit: int | None = None
    """Use only the first N pairs."""
    eval_fraction: float = 0.15
    """Held-out fraction when eval_data is None."""
    normalize_data: str | None = None
    """Responses whose rewards define mean 0 / std 1 (policy samples, e.g. collect's samples.jsonl; read with their own
    column names and default split, not `dataset`'s); None = the pairs' responses."""
    normalize_samples: int = 512
    """At most this many of those responses (a random subset) are scored to fit the normalisation."""
    max_prompt_tokens: int = 192
    """Prompt tokens kept (cut from the left, so the response is never cut by this)."""
    max_response_tokens: int = 128
    """Response tokens kept."""
    epochs: int = 1
    """Passes over the training pairs."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    batch_size: int = 8
    """Pairs per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    group_by_prompt: bool = True
    """Keep the pairs of one prompt in the same batch and score each response once (InstructGPT sec. 3.5)."""
    pack_prompts: bool = True
    """Score the responses to one prompt in one row, the prompt computed once (block-diagonal attention; same rewards, less compute)."""
    bucket_by_length: bool = True
    """Within windows of 32 batches, batch pairs of similar length together (less padding); batches are then shuffled."""
    max_tokens_per_forward: int = 0
    """Cut a micro-batch whose padded size (rows x longest row) passes this many tokens into smaller forwards
    with gradients accumulated (same result, bounded memory); 0 = no limit."""
    label_smoothing: float = 0.0
    """Label-smoothing epsilon for noisy labels: -(1-eps) log s(d) - eps log s(-d); 0 = plain Bradley-Terry."""
    center_rewards_coefficient: float | None = None
    """Weight of the centring term mean((r_c + r_r)^2) (Eisenstein et al. 2023); None = off."""
    skip_bad_rows: bool = False
    """Skip malformed pairs (empty or identical responses, bad fields) with a count in the log and summary, instead of stopping."""
    ties: Literal["skip", "half"] = "skip"
    """Pairs marked {"tie": true}: drop them, or train them towards equal rewards (target 0.5, Christiano et al. 2017)."""
    ensemble: int = 1
    """Train N reward models with seeds seed..seed+N-1 (an ensemble: its mean and spread reach PPO)."""
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=1e-5))
    """Optimizer and schedule."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA on the trunk (the head is always trained)."""
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    """Sharding over the processes (FSDP), CPU offload of the training state and activation checkpointing of the trunk."""

    def __post_init__(self) -> None:
        check_fields(self)
        check_parallel(self)

    freeze_layers: int = 0
    """Freeze the embeddings and the lowest N transformer blocks (cheaper, less overfitting)."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only the final model)."""
    resume: bool = True
    """Resume from a checkpoint in output_dir (an interrupted run with the same settings and inputs); false = discard it and start again."""
    keep_checkpoint: bool = False
    """Keep output_dir/checkpoint after the final model is written (by default it is removed then)."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own); the saved model keeps it."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 0
    """Seeds data order and head initialisation."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Also send metrics.jsonl's rows to TensorBoard (<output_dir>/tensorboard) or Weights & Biases (optional extras)."""


@dataclass
class KLSettings:
    """The KL leash: per-token penalty -beta * KL(pi || pi_ref)."""

    init_beta: float = 0.05
    """Starting KL coefficient."""
    adaptive: bool = True
    """Adapt beta towards `target` (Ziegler et al. 2019); False = fixed beta."""
    target: float = 4.0
    """Target KL in nats per response for the adaptive controller."""
    horizon: int = 10000
    """Controller horizon in episodes: larger = slower adaptation."""
    estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator (Schulman 2020)."""
    penalty: Literal["reward", "loss"] = "reward"
    """Where the KL goes: into the per-token reward (classic RLHF), or as a loss term beta * KL(pi || pi_ref) on the policy."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class RaySettings:
    """Ray for `placement=ray` (placement.py; the extra tether[ray])."""

    address: str | None = None
    """None starts a Ray instance on this machine for the run; 'auto' joins the cluster this machine belongs to
    (`ray start --head` on one node, `ray start --address=HEAD:6379` on the others), or give HEAD:6379."""
    gpus_per_model: float = 0.0
    """GPUs each frozen model's actor asks Ray for (1 = a GPU of its own; 0 = run on CPU)."""
    cpus_per_model: int = 1
    """CPU cores each actor asks Ray for (also its torch threads)."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class EarlyStopSettings:
    """The Goodhart guard (training.GoodhartGuard, in PPO and GRPO): watch held-out prompts, keep the best policy, stop
    when it turns (or when time is up). Its ten keys, by what they decide (defaults in brackets):

    - whether and what it checks: `prompts` [None = no guard], `limit` [32 prompts a check];
    - when it checks: `every` [5 steps, and after the last], more often near the KL ceiling: `near_kl` [None = never]
      with `every_near` [1 step];
    - which checked policy it keeps: the best reward inside `max_kl`, or with `tolerance` [0] the latest within it of
      the best;
    - when it stops, rolled back to the kept policy: held-out KL past `max_kl` [None = no ceiling], `patience` [2]
      regular checks without a new best reward (0 = never), KL past the peak of the fitted gold curve (`gold_peak`
      [false]; needs a gold scorer), or the next check ending past `max_minutes` [None = no budget].

    None of them changes the training itself: the checks only watch (tests/stages/test_ppo_options.py)."""

    prompts: str | None = None
    """Held-out prompts to watch (None = off)."""
    every: int = 5
    """Evaluate every N steps (and after the last)."""
    near_kl: float | None = None
    """Check more often near the KL ceiling: after a check that reads a held-out KL of at least this many nats, the next
    one comes `every_near` steps later (or at the next multiple of `every`, if sooner); None = every `every` steps only.
    KL can climb past `max_kl` between two sparse checks, and the guard can then keep only a policy well inside it."""
    every_near: int = 1
    """Steps between checks once the last one read at least `near_kl` nats. These extra checks keep and stop as the
    others do, but `patience` does not count them, so checking more often does not end a run sooner."""
    limit: int = 32
    """Held-out prompts used per evaluation."""
    max_kl: float | None = None
    """Hard KL ceiling in nats per response on the held-out prompts: above it, stop and roll back to the best policy."""
    patience: int = 2
    """Stop and roll back to the best policy after this many evaluations without a new best held-out reward (0 = never);
    the extra checks near the ceiling (`near_kl`) are not counted."""
    tolerance: float = 0.0
    """Keep a later check whose held-out reward reads within this much of the best reading so far (reward units; 0 = keep
    the best reading). Every check reads the same prompts, so the best of several readings is partly the luckiest: with
    about one check's standard error (PPO logs it as `held_out/reward_se`), the guard keeps, inside the KL ceiling, the policy trained
    longest among those its readings cannot tell apart."""
    max_minutes: float | None = None
    """Wall-clock budget in minutes from the stage's start (a resumed run starts its clock again): the run stops,
    rolled back to the best checked policy, when the next held-out check (with no held-out prompts: the next step)
    would end past it, predicted from the mean step and the last check so far. The final save comes after it.
    None = no budget."""
    gold_peak: bool = False
    """With a gold scorer (the simulated setting, feedback/gold.py): from the 4th check on (the start counts), fit Gao et
    al.'s RL curve gold = c + d(alpha - beta ln d), d = sqrt(KL), to the checks so far (eval/overopt.py) and stop, rolled
    back to the best policy, once the held-out KL passes the KL where the fitted gold peaks."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PPOConfig:
    """`tether ppo`: the policy, a frozen reference, a frozen reward model, a value model."""

    policy: str = "default"
    """Policy start and reference (the SFT model)."""
    reward: list[RewardSourceSettings] = field(default_factory=lambda: [RewardSourceSettings(type="model", path="runs/reward/model")])
    """Reward sources summed with their weights (rewards/sources.py; metadata is {} in PPO): a reward model or ensemble
    ([{type: model, path: runs/reward/model}], std_coef: k for an ensemble's mean - k * std), a Python function
    ([{type: function, path: my_rewards.py:score}], None drops the episode), a judge, or several. One `type: model` source
    alone is scored on the policy's own token ids (its tokenizer must be the policy's; its batch and token limits do not
    apply) and may start the value model; otherwise each source reads the decoded text."""
    reward_model: InitVar[str | None] = None  # refused: reward: [{type: model, path: X}] (REPLACED_KEYS)
    reward_function: InitVar[str | None] = None  # refused: reward: [{type: function, path: X}]
    reward_std_coef: InitVar[float | None] = None  # refused: the model source's std_coef
    prompts: str = "shared:alpaca_seed_tasks.jsonl"
    """Training prompts: any row with a prompt, from a file, dataset folder or cached hub id."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` and early_stop.prompts (dataset.eval_split) are read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/ppo"
    """Writes checkpoints, metrics.jsonl, summary.json and the final policy."""
    limit: int | None = None
    """Use only the first N prompts."""
    steps: int = 20
    """PPO iterations (rollout + update)."""
    batch_size: int = 16
    """Episodes per rollout (batch_size / samples_per_prompt prompts)."""
    samples_per_prompt: int = 1
    """Responses sampled for each prompt of a rollout; batch_size must be a multiple. With 2 or more, `prompt_baseline` can
    take each prompt's own reward level out of the advantages."""
    prompt_baseline: bool = False
    """Subtract from each score the mean score of the other responses to the same prompt (the leave-one-out baseline of
    RLOO, Ahmadian et al. 2024) before GAE, so the advantages carry how a response compares with its siblings, not how
    easy its prompt is. Needs samples_per_prompt >= 2. The value function then predicts this centred return."""
    mini_batch_size: int = 8
    """Episodes per gradient step."""
    micro_batch_size: int = 2
    """Episodes per forward/backward pass: a minibatch runs as micro-batches, each loss weighted by its share of the
    minibatch's tokens, so the gradient is the minibatch's and only a micro-batch's activations are held at once."""
    freeze_layers: int = 0
    """Keep the embeddings and the lowest N blocks (their LoRA adapters too) frozen: the backward pass stops above them,
    so an update costs less (with 15 of SmolLM2's 30 blocks, about a third less). A value model with its own trunk
    (`value_model` reward_adapter or reward_model) has its lowest N blocks frozen too."""
    reuse_frozen_states: bool = True
    """With freeze_layers: record once per rollout what the frozen lower blocks compute (their output at every position,
    (batch_size, tokens, hidden) activations: 10 MB at 48 episodes of 96 tokens and SmolLM2's 576) and start the
    reference's pass and every update pass above them. The same numbers (checked once before training on a probe; off
    with a note where they differ), for the lower blocks' forward in each PPO epoch. Off under parallel.fsdp."""
    reuse_sampling_pass: bool = True
    """Take log pi_old, the policy-head values and the entropy from the sampling pass (rollout/sampling.py) instead of a
    second forward over the rollout: one pass fewer per step, equal up to rounding in fp32. With stop strings (sampled by
    HF generate) the forward runs anyway. Set false under bf16/fp16, where incremental decoding rounds differently."""
    ppo_epochs: int = 2
    """Passes over each rollout batch."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings (temperature also divides logits in every log-prob)."""
    kl: KLSettings = field(default_factory=KLSettings)
    """KL penalty and controller."""
    gamma: float = 1.0
    """Discount in GAE."""
    lam: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    value_clip_eps: float = 0.2
    """Value clipping around the old values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    value_lr: float | None = None
    """Learning rate of the value head's (or value model's) own weights; None = optim.lr. A critic usually learns
    faster than the policy (OpenRLHF's defaults differ 18x); weights shared with the policy keep optim.lr."""
    whiten_advantages: bool = True
    """Normalise advantages per batch (mean 0, std 1)."""
    whiten_rewards: bool = False
    """Scale per-token rewards by their batch std before GAE, without shifting the mean (keeps the sign of 'stop here')."""
    ent_coef: float = 0.0
    """Entropy bonus weight: loss -= ent_coef * mean token entropy (against mode collapse); 0 = off."""
    ptx_data: str | None = None
    """Demonstrations for the pretraining/SFT loss mix (InstructGPT's PPO-ptx; any format SFT reads, with its own column
    names and default split, not `dataset`'s, which are the prompts'); None = off."""
    ptx_coef: float = 0.0
    """Weight of that SFT loss in every minibatch."""
    ptx_batch_size: int = 4
    """Demonstrations per minibatch for the ptx loss."""
    early_stop: EarlyStopSettings = field(default_factory=EarlyStopSettings)
    """Held-out reward and KL every N steps; best checkpoint kept; stop on a KL ceiling or a falling reward."""
    reward_clip: float = 10.0
    """Clip RM scores to [-c, c] before use."""
    missing_eos_penalty: float | None = None
    """Score given to responses that hit max_new_tokens without EOS (None = use the RM's score)."""
    value_model: Literal["policy_head", "reward_adapter", "reward_model"] = "policy_head"
    """Value function: 'policy_head' = a zero-initialised head on the policy trunk (no extra forward); 'reward_adapter' = the
    reward model's frozen weights (shared, not copied) + a LoRA adapter (`lora` r/alpha/targets) + a copy of its head, so the
    value starts as the reward model; 'reward_model' = a full trainable copy of the reward model."""
    share_weights: bool = True
    """Hold reward-model tensors that equal the frozen base's (frozen layers, embeddings) once, not twice (models/sharing.py)."""
    placement: Literal["local", "ray"] = "local"
    """Where the frozen models run: 'local' = in this process, sharing equal weights (share_weights); 'ray' = the reward
    model, and with full fine-tuning the reference, each in its own Ray actor with its own GPUs (`ray`; placement.py), as
    OpenRLHF and veRL place them, for models that do not fit beside the policy. With LoRA the reference is the policy's
    own weights and stays. One process (no --num-processes)."""
    ray: RaySettings = field(default_factory=RaySettings)
    """Ray's address and each actor's GPUs and CPU cores, for placement=ray."""
    engine: Literal["tether", "vllm"] = "tether"
    """Who samples the rollouts: 'tether' = tether's own sampler (rollout/sampling.py), on any device; 'vllm' = a vLLM engine
    beside the policy on its GPU, its weights synced after every update, the log-prob gap between the engines corrected by
    truncated importance sampling (`vllm`; rollout/vllm_engine.py; extra tether[vllm]; one process, no parallel.fsdp)."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM's share of GPU memory, its dtype and the importance-weight cap, for engine=vllm."""
    offload_frozen: bool = False
    """Hold the frozen models (the reward model; with full fine-tuning the reference) in CPU memory and bring each layer's
    weights to the accelerator only while it computes (accelerate's cpu_offload; ZeRO-Offload's parameter offload):
    accelerator memory is left to the policy, for a weight transfer in every forward pass of those models. Their tensors are
    then not shared with the policy's base (share_weights). On a machine without an accelerator the weights stay put."""
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    """Sharding over the processes (FSDP), CPU offload of the training state and activation checkpointing of the
    policy (checkpointing: of a value model with its own trunk too). Sharded, the policy's blocks are gathered whole once
    per rollout for sampling; the reference, reward and value models stay whole in every process."""
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=1e-4, warmup_ratio=0.0, schedule="linear"))
    """Optimizer and schedule (annealed to 0 over `steps`)."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(enabled=True))
    """LoRA policy: the reference is the same weights with the adapter off (one copy in memory)."""
    save_every: int = 10
    """Checkpoint every N steps."""
    samples_every: int = 5
    """Append the batch's (prompt, response, reward) to samples.jsonl every N steps (and at step 1); 0 = never."""
    interrupt_after: int | None = None
    """Stop as if interrupted after N steps (leaves a checkpoint; used to test resume)."""
    resume: bool = True
    """Resume from a checkpoint in output_dir (an interrupted run with the same settings and inputs); false = discard it and start again."""
    keep_checkpoint: bool = False
    """Keep output_dir/checkpoint after the final model is written (by default it is removed then)."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own); the saved model keeps it."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 0
    """Seeds sampling and prompt order."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Also send metrics.jsonl's rows to TensorBoard (<output_dir>/tensorboard) or Weights & Biases (optional extras)."""

    def __post_init__(self, reward_model, reward_function, reward_std_coef) -> None:  # the refused old keys (InitVars)
        refuse_replaced(self, reward_model=reward_model, reward_function=reward_function, reward_std_coef=reward_std_coef)
        check_fields(self)
        if not self.reward:
            raise ConfigError(
                "set reward: a list of reward sources, e.g. reward=[{type: model, path: runs/reward/model}] "
                "or reward=[{type: function, path: my_rewards.py:score}] (rewards/sources.py)"
            )
        if self.value_model != "policy_head" and reward_model_source(self.reward) is None:
            raise ConfigError(
                f"value_model={self.value_model} starts from the reward model: set reward to one source of type model "
                "(reward=[{type: model, path: runs/reward/model}]), or use value_model=policy_head"
            )
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("ptx_coef > 0 needs ptx_data (a demonstrations file, e.g. the SFT data)")
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size}).")
        if self.batch_size % self.samples_per_prompt:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of samples_per_prompt ({self.samples_per_prompt}).")
        if self.prompt_baseline and self.samples_per_prompt < 2:
            raise ConfigError(
                f"prompt_baseline needs samples_per_prompt >= 2 (got {self.samples_per_prompt}): "
                "a prompt's baseline is the mean score of its other responses."
            )
        if self.placement == "ray" and self.value_model == "reward_adapter":
            raise ConfigError(
                "placement=ray runs the reward model in its own actor, so the value model can not be an adapter on its "
                "weights here: set value_model=policy_head or value_model=reward_model (a trainable copy in this process)"
            )
        if self.placement == "ray" and self.parallel.fsdp:
            raise ConfigError("placement=ray runs in one process; parallel.fsdp=true shards over several: choose one")
        check_offload(self)
        check_engine(self)
        check_parallel(self)


@dataclass
class DPOConfig:
    """`tether dpo`: direct preference optimisation on preference pairs (Rafailov et al. 2023; stages/dpo.py)."""

    policy: str = "default"
    """Model to train (the SFT model); by default also the reference."""
    reference: str = "policy"
    """The frozen reference: 'policy' (the policy's starting weights: with LoRA the same weights with the adapter off, else a
    frozen copy), a model directory, or 'none' (reference-free: the reference log-ratio is taken as 0)."""
    precompute_reference: bool = False
    """Compute the reference log-probs of every pair once before training (kept in the run dir) and hold no reference model while training."""
    data: str = "runs/collect/preferences.jsonl"
    """Preference pairs: a file, dataset folder or cached hub id, in TRL's preference formats (explicit or implicit prompt,
    plain or conversational) or HH-RLHF's."""
    eval_data: str | None = None
    """Held-out pairs for eval/accuracy and eval/loss; None = split eval_fraction of the prompts off `data`."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `data`, `eval_data` (dataset.eval_split) and online `prompts` are read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/dpo"
    """Writes checkpoints, metrics.jsonl, summary.json and the final policy (model/)."""
    limit: int | None = None
    """Use only the first N pairs of `data`."""
    eval_limit: int | None = None
    """Use only the first N held-out pairs."""
    eval_fraction: float = 0.1
    """Held-out fraction of the prompts when eval_data is None."""
    max_prompt_tokens: int = 192
    """Prompt tokens kept (cut from the left, so the last turn stays)."""
    max_response_tokens: int = 128
    """Response tokens kept (cut from the right)."""
    loss: Literal["sigmoid", "ipo", "hinge", "conservative"] = "sigmoid"
    """sigmoid = DPO; ipo = IPO (Azar et al. 2023); hinge = SLiC's hinge; conservative = cDPO with `label_smoothing` (losses/dpo.py)."""
    ipo_token_mean: bool = False
    """loss=ipo: take each response's log-ratio as a per-token mean (its sum over its tokens / their count), as TRL's IPO
    does (since v0.7.11), so a beta tuned with TRL carries over; false (the default, kept so earlier runs give the same
    results) takes IPO's equation on the summed log-probs, where the target gap 1/(2 beta) does not scale with length."""
    beta: float = 0.1
    """Strength of the KL leash: the implicit reward is beta * (log pi - log pi_ref)."""
    label_smoothing: float = 0.0
    """Conservative DPO's assumed label-flip rate eps in (0, 0.5); only with loss=conservative."""
    epochs: int = 1
    """Passes over the training pairs."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None = epochs decide)."""
    batch_size: int = 8
    """Pairs per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    pack_prompts: bool = True
    """Put chosen and rejected after one copy of the prompt (block-diagonal attention): same log-probs, less compute."""
    bucket_by_length: bool = True
    """Within windows of 32 batches, batch pairs of similar length together (less padding); batches are then shuffled."""
    freeze_layers: int = 0
    """Freeze the embeddings and the lowest N blocks (their LoRA adapters too): the backward pass stops above them."""
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=5e-6))
    """Optimizer and schedule."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(enabled=True))
    """LoRA policy (the adapter is merged into the saved model); with reference=policy the reference is the adapter switched off."""
    offload_frozen: bool = False
    """Hold the frozen models (a frozen reference copy or model, when one is held) in CPU memory and bring each layer's
    weights to the accelerator only while it computes (accelerate's cpu_offload; ZeRO-Offload's parameter offload):
    accelerator memory is left to the policy, for a weight transfer in every forward pass of those models. On a machine
    without an accelerator the weights stay put."""
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    """Sharding over the processes (FSDP), CPU offload of the training state and activation checkpointing of the policy."""
    eval_every: int = 0
    """Held-out eval every N steps (0 = only at the end)."""
    save_every: int = 50
    """Write a resumable checkpoint every N optimizer steps (0 = only the final model)."""
    interrupt_after: int | None = None
    """Stop as if interrupted after N steps (leaves a checkpoint; used to test resume)."""
    resume: bool = True
    """Resume from a checkpoint in output_dir (an interrupted run with the same settings and inputs); false = discard it and start again."""
    keep_checkpoint: bool = False
    """Keep output_dir/checkpoint after the final model is written (by default it is removed then)."""
    skip_bad_rows: bool = False
    """Skip malformed pairs (counted in the log and summary) instead of stopping at the first with its file and line."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own); the saved model keeps it."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 0
    """Seeds data order and LoRA initialisation."""
    online: bool = False
    """Online / iterative DPO: each round samples two responses per prompt from the current policy, labels them, trains on them."""
    rounds: int = 1
    """Online rounds; round k+1 starts from round k's model (also its reference when reference=policy)."""
    prompts: str | None = None
    """Online: the prompts file sampled in the rounds."""
    prompts_per_round: int = 64
    """Online: prompts per round (two responses each; ties are dropped)."""
    reward: list[RewardSourceSettings] = field(default_factory=list)
    """Online: the reward sources that label each prompt's two responses, the higher-scored one chosen (rewards/sources.py;
    metadata is {}): a reward model ([{type: model, path: runs/reward/model}]), a Python function ([{type: function,
    path: my_rewards.py:score}], None drops the pair), an LLM judge asked which of the two better follows its constitution
    ([{type: judge, path: default, judge_against: group}]: the pair's verdict, P(first better) and its complement), or their
    weighted sum."""
    reward_model: InitVar[str | None] = None  # refused: reward: [{type: model, path: X}] (REPLACED_KEYS)
    reward_function: InitVar[str | None] = None  # refused: reward: [{type: function, path: X}]
    judge: InitVar[str | None] = None  # refused: reward: [{type: judge, path: X, judge_against: group}]
    constitution: InitVar[str | None] = None  # refused: the judge source's constitution
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Online: sampling settings for the two responses."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Also send metrics.jsonl's rows to TensorBoard (<output_dir>/tensorboard) or Weights & Biases (optional extras)."""

    def __post_init__(self, reward_model, reward_function, judge, constitution) -> None:  # the refused old keys (InitVars)
        refuse_replaced(self, reward_model=reward_model, reward_function=reward_function, judge=judge, constitution=constitution)
        check_fields(self)
        check_parallel(self)
        if self.loss == "conservative" and not 0.0 < self.label_smoothing < 0.5:
            raise ConfigError(f"loss=conservative needs label_smoothing in (0, 0.5), got {self.label_smoothing}")
        if self.loss != "conservative" and self.label_smoothing:
            raise ConfigError(f"label_smoothing={self.label_smoothing} is conservative DPO's; set loss=conservative or leave it at 0")
        if self.ipo_token_mean and self.loss != "ipo":
            raise ConfigError(f"ipo_token_mean=true is IPO's; set loss=ipo or leave it false (loss={self.loss})")
        if self.reference == "none" and self.precompute_reference:
            raise ConfigError("precompute_reference=true has nothing to compute with reference=none (reference-free)")
        if self.online:
            if not self.prompts:
                raise ConfigError("online: true needs prompts (a prompts file the policy answers every round)")
            if not self.reward:
                raise ConfigError(
                    "online: true needs reward (the sources that label each round's pairs), e.g. "
                    "reward=[{type: model, path: runs/reward/model}] or reward=[{type: judge, path: default, judge_against: group}]"
                )
            against_reference = [s.path for s in self.reward if s.type == "judge" and s.judge_against == "reference"]
            if against_reference:
                raise ConfigError(
                    f"reward source {against_reference[0]}: online DPO's judge compares the pair's two responses "
                    "(there is no reference answer): set judge_against: group"
                )
        elif self.rounds > 1:
            raise ConfigError(f"rounds={self.rounds} needs online: true (offline DPO trains once on `data`)")
        elif self.reward:
            raise ConfigError("reward labels online DPO's sampled pairs; offline DPO trains on `data`: set online: true or remove reward")


@dataclass
class RewardSourceSettings:
    """One reward source. A stage's `reward` is a list of them; the reward is their weighted sum (rewards/sources.py)."""

    type: Literal["model", "function", "judge"] = "function"
    """'model': a reward model or ensemble (`tether reward train`); 'function': a Python function; 'judge': an LLM judge (feedback/judge.py)."""
    path: str = ""
    """model: its folder; function: 'package.module:function' or 'file.py:function'; judge: 'default' or a causal-LM folder."""
    weight: float = 1.0
    """This source's weight in the sum."""
    std_coef: float = 0.0
    """model, an ensemble: mean - k * std over its members (the conservative reward of Coste et al. 2023); 0 = the mean."""
    judge_against: Literal["reference", "group"] = "reference"
    """judge: 'reference' scores P(better than the prompt's reference answer, meta[reference_key]); 'group' scores the mean
    P(better than each other sample to the same prompt), a round robin within the group."""
    reference_key: str = "reference"
    """judge, judge_against=reference: the prompt's meta field holding the reference answer."""
    constitution: str = "default"
    """judge: principles that say what 'better' means: 'default' (shipped) or a YAML file."""
    batch_size: int = 16
    """model: responses per forward pass; judge: pairs per forward pass (two rows each: both orders)."""
    max_prompt_tokens: int = 192
    """model and judge: prompt tokens kept (cut from the left)."""
    max_response_tokens: int = 128
    """model and judge: response tokens kept (cut from the right)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.path:
            raise ConfigError(f"reward source of type {self.type}: set path (a reward model folder, module:function, or a judge model)")
        if self.std_coef and self.type != "model":
            raise ConfigError(
                f"reward source {self.path}: std_coef applies to a reward-model ensemble (type: model), not to type {self.type}"
            )


def reward_model_source(sources: list[RewardSourceSettings]) -> RewardSourceSettings | None:
    """The reward's one source when it is a reward model (`type: model`) alone: PPO scores it on the policy's token ids and
    may start its value model from it. None for any other reward."""
    return sources[0] if len(sources) == 1 and sources[0].type == "model" else None


REPLACED_KEYS: dict[tuple[str, str], str] = {
    ("PPOConfig", "reward_model"): "reward: [{{type: model, path: {value}}}]",
    ("PPOConfig", "reward_function"): "reward: [{{type: function, path: {value}}}]",
    ("PPOConfig", "reward_std_coef"): "reward: [{{type: model, path: runs/reward/model, std_coef: {value}}}] (the model source's std_coef)",
    ("DPOConfig", "reward_model"): "reward: [{{type: model, path: {value}}}]",
    ("DPOConfig", "reward_function"): "reward: [{{type: function, path: {value}}}]",
    ("DPOConfig", "judge"): "reward: [{{type: judge, path: {value}, judge_against: group}}]",
    (
        "DPOConfig",
        "constitution",
    ): "reward: [{{type: judge, path: default, judge_against: group, constitution: {value}}}] (the judge source's constitution)",
}
"""(config class, old key) -> the setting that replaced it; {value} is the old key's value. The old key is refused with
this spelling, in a file, an override or a keyword argument."""


def replaced_key_error(cls: type, key: str, value: Any) -> ConfigError | None:
    """The ConfigError for old key `key` of `cls` given `value`, naming its new spelling; None when `key` was not replaced."""
    spelling = REPLACED_KEYS.get((cls.__name__, key))
    if spelling is None:
        return None
    shown = value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else "X"
    setting, _, note = spelling.format(value=shown).partition(" (")  # a note in brackets follows the setting
    return ConfigError(f"was replaced by `{setting}`" + (f" ({note}" if note else ""), key=key)


def refuse_replaced(cfg, **given: Any) -> None:
    """Refuse the old keys given to a config class as keyword arguments (InitVars that only exist to be refused)."""
    for key, value in given.items():
        if value is not None:
            raise replaced_key_error(type(cfg), key, value)


@dataclass
class GRPOConfig:
    """`tether grpo`: G samples per prompt, advantages relative to the group (or leave-one-out, or REINFORCE), a clipped
    policy loss, no value model (stages/grpo.py)."""

    policy: str = "default"
    """Policy start and reference (the SFT model)."""
    reward: list[RewardSourceSettings] = field(default_factory=list)
    """Reward sources, summed with their weights, e.g. [{type: function, path: my.py:score}, {type: model, path: runs/reward/model}]."""
    prompts: str = "shared:alpaca_seed_tasks.jsonl"
    """Training prompts: any row with a prompt, from a file, dataset folder or cached hub id; a row's meta (its other
    columns) reaches reward functions as their `metadata`."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` and early_stop.prompts (dataset.eval_split) are read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/grpo"
    """Writes checkpoints, metrics.jsonl, samples.jsonl, summary.json and the final policy."""
    limit: int | None = None
    """Use only the first N prompts."""
    steps: int = 20
    """Iterations: sample a batch, score it, update on it."""
    prompts_per_step: int = 4
    """Prompts per batch; the batch holds prompts_per_step * group_size samples."""
    group_size: int = 8
    """G, samples per prompt."""
    mini_batch_size: int = 32
    """Samples per optimizer step (the default, the whole batch, is one on-policy step per iteration)."""
    micro_batch_size: int = 4
    """Samples per forward/backward pass; the micro-batch losses add up to the minibatch's exactly."""
    iterations: int = 1
    """Passes over each batch (mu); after the first, the importance ratio pi / pi_old and its clip matter."""
    advantage: Literal["grpo", "rloo", "reinforce"] = "grpo"
    """'grpo': (r - group mean) / group std; 'rloo': r - mean of the group's other samples; 'reinforce': r - a baseline."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """grpo, as TRL's scale_rewards: divide r - group mean by the group's std ('group', GRPO), by the std of the whole batch's
    rewards over every process ('batch', Lite PPO: no difficulty bias, unit scale), or not at all ('none', Dr. GRPO)."""
    baseline: Literal["batch_mean", "moving_average"] = "batch_mean"
    """reinforce: the baseline is the batch's mean reward or a moving average of past batches' means."""
    baseline_decay: float = 0.9
    """reinforce, moving_average: b <- decay * b + (1 - decay) * batch mean."""
    normalize_advantages: bool = False
    """Whiten the batch's advantages (mean 0, std 1) after the estimator."""
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] = "token_mean"
    """'token_mean': every token weighs the same (DAPO); 'sequence_mean': every response (GRPO, length-biased);
    'constant': sum / (responses x max_new_tokens) (Dr. GRPO)."""
    eps_low: float = 0.2
    """Lower clip of the ratio: 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip of the ratio: 1 + eps_high (DAPO's clip-higher uses 0.28)."""
    beta: float = 0.04
    """KL(pi || pi_ref) coefficient; 0 = no KL and no reference model is loaded."""
    kl_penalty: Literal["loss", "reward"] = "loss"
    """'loss': beta * k3 per token in the loss (GRPO); 'reward': r - beta * sum_t log pi/pi_ref before the advantages (RLOO)."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal (no signal) before the update, counted as rollout/groups_dropped (DAPO)."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings (temperature also divides logits in every log-prob); batch_size is unused (one batch per step)."""
    early_stop: EarlyStopSettings = field(default_factory=EarlyStopSettings)
    """Held-out reward and KL every N steps (step 0 too); best checkpoint kept; stop on a KL ceiling or a falling reward."""
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=1e-4, warmup_ratio=0.0, schedule="linear"))
    """Optimizer and schedule (annealed to 0 over all optimizer steps)."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(enabled=True))
    """LoRA policy: the reference is the same weights with the adapter off (one copy in memory)."""
    placement: Literal["local", "ray"] = "local"
    """Where the frozen models run: 'local' = in this process; 'ray' = each reward source that holds a model (model,
    judge) and, with full fine-tuning and beta > 0, the reference in its own Ray actor with its own GPUs (`ray`;
    placement.py). One process (no --num-processes)."""
    ray: RaySettings = field(default_factory=RaySettings)
    """Ray's address and each actor's GPUs and CPU cores, for placement=ray."""
    engine: Literal["tether", "vllm"] = "tether"
    """Who samples the rollouts: 'tether' = tether's own sampler (rollout/sampling.py), on any device; 'vllm' = a vLLM engine
    beside the policy on its GPU, its weights synced after every update, the log-prob gap between the engines corrected by
    truncated importance sampling (`vllm`; rollout/vllm_engine.py; extra tether[vllm]; one process, no parallel.fsdp)."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM's share of GPU memory, its dtype and the importance-weight cap, for engine=vllm."""
    offload_frozen: bool = False
    """Hold the frozen models (each reward source's model or judge; with full fine-tuning and beta > 0 the reference) in CPU
    memory and bring each layer's weights to the accelerator only while it computes (accelerate's cpu_offload; ZeRO-
    Offload's parameter offload): accelerator memory is left to the policy, for a weight transfer in every forward pass of
    those models. On a machine without an accelerator the weights stay put."""
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    """Sharding over the processes (FSDP), CPU offload of the training state and activation checkpointing of the
    policy. Sharded, the policy's blocks are gathered whole once per rollout and its scoring passes, and a process that
    kept fewer samples runs empty passes so that every process runs each sharded block as often; the reference stays
    whole in every process."""
    save_every: int = 10
    """Checkpoint every N steps."""
    samples_every: int = 5
    """Append the batch's (prompt, response, reward, advantage) to samples.jsonl every N steps (and at step 1); 0 = never."""
    interrupt_after: int | None = None
    """Stop as if interrupted after N steps (leaves a checkpoint; used to test resume)."""
    resume: bool = True
    """Resume from a checkpoint in output_dir (an interrupted run with the same settings and inputs); false = discard it and start again."""
    keep_checkpoint: bool = False
    """Keep output_dir/checkpoint after the final model is written (by default it is removed then)."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own); the saved model keeps it."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 0
    """Seeds sampling and prompt order."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Also send metrics.jsonl's rows to TensorBoard (<output_dir>/tensorboard) or Weights & Biases (optional extras)."""

    @property
    def batch_size(self) -> int:
        """Samples per iteration: prompts_per_step * group_size."""
        return self.prompts_per_step * self.group_size

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.reward:
            raise ConfigError(
                "set reward: a list of reward sources, e.g. reward=[{type: function, path: my_rewards.py:score}] "
                "or [{type: model, path: runs/reward/model}]"
            )
        if self.advantage in ("grpo", "rloo") and self.group_size < 2:
            raise ConfigError(
                f"advantage={self.advantage} compares the samples of a group: group_size must be at least 2, got {self.group_size}"
            )
        if self.scale_rewards != "group" and self.advantage != "grpo":
            raise ConfigError(
                f"scale_rewards={self.scale_rewards} scales advantage=grpo's advantages; with advantage={self.advantage} leave it out"
            )
        if self.dynamic_sampling and self.group_size < 2:
            raise ConfigError(
                "dynamic_sampling drops groups whose rewards are all equal, which every group of one is: "
                "set group_size >= 2 or dynamic_sampling=false"
            )
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"prompts_per_step * group_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size})"
            )
        if self.early_stop.max_kl is not None and self.beta == 0 and not self.lora.enabled:
            raise ConfigError(
                "early_stop.max_kl needs a reference to measure KL against: set beta > 0 (a frozen copy is loaded) "
                "or lora.enabled=true (the reference is the adapter switched off)"
            )
        if self.placement == "ray" and self.parallel.fsdp:
            raise ConfigError("placement=ray runs in one process; parallel.fsdp=true shards over several: choose one")
        check_offload(self)
        check_engine(self)
        check_parallel(self)


@dataclass
class EvalConfig:
    """`tether eval`: a policy against a baseline on held-out prompts."""

    policy: str = "runs/ppo/model"
    """Policy to judge."""
    baseline: str = "default"
    """Baseline policy (the SFT model in the pipeline)."""
    reference: str | None = None
    """Reference for KL (None = the baseline)."""
    reward_model: str | None = None
    """Reward model for the proxy score (None = skip proxy)."""
    prompts: str = "shared:self_instruct_user_eval.jsonl"
    """Held-out prompts."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/eval"
    """Writes samples.jsonl and summary.json."""
    limit: int | None = 64
    """Number of prompts to use."""
    offset: int = 0
    """Skip the first N prompts (keep evaluation prompts apart from training prompts)."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings (same for both policies)."""
    engine: Literal["tether", "vllm"] = "tether"
    """Who samples both policies' responses: 'tether' = tether's own sampler, on any device; 'vllm' = one vLLM engine on a
    CUDA GPU (`vllm`; extra tether[vllm]) that takes the baseline's weights, then the policy's. KL and scores are computed
    by the models themselves either way."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM's share of GPU memory and dtype, for engine=vllm."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 1234
    """Seeds sampling (both policies get the same seed)."""
    judge: Literal["gold", "reward_model", "ai", "people"] = "gold"
    """Who decides the headline win rate: the gold scorer, the reward model, an AI judge (both orders asked) or people (via `db`)."""
    judge_model: str = "default"
    """The AI judge when judge=ai: 'default' (SmolLM2-135M-Instruct) or a local causal-LM directory (bigger judges better)."""
    constitution: str = "default"
    """The AI judge's principles when judge=ai: 'default' (shipped) or a YAML file."""
    db: str | None = None
    """Preference store for judge=people: the (policy, baseline) pairs are queued there; rerunning reads the votes back."""
    annotators_per_task: int = 1
    """With judge=people: non-skip judgements each pair needs before it counts (their majority decides)."""
    max_words: int | None = None
    """A response of more words than this shows the 'excessive length' hack (None = twice the baseline's median length)."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Also send metrics.jsonl's rows to TensorBoard (<output_dir>/tensorboard) or Weights & Biases (optional extras)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.judge == "people" and not self.db:
            raise ConfigError("judge=people needs db (the preference store where people label the pairs)")


@dataclass
class GenerateConfig:
    """`tether generate`: sample responses for a prompts file."""

    model: str = "default"
    """Model to sample from."""
    prompts: str = "shared:self_instruct_user_eval.jsonl"
    """Prompts file."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output: str = "runs/generate/samples.jsonl"
    """Output JSONL (prompt, response, finished)."""
    limit: int | None = 8
    """Number of prompts."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings."""
    engine: Literal["tether", "vllm"] = "tether"
    """Who samples: 'tether' = tether's own sampler, on any device; 'vllm' = vLLM on a CUDA GPU (`vllm`; extra tether[vllm])."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM's share of GPU memory and dtype, for engine=vllm."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own)."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 0
    """Seeds sampling."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class JudgeConfig:
    """`tether judge`: an LLM judge labels candidate pairs (RLAIF; feedback/judge.py)."""

    model: str = "default"
    """The judge: 'default' (SmolLM2-135M-Instruct) or a local Hugging Face causal-LM directory (bigger judges better)."""
    data: str | None = "runs/collect/samples.jsonl"
    """Candidate pairs: preference pairs (prompt/chosen/rejected, chat or HH rows; their labels are only compared with)
    or collect's samples.jsonl (every pair of distinct responses to one prompt); null with `db`: the store's tasks."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `data` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    db: str | None = None
    """Preference store (SQLite file or postgresql:// URL): every verdict is also recorded there as annotator
    judge:<model>, beside people's judgements; with data=null the judge answers the store's tasks it has not answered."""
    output_dir: str = "runs/judge"
    """Writes preferences.jsonl (readable by `tether reward train`), config.yaml, metrics.jsonl and summary.json."""
    constitution: str = "default"
    """Principles whose rubric lines tell the judge what 'better' means: 'default' (shipped) or a YAML file."""
    limit: int | None = None
    """Judge only the first N pairs (None = all)."""
    batch_size: int = 8
    """Pairs per forward pass (each pair is two rows: both orders)."""
    max_prompt_tokens: int = 192
    """Conversation tokens shown to the judge (cut from the left, so the last turn stays)."""
    max_response_tokens: int = 128
    """Tokens of each response shown to the judge (cut from the right)."""
    share_head: bool = True
    """Compute the instructions and rubric (the same for every pair) once and continue every row from their cache."""
    min_strength: float = 0.0
    """Drop pairs whose preference strength |2 p - 1| is below this (0 = keep all), counted in the summary."""
    require_consistent: bool = False
    """Drop pairs on which the two orders disagree (position-inconsistent verdicts), counted in the summary."""
    write_margin: bool = False
    """Also write the strength as the pair's `margin` (the reward stage then uses it as the Llama 2 margin); it is always in meta."""
    skip_bad_rows: bool = False
    """Skip input pairs without two different, non-empty responses (counted) instead of stopping."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 0
    """Recorded with the run (judging itself is deterministic)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.data is None and self.db is None:
            raise ConfigError("set data (a pairs or samples file) or db (a preference store whose tasks to judge), or both")


@dataclass
class ReviseConfig:
    """`tether revise`: Constitutional AI critique-and-revise (Bai et al. 2022; feedback/constitution.py)."""

    model: str = "default"
    """Model that answers, critiques its answer and revises it."""
    prompts: str = "shared:hh_rlhf_harmless/train.jsonl.gz"
    """Prompts file (any format `tether` reads; HH-RLHF pairs give their dialogues)."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/revise"
    """Writes revisions.jsonl (every step), preferences.jsonl (revision chosen over original), summary.json."""
    constitution: str = "default"
    """Principles to critique and revise by: 'default' (shipped) or a YAML file."""
    limit: int | None = 64
    """Use only the first N prompts (None = all)."""
    rounds: int = 1
    """Critique-and-revise rounds per prompt, each with a newly sampled principle."""
    generation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=96, max_prompt_tokens=512, temperature=0.7)
    )
    """Sampling settings for the answer, the critiques and the revisions (the prompt grows with each step; no log-probs
    are used, so a temperature below 1 only makes the text more coherent)."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision."""
    seed: int = 0
    """Seeds sampling and the choice of principles."""

    def __post_init__(self) -> None:
        check_fields(self)


def _check_best_of_n(cfg) -> None:
    """The checks BoNConfig and RSConfig share."""
    if not cfg.reward:
        raise ConfigError(
            "set reward: a list of reward sources, e.g. reward=[{type: model, path: runs/reward/model}] "
            "or [{type: function, path: my_rewards.py:score}]"
        )


@dataclass
class BoNConfig:
    """`tether bon`: sample N responses per prompt, keep the one the reward scores best (stages/bon.py)."""

    policy: str = "default"
    """Model that samples the N responses (the SFT model, or any policy)."""
    reward: list[RewardSourceSettings] = field(default_factory=list)
    """Reward sources, summed with their weights, e.g. [{type: model, path: runs/reward/model}] (an ensemble takes std_coef)
    or [{type: function, path: my.py:score}]; a sample scored None is never picked."""
    prompts: str = "shared:alpaca_seed_tasks.jsonl"
    """Prompts file (any format `tether` reads); a row's meta reaches reward functions as their `metadata`."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/bon"
    """Writes bon.jsonl (per prompt: the best response, its score, all N responses and scores), config.yaml, summary.json."""
    limit: int | None = None
    """Use only the first N prompts (None = all)."""
    n: int = 8
    """Samples per prompt (N); the analytic KL bound of keeping the best is log N - (N-1)/N nats."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings."""
    engine: Literal["tether", "vllm"] = "tether"
    """Who samples: 'tether' = tether's own sampler, on any device; 'vllm' = vLLM on a CUDA GPU (`vllm`; extra tether[vllm])."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM's share of GPU memory and dtype, for engine=vllm."""
    gold: bool = False
    """Also score every sample with the gold scorer (feedback/gold.py, the demo's simulated taste) and report the gold gain."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own)."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision for sampling and scoring."""
    seed: int = 0
    """Seeds sampling."""

    def __post_init__(self) -> None:
        check_fields(self)
        _check_best_of_n(self)


@dataclass
class RSConfig:
    """`tether rs`: rejection-sampling fine-tuning in rounds: best of N per prompt, SFT on it (Llama 2 sec. 3.2.3)."""

    policy: str = "default"
    """Policy of round 1 (the SFT model); each round's fine-tuned model samples the next round."""
    reward: list[RewardSourceSettings] = field(default_factory=list)
    """Reward sources, summed with their weights, e.g. [{type: model, path: runs/reward/model}] (an ensemble takes std_coef)
    or [{type: function, path: my.py:score}]; a sample scored None is never picked."""
    prompts: str = "shared:alpaca_seed_tasks.jsonl"
    """Prompts sampled every round (any format `tether` reads); a row's meta reaches reward functions as their `metadata`."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `prompts` and `eval_prompts` (dataset.eval_split) are read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    output_dir: str = "runs/rs"
    """Writes round_<k>/ (bon.jsonl, kept.jsonl, sft/, fresh.jsonl, summary.json) per round, metrics.jsonl, summary.json."""
    limit: int | None = None
    """Use only the first N prompts (None = all)."""
    n: int = 8
    """Samples per prompt and round (N); the best one is kept."""
    rounds: int = 3
    """Rounds of sample -> keep the best -> SFT; a round whose summary.json exists is skipped on rerun."""
    threshold: float | None = None
    """Keep a prompt's best response only if its score is at least this (None = always keep it)."""
    eval_prompts: str | None = None
    """Prompts for the fresh samples that score each round's new policy (None = the training prompts, another seed)."""
    eval_limit: int | None = None
    """Use only the first N of those prompts (None = all)."""
    eval_samples: int = 2
    """Fresh samples per eval prompt after each round (and of the starting policy), all with the same seed."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings (the N samples and the fresh ones)."""
    engine: Literal["tether", "vllm"] = "tether"
    """Who samples: 'tether' = tether's own sampler, on any device; 'vllm' = vLLM on a CUDA GPU (`vllm`; extra tether[vllm])."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    """vLLM's share of GPU memory and dtype, for engine=vllm."""
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(eval_fraction=0.0, save_every=0))
    """SFT of every round; its model, data, output_dir, seed and precision are filled in per round."""
    gold: bool = False
    """Also score every sample with the gold scorer (feedback/gold.py, the demo's simulated taste) and log gold means per round."""
    chat_template: str | None = None
    """Jinja file (a chat template) used in place of the model's own to render prompts (None = the model's own); the saved model keeps it."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision for sampling, scoring and SFT."""
    seed: int = 0
    """Seeds sampling (round k samples with seed + k) and SFT."""

    def __post_init__(self) -> None:
        check_fields(self)
        _check_best_of_n(self)
        wired = [
            f"sft.{name}={getattr(self.sft, name)}"
            for name in ("model", "data", "output_dir", "seed", "precision")
            if getattr(self.sft, name) != getattr(SFTConfig(), name)
        ]
        if wired:  # replaced in every round: refused rather than dropped without a word
            raise ConfigError(
                f"{', '.join(wired)}: `tether rs` sets each round's SFT model (the current policy), data (its best "
                "responses), output_dir (round_<k>/sft), seed (seed + k) and precision itself; set the top-level "
                "seed= or precision= instead, and leave the others out"
            )


@dataclass
class RewardEvalConfig:
    """`tether reward eval`: judge a reward model on preference pairs (accuracy, calibration, margins)."""

    model: str = ""
    """Reward model directory (written by `tether reward train`); the command's --model sets it too."""
    data: str = ""
    """Preference pairs (JSONL/JSONL.gz; native or HH format). 'shared:' = ../shared/data; --data sets it too."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `data` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    limit: int | None = None
    """Use only the first N pairs (None = all)."""
    out: str | None = None
    """Also write the JSON object to this file."""
    plot: bool = False
    """Write a reliability diagram PNG beside `out` (or reliability.png)."""
    max_prompt_tokens: int = 192
    """Prompt tokens kept (cut from the left)."""
    max_response_tokens: int = 128
    """Response tokens kept."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision for scoring."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class RewardScoreConfig:
    """`tether reward score`: score every (prompt, response) row with a reward model and write the score as a column."""

    model: str = ""
    """Reward model directory (written by `tether reward train`); the command's --model sets it too."""
    data: str = ""
    """Prompt/response JSONL (any demonstration format). 'shared:' = ../shared/data; --data sets it too."""
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    """How `data` is read: the split and subset of a Hugging Face dataset, your column names (DatasetSettings)."""
    out: str | None = None
    """Output JSONL (None = DATA with .scored.jsonl)."""
    column: str = "reward"
    """Name of the score column."""
    max_prompt_tokens: int = 192
    """Prompt tokens kept (cut from the left)."""
    max_response_tokens: int = 128
    """Response tokens kept."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision for scoring."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.column:
            raise ConfigError("column must be a non-empty name")


@dataclass
class IterateSettings:
    """Rounds 2..N of `tether run` (iterative RLHF): fresh pairs from the latest policy, labelled, a new reward model, PPO again."""

    labeller: Literal["simulated", "judge", "people"] = "simulated"
    """Who labels each round's fresh pairs: the simulated annotator (collect.annotator), an AI judge, or people through `db`."""
    judge_model: str = "default"
    """The AI judge when labeller=judge: 'default' or a local causal-LM directory."""
    constitution: str = "default"
    """The AI judge's principles when labeller=judge: 'default' or a YAML file."""
    db: str | None = None
    """Preference store for labeller=people: each round's pairs are queued there as tasks for `tether label`."""
    annotators_per_task: int = 1
    """With labeller=people: non-skip judgements a task needs to count as labelled (their majority decides)."""
    min_labelled: float = 1.0
    """With labeller=people: the round goes on once this fraction of its tasks is labelled (unlabelled ones are left out)."""
    reward_from: Literal["sft", "previous"] = "sft"
    """Round k's reward model, trained on every pair so far: 'sft' = a fresh one from the SFT trunk (a new head);
    'previous' = round k-1's reward model, trunk and head, trained on (continued)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.labeller == "people" and not self.db:
            raise ConfigError("labeller=people needs db (the preference store where people label the pairs)")


@dataclass
class RunConfig:
    """`tether run`: SFT -> collect -> reward -> PPO -> eval in one directory.

    Each stage's `model`/`data`/`output_dir` inputs are filled in from the previous
    stage, and its seed, precision (and tracker, when set here) from the keys below;
    setting one of those in a stage's section is an error (pipeline.check_wiring).
    Any other field can be set in the stage's section.
    """

    output_dir: str = "runs/demo"
    """Run directory: one sub-folder per stage, plus report.md."""
    model: str = "default"
    """Base model for SFT."""
    seed: int = 0
    """Seed given to every stage."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Matmul precision for every stage."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """SFT stage settings."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    """Preference collection settings."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward model settings."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation settings."""
    rounds: int = 1
    """Rounds of RLHF. Round 1 is the line above; each later round (in round<k>/) samples fresh pairs from the latest
    policy, labels them, retrains the reward model on every pair so far and runs PPO again from the latest policy."""
    iterate: IterateSettings = field(default_factory=IterateSettings)
    """How rounds 2..N label their pairs."""
    tracker: Literal["none", "tensorboard", "wandb"] | None = None
    """Tracker for every stage that has one (None = each stage's own `tracker`)."""

    def __post_init__(self) -> None:
        check_fields(self)


# --------------------------------------------------------------------------- loading


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """Build `cls` from a YAML file (optional) and `key=value` overrides (dotted keys for nesting)."""
    data: dict[str, Any] = {}
    where = ""
    if path is not None:
        where = f"{path}: "
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read config file {path}: it is not UTF-8 text (expected a YAML file)") from None
        loaded = parse_yaml(text, str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (for example optim.lr=1e-4 or lora.r=8)")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw, "") if raw != "" else None
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}; to pass the value as text, quote it: \"{key}='{raw}'\"") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return from_dict(cls, data, where=where)


def from_dict(cls: type, data: dict[str, Any], where: str = "", prefix: str = ""):
    """Strictly convert a mapping to dataclass `cls`; errors name the full dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        moved = MOVED_KEYS.get(key, "")
        if key not in fields and moved.split(".")[0] in fields:
            section, leaf = moved.split(".", 1)
            raise ConfigError(
                f"{where}'{prefix}{key}' is now '{prefix}{moved}': write {prefix}{moved}={yaml_text(value)} as an override, "
                f"or in YAML `{section}: {{{leaf}: {yaml_text(value)}}}`"
            )
        if key not in fields:
            replaced = replaced_key_error(cls, key, value)
            if replaced is not None:
                raise replaced.inside(prefix, where)
            raise ConfigError(f"{where}unknown key '{prefix}{key}'{_close_keys(cls, key, prefix)}; valid keys here: {', '.join(fields)}")
        kwargs[key] = _coerce(hints[key], _with_section_defaults(fields[key], value), f"{prefix}{key}", where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.inside(prefix, where) from None


def _close_keys(cls: type, key: str, prefix: str) -> str:
    """' (did you mean ...?)' for an unknown `key` of `cls`: keys spelled alike, and keys of its sections that end in
    `key` (`lr` -> `optim.lr`); '' when there is none."""
    keys = [f"{name}.{sub}" if sub else name for name, sub in _keys(cls)]
    leaves = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    close = leaves + [k for k in difflib.get_close_matches(key, keys, n=3, cutoff=0.75) if k not in leaves]
    return f" (did you mean {' or '.join(repr(prefix + k) for k in close[:3])}?)" if close else ""


def _keys(cls: type) -> list[tuple[str, str]]:
    """(field, key inside it) for every field of dataclass `cls`, a section's fields one level down ('' for a plain field)."""
    out = []
    for name, tp in _field_types(cls).items():
        out.append((name, ""))
        if dataclasses.is_dataclass(tp):
            out += [(name, sub) for sub in _field_types(tp)]
    return out


def _with_section_defaults(f: dataclasses.Field, value: Any) -> Any:
    """A section given in part keeps its field's own defaults for the rest: PPOConfig.lora
    defaults to enabled=True, so `lora.r=8` must change r and leave LoRA on."""
    if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        if dataclasses.is_dataclass(default):
            return _merge(dataclasses.asdict(default), value)
    return value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` laid over `base`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


MOVED_KEYS: dict[str, str] = {key: f"parallel.{key}" for key in ("fsdp", "zero_stage", "offload_trainable", "activation_checkpointing")}
"""A key that moved into a section -> its dotted key there, named in the error when a config gives the old spelling
(the five copies of the parallel keys became one `parallel:` section, ParallelSettings, in 2026-12)."""

RENAMED_VALUES: dict[tuple[str, bool], str] = {("scale_rewards", True): "group", ("scale_rewards", False): "none"}
"""(field, old value) -> its new spelling, named in the error when a field that took true/false now takes names."""


def _coerce(tp: Any, value: Any, key: str, where: str):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{where}'{key}': expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            renamed = RENAMED_VALUES.get((key.rsplit(".", 1)[-1], value)) if isinstance(value, bool) else None
            now = f" ({str(value).lower()} is now spelled {renamed!r})" if renamed else ""
            raise ConfigError(f"{where}'{key}': expected one of {', '.join(map(repr, choices))}, got {value!r}{now}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}'{key}': expected a list, got {value!r}")
        return [_coerce(inner, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # built in Python, and checked then
            return value
        return from_dict(tp, value, where, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}'{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}'{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 without a dot as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}'{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, os.PathLike):  # a Path, in a config built in Python
            return os.fspath(value)
        raise ConfigError(f"{where}'{key}': expected a string, got {value!r}")
    raise ConfigError(f"{where}'{key}': unsupported type {tp}")


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a key given twice in one mapping is an error (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden key by key
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports it
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {lines[key]}); give each key once", key_node.start_mark
                )
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, name: str) -> Any:
    """YAML text -> data, as yaml.safe_load, but a duplicate key is an error; errors name `name` (a file) and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = ", ".join(part for part in (e.context, e.problem) if part)
        at = f"{name}:{mark.line + 1}: " if name and mark else f"{name}: " if name else ""
        raise ConfigError(f"{at}not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name + ': ' if name else ''}not valid YAML: {e}") from None


def to_dict(cfg) -> dict[str, Any]:
    """The config as plain data (written beside every run as config.yaml)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------- describing

STAGES: dict[str, type] = {
    "sft": SFTConfig,
    "collect": CollectConfig,
    "reward": RewardConfig,
    "ppo": PPOConfig,
    "grpo": GRPOConfig,
    "dpo": DPOConfig,
    "eval": EvalConfig,
    "generate": GenerateConfig,
    "judge": JudgeConfig,
    "revise": ReviseConfig,
    "bon": BoNConfig,
    "rs": RSConfig,
    "run": RunConfig,
}
"""The config class of each command that takes one: `tether sft`, ..., `tether reward train` (reward), `tether run` (run)."""


def stage_config(stage: str) -> type:
    """The config class of `tether STAGE`."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    return STAGES[stage]


class KeyInfo(typing.NamedTuple):
    """One key of a config class, as `tether config STAGE` lists it."""

    key: str
    """Dotted for sections ('optim.lr'); 'reward[].path' for a field of a list's items."""
    type: str
    """'float', 'int | None', "'cosine' | 'linear' | 'constant'", ...; 'section' for a nested config."""
    default: Any
    """The default value (a section's default instance)."""
    doc: str
    """The docstring under the field, on one line."""


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[KeyInfo]:
    """Every key of config class `cls`, a section's keys after the section's own row. Defaults are the class's own: a
    section's keys take the section field's default (PPOConfig's optim.lr is 1e-4, not OptimSettings' 2e-5)."""
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            rows.append(KeyInfo(key, "section", default, docs.get(f.name, "")))
            rows += describe(tp, key + ".", default)
            continue
        rows.append(KeyInfo(key, type_name(tp), default, docs.get(f.name, "")))
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(item):
            rows += describe(item, key + "[].")
    return rows


def describe_text(cls: type) -> str:
    """describe(cls) as text: 'key: type = default', its meaning indented below."""
    lines = []
    for row in describe(cls):
        lines.append(f"{row.key}: section" if row.type == "section" else f"{row.key}: {row.type} = {yaml_text(row.default)}")
        lines += textwrap.wrap(row.doc, 100, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def commented_yaml(cls: type) -> str:
    """A YAML config for `cls` that sets every key to its default, each under its meaning as a comment."""
    rows, lines = describe(cls), []
    for row in rows:
        if "[]." in row.key:  # a field of a list's items: named in the list's comment
            continue
        indent = "  " * row.key.count(".")
        if row.type == "section" and not indent:
            lines.append("")
        items = [other.key[len(row.key) + 3 :] for other in rows if other.key.startswith(row.key + "[].")]
        doc = row.doc + (f" Each item's keys: {', '.join(items)}." if items else "")
        lines += textwrap.wrap(doc, 100, initial_indent=indent + "# ", subsequent_indent=indent + "# ", break_on_hyphens=False)
        name = row.key.rsplit(".", 1)[-1]
        lines.append(f"{indent}{name}:" if row.type == "section" else f"{indent}{name}: {yaml_text(row.default)}")
    return "\n".join(lines).lstrip("\n") + "\n"


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under the field in `cls`'s source, on one line."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    """A type hint as a user reads it: 'int | None', "'cosine' | 'linear'", 'list[str]'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args if a is not type(None)) + (" | None" if type(None) in args else "")
    if origin is Literal:
        return " | ".join(map(repr, args))
    if origin is list:
        return f"list[{type_name(args[0])}]"
    return getattr(tp, "__name__", str(tp))


def yaml_text(value: Any) -> str:
    """`value` as one line of YAML, as a config file or an override would give it."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, list):  # a list of sections (PPO's default `reward`)
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text.removesuffix("...").strip()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# --------------------------------------------------------------------------- paths


def shared_data_dir() -> Path:
    """Folder of the shared data sets: $TETHER_SHARED_DATA, else ../shared/data next to the repo or cwd."""
    env = os.environ.get("TETHER_SHARED_DATA")
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parents[3] / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def did_you_mean(path: str | os.PathLike) -> str:
    """' (did you mean X?)' naming files or folders beside a missing `path` whose names are close to its name; ''
    when there is none (or the folder itself is missing)."""
    path = Path(path)
    folder = path.parent
    try:
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.75)
    return f" (did you mean {' or '.join(str(folder / c) for c in close)}?)" if close else ""


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
"""A Hugging Face hub id, `org/name` (one slash, no leading `.`, `/` or `~`): a model or a dataset in the local cache."""


def resolve_path(path: str) -> str:
    """Expand 'shared:NAME' to the shared data folder and '~' to the home folder."""
    if path.startswith("shared:"):
        return str(shared_data_dir() / path[len("shared:") :])
    return os.path.expanduser(path)
