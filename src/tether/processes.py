"""This process's place among the processes of a run: its rank, the world's size, its device, the reductions they share,
and how its launcher (torchrun, `accelerate launch`, `tether <stage> --num-processes N`) was asked to run it.

Started plainly, this is one process and every reduction returns its input. The process group is joined (accelerate's
PartialState: gloo on CPU, NCCL on GPUs, one GPU per process) on the first call of `processes()`. Sharding the model
over the processes (FSDP2) is distributed.py's; the predicates here (`is_sharded`, `is_fsdp`, `full_tensor`) only read it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from accelerate import PartialState
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from tether.config import ConfigError

__all__ = ["Processes", "processes", "is_sharded", "is_fsdp", "full_tensor", "launcher_sharding", "launcher_precision"]


class Processes:
    """This process's place among the data-parallel processes (rank, world size) and the reductions they share."""

    def __init__(self):
        self.launcher = launcher_sharding()  # read before accelerate: with DeepSpeed asked for, it would start DeepSpeed's engine
        self.launcher_precision = launcher_precision()
        if _env_flag(os.environ, "ACCELERATE_USE_DEEPSPEED"):
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"  # tether runs the ZeRO stage itself (FSDP2, apply_launcher)
        # cpu=True on a machine without CUDA: several CPU processes then join over gloo
        self.state = PartialState(cpu=not torch.cuda.is_available()) if _launched() else None
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1
        self.is_main = self.rank == 0
        self.sharded = False  # set by shard_blocks: some weights are FSDP shards
        self.reshard_blocks = True  # set by shard_blocks: False under zero_stage=2
        self.sharding: dict | None = None  # set by shard_blocks: how, for the stage's summary

    @property
    def device(self) -> torch.device:
        return self.state.device if self.state else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def share(self, items: list) -> list:
        """This process's part of `items`: every world-th one, starting at its rank."""
        return items[self.rank :: self.world]

    def share_batches(self, batches: list) -> list:
        """Batches of work that may be split (an evaluation): this process's share, or, when the model is
        sharded, all of them: a sharded block computes only when every process runs it."""
        return batches if self.sharded else self.share(batches)

    def sum_batches(self, x):
        """Combine what `share_batches` split: the sum over processes (nothing to add when nothing was split)."""
        return x if self.sharded else self.sum(x)

    def sum(self, x: torch.Tensor | float) -> torch.Tensor | float:
        """The sum over processes (a tensor or a float); the input itself in one process."""
        if self.world == 1:
            return x
        t = x.detach().clone() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
        dev = t.device
        t = t.to(self.device)
        torch.distributed.all_reduce(t)
        return t.to(dev) if isinstance(x, torch.Tensor) else t.item()

    def mean(self, x: torch.Tensor | float) -> torch.Tensor | float:
        s = self.sum(x)
        return s / self.world if self.world > 1 else s

    def max(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor(float(x), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.item()

    def mean_of(self, values: list[float]) -> float | None:
        """The mean of all processes' values taken together; None when there are none anywhere."""
        total, count = self.sum(float(sum(values))), self.sum(float(len(values)))
        return total / count if count else None

    def reduce_stats(
        self, stats: dict[str, float], peak: tuple[str, ...] = ("ratio_peak",), averaged: tuple[str, ...] = ("grad_norm", "ptx_loss")
    ) -> dict[str, float]:
        """A step's statistics over every process. Each process holds its shares of token-weighted means, which add up
        (summed); `averaged` ones (the gradient norm, the same in each) are the mean over the processes that have them;
        `peak` ones the largest. A key that no process has stays out; one that some lack counts as 0 there."""
        if self.world == 1:
            return stats
        keys = sorted(set(self.gather(list(stats))))
        total = self.sum(torch.tensor([[stats.get(k, 0.0) for k in keys], [float(k in stats) for k in keys]], dtype=torch.float64))
        out = {}
        for k, value, n in zip(keys, total[0].tolist(), total[1].tolist()):
            top = self.max(stats.get(k, 0.0)) if k in peak else None  # every process joins the collective
            if n > 0:
                out[k] = top if k in peak else value / n if k in averaged else value
        return out

    def check_in_step(self, params: list[torch.nn.Parameter], stage: str) -> None:
        """Raise unless every process holds the same trained weights (a checksum compared across processes):
        called before a stage saves its model, so a gradient that was not reduced can not go unnoticed."""
        if self.world == 1:
            return
        checksum = float(sum(p.detach().double().sum().item() for p in params if not is_sharded(p)))  # shards differ by design
        if self.max(checksum) != -self.max(-checksum):
            raise RuntimeError(f"{stage}: the processes' weights differ after training (a gradient was not reduced)")

    def gather(self, items: list) -> list:
        """Every process's list, concatenated in rank order (picklable items)."""
        if self.world == 1:
            return list(items)
        parts: list = [None] * self.world
        torch.distributed.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def reduce_gradients(self, params: list[torch.nn.Parameter], average: bool) -> None:
        """Sum (or average) the gradients over processes, in one flat all-reduce; a parameter
        without a gradient in this process counts as zero there. A sharded (FSDP) parameter's
        gradient was already reduced in the backward pass, averaged: it is only rescaled."""
        if self.world == 1:
            return
        for p in params:
            if is_sharded(p) and p.grad is not None and not average:
                p.grad.mul_(self.world)
        params = [p for p in params if not is_sharded(p)]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        if average:
            flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).clone()
            offset += n

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def is_sharded(t: torch.Tensor) -> bool:
    """A DTensor: this process holds a shard of it (FSDP)."""
    return isinstance(t, DTensor)


def is_fsdp(model) -> bool:
    """Are some of the model's modules FSDP-sharded?"""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a shard is gathered from every process (a collective: call it in all of them)."""
    if not is_sharded(t):
        return t
    if t.device.type != t.device_mesh.device_type:  # a shard kept in CPU memory (offload): gathered on the accelerators
        t = t.to(t.device_mesh.device_type)
    return t.full_tensor()


_STRATEGIES = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD", "5": "HYBRID_SHARD_ZERO2"}


def launcher_sharding(environ: dict | None = None) -> dict | None:
    """The sharding `accelerate launch` was asked for (its --use_deepspeed / --use_fsdp flags or config file, which it passes
    to each process as environment variables), as a stage's `parallel` settings (config.ParallelSettings): {"fsdp",
    "zero_stage", "offload_trainable", "asked"}; None when it asked for neither. tether shards with FSDP2 whichever was asked for:
      DeepSpeed ZeRO stage 3 / 2 -> fsdp=true zero_stage=3 / 2; stage 1 (optimizer state only, which FSDP2 has no
      stage for) -> zero_stage=2, which shards the gradients too and makes the same updates; stage 0 -> not sharded;
      offload_optimizer or offload_param on cpu -> offload_trainable=true (nvme is refused);
      FSDP FULL_SHARD or reshard_after_forward=true -> zero_stage=3; SHARD_GRAD_OP or false -> 2; NO_SHARD -> not
      sharded; fsdp_offload_params -> offload_trainable=true; HYBRID_SHARD is refused (tether shards over every process)."""
    env = os.environ if environ is None else environ
    if _env_flag(env, "ACCELERATE_USE_DEEPSPEED"):
        stage, offload = (
            env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"),
            [
                env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none"),
                env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none"),
            ],
        )
        ds = _deepspeed_json(env)
        if ds is not None:  # the DeepSpeed JSON config decides, as it does for accelerate
            zero = ds.get("zero_optimization", {})
            stage = zero.get("stage", 0)
            offload = [(zero.get(k) or {}).get("device", "none") for k in ("offload_optimizer", "offload_param")]
        if str(stage) not in ("0", "1", "2", "3"):
            raise ConfigError(f"DeepSpeed zero_optimization.stage: expected 0, 1, 2 or 3, got {stage!r}")
        offload = [str(d).lower() for d in offload]
        if "nvme" in offload:
            raise ConfigError(
                "DeepSpeed offload to nvme: tether offloads the training state to CPU memory only "
                "(offload_optimizer.device=cpu, or offload_trainable=true)"
            )
        stage = int(stage)
        return {
            "fsdp": stage > 0,
            "zero_stage": 3 if stage == 3 else 2,
            "offload_trainable": stage > 0 and "cpu" in offload,
            "asked": f"DeepSpeed ZeRO stage {stage}" + (" with CPU offload" if "cpu" in offload else ""),
        }
    if _env_flag(env, "ACCELERATE_USE_FSDP"):
        if env.get("FSDP_VERSION", "1") == "2" or "FSDP_SHARDING_STRATEGY" not in env:
            strategy = "FULL_SHARD" if env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true" else "SHARD_GRAD_OP"
        else:
            strategy = env["FSDP_SHARDING_STRATEGY"].strip().upper()
            strategy = _STRATEGIES.get(strategy, strategy)
        if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"):
            raise ConfigError(
                f"FSDP sharding strategy {strategy}: tether shards over every process; use FULL_SHARD (ZeRO-3), "
                "SHARD_GRAD_OP (ZeRO-2) or NO_SHARD"
            )
        return {
            "fsdp": strategy != "NO_SHARD",
            "zero_stage": 3 if strategy == "FULL_SHARD" else 2,
            "offload_trainable": strategy != "NO_SHARD" and _env_flag(env, "FSDP_OFFLOAD_PARAMS"),
            "asked": f"FSDP {strategy}",
        }
    return None


def _env_flag(env, key: str) -> bool:
    """An accelerate launch flag passed as an environment variable ("true" / "false")."""
    return env.get(key, "false").strip().lower() == "true"


def _deepspeed_json(env) -> dict | None:
    """The DeepSpeed JSON config `accelerate launch` named (ACCELERATE_DEEPSPEED_CONFIG_FILE), or None."""
    path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    if not path or path.lower() == "none":
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: could not read the DeepSpeed config that accelerate launch named ({e})") from e


def launcher_precision(environ: dict | None = None) -> str | None:
    """The mixed precision `accelerate launch` was asked for (--mixed_precision, the config's mixed_precision, or the
    DeepSpeed JSON's bf16/fp16 sections), as tether's `precision`: "bf16", "fp16", or None when it asked for neither.
    accelerate's "no" is also its default when nothing was asked, so it leaves the stage's own setting alone; fp8 is
    refused (tether trains in bf16, fp16 or fp32)."""
    env = os.environ if environ is None else environ
    asked = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    ds = _deepspeed_json(env) if _env_flag(env, "ACCELERATE_USE_DEEPSPEED") else None
    if ds is not None:  # a DeepSpeed JSON that enables bf16 or fp16 decides ("auto" defers to accelerate's flag)
        enabled = [k for k in ("bf16", "fp16") if (ds.get(k) or {}).get("enabled") is True]
        if len(enabled) > 1:
            raise ConfigError(f"{env['ACCELERATE_DEEPSPEED_CONFIG_FILE']}: bf16.enabled and fp16.enabled are both true; enable one of them")
        asked = enabled[0] if enabled else asked
    if asked in ("no", ""):
        return None
    if asked not in ("bf16", "fp16"):
        raise ConfigError(
            f"accelerate launch --mixed_precision {asked}: tether trains in bf16, fp16 or fp32 (precision=); "
            "launch with --mixed_precision bf16, fp16 or no"
        )
    return asked


def _launched() -> bool:
    """Started by a launcher that set up a process group (torchrun, accelerate launch)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def processes() -> Processes:
    """The one Processes object of this process (the process group is joined on first use)."""
    return Processes()
