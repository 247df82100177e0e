"""Pieces every training stage uses: optimizer + schedule, seeding, resumable checkpoints.

A checkpoint holds everything needed to continue bit-for-bit: the trainable weights, the
optimizer and scheduler states, every RNG state, the step (which fixes the data
position, since data order is a pure function of seed and epoch), and any extra state a
stage adds (e.g. the KL controller), and the fingerprint of the run that wrote it
(fingerprint.py), so that only a run with the same settings and inputs resumes it. It is
written to a temporary folder and renamed, so an interrupt during saving never leaves a
half-written checkpoint; a finished stage removes it (unless `keep_checkpoint`).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tether.config import ConfigError, OptimSettings, save_config
from tether.distributed import grad_norm, like_param
from tether.eval.overopt import fit_overopt
from tether.fingerprint import FINGERPRINT_FILE, changes, default_settings, fingerprint, read_fingerprint, write_fingerprint
from tether.processes import full_tensor, is_sharded, processes
from tether.tracking import console, read_appended

CHECKPOINT_DIR = "checkpoint"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_output_dir(path: str | os.PathLike, key: str = "output_dir") -> Path:
    """Create the folder `path` (and its parents), or say why it cannot be one: a ConfigError naming `key` and the path,
    raised before any model loads."""
    out = Path(path)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker == out:
        raise ConfigError(f"{key} {out} is a file; expected a folder (a new or existing directory): choose another {key}")
    if blocker is not None:
        raise ConfigError(f"{key} {out}: {blocker} is a file, so no folder can be made under it: choose another {key}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{key} {out}: cannot create the folder ({e.strerror}): choose another {key}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {out}: the folder is not writable by this user: choose another {key} or change its permissions")
    return out


RECORD_FILES = ("summary.json", "config.yaml", FINGERPRINT_FILE)
"""What `start_stage` rewrites in a stage's folder before the stage has read its inputs: its record, not its results."""


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, modification time) of every file under `folder` but its record files, by relative path."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            relative = str(path.relative_to(folder))
            if relative not in RECORD_FILES:
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    found[relative] = (stat.st_size, stat.st_mtime_ns)
    return found


@contextlib.contextmanager
def keeping_record(output_dir: str | os.PathLike | None):
    """Run a stage into `output_dir` so that a failure before it has written anything but its record (a missing model,
    an empty data file, a bad setting found late, Ctrl-C while loading) leaves the folder as it was: an earlier run's
    summary.json, config.yaml and fingerprint.json come back, and a folder this run created is removed again."""
    if output_dir is None or not processes().is_main:
        yield
        return
    out = Path(output_dir)
    existed = out.is_dir()
    record = {name: (out / name).read_bytes() for name in RECORD_FILES if (out / name).is_file()} if existed else {}
    before = _stamps(out) if existed else {}
    try:
        yield
    except BaseException:
        if out.is_dir() and _stamps(out) == before:  # nothing but the record was written: put it back
            if not existed and not before:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for name in RECORD_FILES:
                    if name in record:
                        (out / name).write_bytes(record[name])
                    else:
                        (out / name).unlink(missing_ok=True)
        raise


def start_stage(cfg, rounds: str | None = None) -> Path:
    """Every stage begins the same way: create `cfg.output_dir`; check a checkpoint there (and, for a stage that runs in
    rounds, the round folders matching the pattern `rounds`) against this run's fingerprint (`check_checkpoint`,
    `check_rounds`); write config.yaml and fingerprint.json (and remove an earlier run's summary.json, which no longer
    describes the folder); seed."""
    out = make_output_dir(cfg.output_dir)
    current = fingerprint(cfg)
    check_checkpoint(out, current, getattr(cfg, "resume", True), default_settings(type(cfg)))
    if rounds is not None:
        check_rounds(out, rounds, current, cfg)
    if processes().is_main:
        (out / "summary.json").unlink(missing_ok=True)
        save_config(cfg, out / "config.yaml")
        write_fingerprint(out, current)
    processes().sharded = False  # until this stage shards a model (parallel.fsdp=true)
    seed_everything(cfg.seed)  # the same in every process: the same initial weights (LoRA, heads) everywhere
    return out


def check_checkpoint(out: Path, current: dict, resume: bool, defaults: dict | None = None) -> None:
    """A checkpoint in `out` is resumed only by a run with the fingerprint it was written with: another one stops with
    a ConfigError that says what changed. With `resume` false the checkpoint is removed and the stage starts again."""
    target = out / CHECKPOINT_DIR
    if not (target / "state.pt").exists():
        return
    if not resume:
        console.print(f"{out}: resume=false, so its checkpoint is discarded and the stage starts again")
        if processes().is_main:
            shutil.rmtree(target)
        processes().barrier()
        return
    recorded = read_fingerprint(target)  # None: written before fingerprints, resumed as it always was
    changed = changes(recorded, current, defaults=defaults) if recorded is not None else []
    if changed:
        raise ConfigError(
            f"{target} holds an interrupted run with other settings: {'; '.join(changed)}. Rerun with resume=false "
            "to discard it and start again, or choose a new output_dir (or undo the change to resume it)"
        )


def check_rounds(out: Path, pattern: str, current: dict, cfg) -> None:
    """A stage that runs in rounds (online DPO, rejection sampling) goes on from the round folders `out/<pattern>` it
    finds only if they were made with this run's fingerprint, `rounds` aside (more rounds go on from the last): else a
    ConfigError says what changed; with `cfg.resume` false the folders are removed and the stage starts again."""
    found = sorted(p.name for p in out.glob(pattern) if p.is_dir())
    recorded = read_fingerprint(out)  # None: nothing recorded (no round made yet, or made before fingerprints)
    changed = changes(recorded, current, ignore=("rounds",), defaults=default_settings(type(cfg))) if found and recorded is not None else []
    if not changed:
        return
    if not getattr(cfg, "resume", True):
        console.print(f"{out}: resume=false, so its rounds {', '.join(found)} are discarded and the stage starts again")
        if processes().is_main:
            for name in found:
                shutil.rmtree(out / name)
        processes().barrier()
        return
    how = "rerun with resume=false to discard them and start again, or choose" if hasattr(cfg, "resume") else "choose"
    raise ConfigError(
        f"{out} holds rounds made with other settings ({', '.join(found)}): {'; '.join(changed)}. To go on, {how} "
        "a new output_dir (or undo the change)"
    )


def drop_checkpoint(out: Path, cfg) -> None:
    """The end of a stage, after its final model and summary.json: its checkpoint is no longer needed and is removed,
    unless `cfg.keep_checkpoint`."""
    if cfg.keep_checkpoint or not processes().is_main:
        return
    for name in (CHECKPOINT_DIR, ".checkpoint-old"):
        shutil.rmtree(out / name, ignore_errors=True)


def make_optimizer(params: list[torch.nn.Parameter] | list[dict], settings: OptimSettings, total_steps: int):
    """AdamW + warm-up + decay to 0 at `total_steps`. `params` may be torch param groups ({"params": [...], "lr": ...}):
    the schedule scales each group's own learning rate."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, eps=settings.adam_eps)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[settings.schedule]
    warmup = int(round(settings.warmup_ratio * total_steps))
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))
    return optimizer, scheduler


class LossScaler:
    """Dynamic loss scaling for `precision=fp16` (what torch.amp.GradScaler does, around tether's own step). fp16 loses
    gradients below about 6e-8, so the loss is multiplied by `scale` before the backward pass and the gradients are
    divided by it before the step. A step whose gradients overflowed (a non-finite global norm: the same number in
    every process) is skipped and the scale halved; after `growth_interval` clean steps the scale doubles.
    Disabled (bf16, fp32: no underflow to fear) it leaves the loss and the step alone."""

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 2000):
        self.enabled, self.growth_interval = enabled, growth_interval
        self.value = init_scale if enabled else 1.0
        self.clean_steps, self.skipped = 0, 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.value if self.enabled else loss

    def unscale(self, params) -> None:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(1.0 / self.value)

    def update(self, finite: bool) -> None:
        if not finite:
            self.value, self.clean_steps, self.skipped = self.value / 2, 0, self.skipped + 1
            return
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.value, self.clean_steps = self.value * 2, 0

    def state_dict(self) -> dict:
        return {"value": self.value, "clean_steps": self.clean_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.clean_steps, self.skipped = state["value"], state["clean_steps"], state["skipped"]


def scaler_metrics(scaler: LossScaler) -> dict[str, float]:
    """The loss scale and the steps skipped so far, for a stage's metrics (nothing unless fp16)."""
    return {"train/loss_scale": scaler.value, "train/steps_skipped": scaler.skipped} if scaler.enabled else {}


def clip_and_step(params, optimizer, scheduler, max_grad_norm: float, scaler: LossScaler | None = None) -> float:
    """Clip gradients, step, zero grads; returns the pre-clip global gradient norm. With an enabled `scaler`
    (fp16), the gradients are unscaled first, and a step whose norm is not finite is skipped (the schedule still moves)."""
    scaled = scaler is not None and scaler.enabled
    if scaled:
        scaler.unscale(params)
    if any(is_sharded(p) for p in params):  # FSDP: the norm over every process's shards
        norm = grad_norm(params).item()
        if 0 < max_grad_norm < norm:  # torch's clip_grad_norm_ scales by max / (norm + 1e-6) too
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(max_grad_norm / (norm + 1e-6))
    elif max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    else:
        norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()
    if scaled:
        scaler.update(math.isfinite(norm))
    if not scaled or math.isfinite(norm):
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def release_freed_memory() -> None:
    """Hand memory the allocator holds but no tensor uses back to the OS (glibc's malloc_trim).

    On CPU, activations of varying shapes leave holes in glibc's heap that it keeps, so a
    long run's resident memory creeps up step after step (about +3 GB over a 190-step reward
    model run); trimming once a step keeps it flat. A no-op off glibc.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc = None


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def group_stream(groups: list[list[int]], seed: int, n_needed: int) -> list[int]:
    """Indices for the whole run, epoch after epoch: groups are shuffled, their members stay adjacent.

    Raises ValueError when `n_needed` indices are asked of no index at all (an epoch would add nothing, so the loop
    would never end); a stage checks its data first and says which file gave nothing."""
    if n_needed > 0 and not any(groups):
        raise ValueError(f"cannot draw {n_needed} indices from no examples: the data gave nothing to train on")
    stream: list[int] = []
    epoch = 0
    while len(stream) < n_needed:
        for g in epoch_order(len(groups), seed, epoch):
            stream.extend(groups[g])
        epoch += 1
    return stream[:n_needed]


def index_stream(n: int, seed: int, n_needed: int) -> list[int]:
    """Example indices for the whole run, epoch after epoch, so step s always sees the same data."""
    return group_stream([[i] for i in range(n)], seed, n_needed)


def bucket_by_length(stream: list[int], key: Callable[[int], Any], batch_size: int, seed: int, window: int = 32) -> list[int]:
    """`stream` reordered so that each batch holds examples of similar length (less padding).

    Within consecutive windows of `window` batches the indices are sorted by `key(i)` (a
    length, or a (length, group) tuple to keep a group adjacent), cut into batches, and
    the batches shuffled: a window holds the same examples as before, and the order stays
    a pure function of the seed, so a resumed run sees the same batches.
    """
    out: list[int] = []
    span = window * batch_size
    for w, start in enumerate(range(0, len(stream), span)):
        chunk = sorted(stream[start : start + span], key=key)
        full = len(chunk) // batch_size
        batches = [chunk[k * batch_size : (k + 1) * batch_size] for k in range(full)]
        for b in epoch_order(full, seed + 7919, w):
            out.extend(batches[b])
        out.extend(chunk[full * batch_size :])  # a short remainder stays last, so batch boundaries hold
    return out


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole (FSDP shards gathered: with several processes, call it in all of them)."""
    return {k: full_tensor(p.detach()).cpu().contiguous() for k, p in module.named_parameters() if p.requires_grad}


def save_weights(folder: str | os.PathLike, modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]]) -> None:
    """The trainable weights of each module (or a `trainable_state` of it) to `<folder>/<name>.safetensors`."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        save_file(module if isinstance(module, dict) else trainable_state(module), str(Path(folder) / f"{name}.safetensors"))


def load_weights(folder: str | os.PathLike, modules: dict[str, torch.nn.Module]) -> None:
    """Copy weights written by `save_weights` back into the modules."""
    for name, module in modules.items():
        weights = load_file(str(Path(folder) / f"{name}.safetensors"))
        params = dict(module.named_parameters())
        missing = [k for k in weights if k not in params]
        if missing:
            raise ValueError(
                f"checkpoint {folder}: parameters {missing[:3]} do not exist in the model; was it written by a different config?"
            )
        with torch.no_grad():
            for k, v in weights.items():
                params[k].copy_(like_param(v, params[k]))  # this process's shard of it, under FSDP


BEST_DIR = "best"


def keep_best(out: str | os.PathLike, trainable: dict[str, torch.nn.Module]) -> None:
    """The trainable weights of the best policy so far (the Goodhart guard's) to `<out>/best`, replaced whole."""
    state = {name: trainable_state(module) for name, module in trainable.items()}  # every process gathers its shards (FSDP)
    if processes().is_main:  # one process writes the weights, the others wait
        tmp = Path(out) / ".best-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_weights(tmp, state)
        shutil.rmtree(Path(out) / BEST_DIR, ignore_errors=True)
        os.replace(tmp, Path(out) / BEST_DIR)
    processes().barrier()


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizer,
    scheduler,
    extra: dict[str, Any] | None = None,
    scaler: LossScaler | None = None,
) -> Path:
    """Write `<output_dir>/checkpoint` atomically (the fp16 loss scale too). With several processes every one gathers its shards (FSDP)
    and the main process writes; the others wait for it."""
    target = Path(output_dir) / CHECKPOINT_DIR
    weights = {name: trainable_state(module) for name, module in modules.items()}
    optimizer_state = whole_optimizer_state(optimizer)
    rng = processes().gather([rng_state()])  # every process's own: each drew its own minibatch orders
    if processes().is_main:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".checkpoint-"))
        try:
            save_weights(tmp, weights)
            if (Path(output_dir) / FINGERPRINT_FILE).exists():  # what the run started with: a resume must match it
                shutil.copyfile(Path(output_dir) / FINGERPRINT_FILE, tmp / FINGERPRINT_FILE)
            torch.save(
                {
                    "step": step,
                    "optimizer": optimizer_state,
                    "scheduler": scheduler.state_dict(),
                    "rng": rng,
                    "extra": extra or {},
                    "loss_scaler": scaler.state_dict() if scaler is not None else None,
                },
                tmp / "state.pt",
            )
            old = target.with_name(".checkpoint-old")
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    processes().barrier()
    return target


def whole_optimizer_state(optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded (FSDP) moment gathered whole, so a checkpoint does not depend
    on the number of processes that wrote it."""
    state = optimizer.state_dict()
    state["state"] = {
        i: {k: full_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in sorted(s.items())}
        for i, s in sorted(state["state"].items())
    }
    return state


def load_checkpoint(
    output_dir: str | os.PathLike, modules: dict[str, torch.nn.Module], optimizer, scheduler, scaler: LossScaler | None = None
) -> tuple[int, dict[str, Any]] | None:
    """Restore a checkpoint written by `save_checkpoint`; returns (step, extra) or None if there is none."""
    target = Path(output_dir) / CHECKPOINT_DIR
    if not (target / "state.pt").exists():
        return None
    load_weights(target, modules)
    state = torch.load(target / "state.pt", weights_only=False)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
    for i, moments in state["optimizer"]["state"].items():  # whole moments -> this process's shard of them
        for k, v in moments.items():
            if isinstance(v, torch.Tensor) and v.shape == params[i].shape:
                moments[k] = like_param(v, params[i])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("loss_scaler"):
        scaler.load_state_dict(state["loss_scaler"])
    rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # one per process that wrote it
    procs = processes()
    set_rng_state(rngs[procs.rank] if len(rngs) == procs.world else rngs[0])  # another number of processes: the main one's
    return state["step"], state["extra"]


def rng_state() -> dict:
    """The state of every random generator a training loop draws from (Python, NumPy, torch, CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def gold_peak_kl(checks: list[list[float]]) -> float | None:
    """The KL (nats) where Gao et al.'s RL curve fitted to the held-out (KL, gold) checks peaks; None before 4 checks
    or when the fit bends upwards (no peak yet)."""
    if len(checks) < 4:
        return None
    fit = fit_overopt([kl for kl, _ in checks], [gold for _, gold in checks], "rl")
    return fit["kl_peak"]


@dataclass
class GuardState:
    """What the Goodhart guard remembers from its checks; a checkpoint keeps it (`to_dict`, under "best"), so a resumed run
    goes on with the same best policy, patience count and fitted curve. A check is a dict: {"reward", "kl", and what the
    stage adds: "gold", "reward_se", ...}."""

    step: int | None = None
    """The step of the kept policy (in <out>/best); 0 = the starting policy; None before the first check."""
    reward: float | None = None
    """The kept policy's held-out reward reading."""
    kl: float | None = None
    """The kept policy's held-out KL (nats per response; None without a reference)."""
    top: float | None = None
    """The best held-out reward read so far, inside the KL ceiling. It is `reward` unless `tolerance` kept a later,
    lower reading; a new best must beat it."""
    since: int = 0
    """Regular checks (on the `every` schedule) since `top` was read: `patience` stops the run at that many."""
    initial_reward: float | None = None
    """The starting policy's held-out reward."""
    initial: dict | None = None
    """The starting policy's whole check."""
    last: dict | None = None
    """The latest check, with its "step"."""
    checks: list[list] = field(default_factory=list)
    """[kl, gold] of every check, the start's first: the points `gold_peak` fits its curve to."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (the keys the guard's dict had before it was a dataclass)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardState:
        """A checkpoint's state, also one written before `top`, `initial` or `checks` were kept (then `top` is the kept
        reading, and the others start empty)."""
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        if "top" not in data:
            state.top = state.reward
        return state


class GoodhartGuard:
    """The held-out guard of an RL stage (`early_stop`, EarlyStopSettings). Every `every` steps (every `every_near` once a
    check reads `near_kl` nats) the stage checks its policy on held-out prompts (reward, KL, gold); the best policy
    within the KL ceiling (with `tolerance`, the latest one reading within it of the best) is kept in `<out>/best`, and
    `update` says when to stop: held-out KL past `max_kl`, past the KL where the gold curve fitted to the checks peaks
    (`gold_peak`), or `patience` regular checks without a new best reward. `state` (GuardState) goes into the
    checkpoint (`state_dict` / `load_state_dict`), so a resumed run remembers it; `roll_back` loads the best policy at
    the end."""

    def __init__(self, settings, out: str | os.PathLike, trainable: dict[str, torch.nn.Module], steps: int, started: float | None = None):
        self.settings, self.out, self.trainable, self.steps = settings, Path(out), trainable, steps
        self.state = GuardState()
        self.peak_kl: float | None = None  # where the fitted gold curve peaks (gold_peak), after the last check
        # the time budget (max_minutes): the stage's start, each step's seconds, the last check's seconds
        self.started = time.time() if started is None else started
        self.step_seconds: list[float] = []
        self.check_seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The guard's state for a checkpoint."""
        return self.state.to_dict()

    def load_state_dict(self, data: dict[str, Any] | None) -> None:
        """Take the state a checkpoint kept (None: the checkpoint has none, and the guard starts afresh)."""
        if data is not None:
            self.state = GuardState.from_dict(data)

    def on_schedule(self, done: int) -> bool:
        """Is step `done` on the regular schedule: a multiple of `every`, or the last step?"""
        return done % self.settings.every == 0 or done == self.steps

    def due(self, done: int) -> bool:
        """Is a check due after `done` steps? On the regular schedule, and `every_near` steps after a check that read at
        least `near_kl` nats."""
        settings, last = self.settings, self.state.last
        if not settings.prompts:
            return False
        near = settings.near_kl is not None and last is not None and last["kl"] is not None and last["kl"] >= settings.near_kl
        return self.on_schedule(done) or (near and done - last["step"] >= settings.every_near)

    def timed(self, run_check: Callable[[], dict]) -> dict:
        """Run a held-out check, keeping how long it took (what the time budget expects the next one to take)."""
        t = time.time()
        check = run_check()
        self.check_seconds = time.time() - t
        return check

    def start(self, check: dict) -> None:
        """The starting policy's check: it is the first best, which RL must beat."""
        self.state = GuardState(
            step=0,
            reward=check["reward"],
            kl=check["kl"],
            top=check["reward"],
            since=0,
            initial_reward=check["reward"],
            initial=check,
            checks=[[check["kl"], check.get("gold")]],
        )
        keep_best(self.out, self.trainable)

    def out_of_time(self, done: int, step_seconds: float) -> str | None:
        """After step `done` (which took `step_seconds`, its check not counted): the reason to stop when the next check
        (the next step, with no held-out prompts) would end past `max_minutes` from the start, or None. With several
        processes the prediction is their mean, so all of them stop together."""
        self.step_seconds.append(step_seconds)
        budget = self.settings.max_minutes
        if not budget or done >= self.steps:
            return None
        ahead = 1
        if self.settings.prompts:  # up to the next check: a run stopped there ends on a checked policy
            while not self.due(done + ahead):
                ahead += 1
        mean_step = sum(self.step_seconds) / len(self.step_seconds)
        end = time.time() - self.started + ahead * mean_step + (self.check_seconds if self.settings.prompts else 0.0)
        end = processes().mean(end)
        if end <= budget * 60:
            return None
        what = f"the check after step {done + ahead}" if self.settings.prompts else f"step {done + 1}"
        return f"{what} would end at {end / 60:.1f} minutes, past max_minutes={budget:g}"

    def update(self, done: int, check: dict) -> str | None:
        """Record the check after `done` steps (the policy is kept when it is the best so far); the reason to stop, or None."""
        state, settings = self.state, self.settings
        state.last = {"step": done, **check}
        within_kl = settings.max_kl is None or check["kl"] is None or check["kl"] <= settings.max_kl
        beats = state.top is None or check["reward"] > state.top
        ties = settings.tolerance > 0 and state.top is not None and check["reward"] >= state.top - settings.tolerance
        if within_kl and (beats or ties):  # kept: the best so far, or later and within the tolerance of it
            state.step, state.reward, state.kl = done, check["reward"], check["kl"]
            keep_best(self.out, self.trainable)
        if within_kl and beats:  # patience counts the checks since the best reading
            state.top, state.since = check["reward"], 0
        elif self.on_schedule(done):  # not the extra checks near the ceiling (near_kl)
            state.since += 1
        state.checks.append([check["kl"], check.get("gold")])
        self.peak_kl = gold_peak_kl(state.checks) if settings.gold_peak and check["kl"] is not None else None
        if not within_kl:
            return f"held-out KL {check['kl']:.2f} nats passed max_kl={settings.max_kl}"
        if self.peak_kl is not None and check["kl"] > self.peak_kl:
            return f"held-out KL {check['kl']:.2f} nats passed {self.peak_kl:.2f}, where the gold curve fitted to {len(state.checks)} checks peaks"
        if settings.patience and state.since >= settings.patience:
            return f"held-out reward has not improved for {state.since} evaluations (best at step {state.step})"
        return None

    def roll_back(self, done: int, stage: str) -> None:
        """At the end of the run: load the best policy unless it is the last one."""
        if self.settings.prompts and self.state.step is not None and self.state.step != done:
            load_weights(self.out / BEST_DIR, self.trainable)
            which = (
                f"the latest within {self.settings.tolerance:g} of the best held-out reward"
                if self.settings.tolerance
                else "the best held-out policy"
            )
            console.print(f"{stage}: rolled back to {which}, step {self.state.step}")
        if self.settings.prompts and len(self.state.checks) > 1:  # the kept reading won a contest of noisy checks
            console.print(
                f"{stage}: the kept reward was chosen from {len(self.state.checks)} checks of the same prompts, so it reads "
                "high; `tether eval offset=...` on prompts the guard never saw measures the kept policy without that bias"
            )

    def summary(self, n_prompts: int) -> dict | None:
        """The `held_out` part of a stage's summary.json."""
        if not self.settings.prompts:
            return None
        state = self.state
        return {
            "prompts": n_prompts,
            "initial_reward": state.initial_reward,
            "best_reward": state.reward,
            "best_kl": state.kl,
            "best_step": state.step,
            "top_reward": state.top,
            "initial": state.initial,
            "last": state.last,
        }


def resumed_history(logger, out: Path, start_step: int, is_main: bool) -> list[dict]:
    """An RL stage's metrics of the steps before a resume (for its summary); `<out>/samples.jsonl` is cut back to the
    steps the checkpoint had seen, so a resumed run does not repeat them."""
    if not is_main:  # one process speaks for all
        return []
    samples_path = out / "samples.jsonl"
    if samples_path.exists():
        kept = [line for line, row in read_appended(samples_path) if row["step"] <= start_step]
        samples_path.write_text("".join(line + "\n" for line in kept))
    return [row for _, row in read_appended(logger.path)]


def checkpoint_or_interrupt(
    out,
    done: int,
    cfg,
    trainable: dict[str, torch.nn.Module],
    optimizer,
    scheduler,
    state: dict,
    logger,
    stage: str,
    scaler: LossScaler | None = None,
) -> bool:
    """The end of an RL step: a checkpoint every `cfg.save_every` steps; with `cfg.interrupt_after`, a checkpoint and
    a stop as if interrupted (how resuming is tested). True when the run must stop now (rerunning resumes it)."""
    if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
        save_checkpoint(out, done, trainable, optimizer, scheduler, extra=state, scaler=scaler)
    if cfg.interrupt_after is not None and cfg.interrupt_after <= done < cfg.steps:
        save_checkpoint(out, done, trainable, optimizer, scheduler, extra=state, scaler=scaler)
        logger.close()
        console.print(f"{stage}: stopped after step {done} (interrupt_after); rerun the same command to resume")
        return True
    return False
