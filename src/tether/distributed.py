"""Data parallelism over processes: every process holds the whole model, trains on its share
of each batch, and the gradients are summed across processes before the optimizer step.

    SFT, reward, DPO: N processes with grad_accum g make the same update as 1 process with
    grad_accum N*g (each takes every N-th micro-batch of the step's window, and the loss is
    normalised by the whole window's count, so the summed gradient is the window's).
    PPO, GRPO: each process samples its own episodes (its own seed; `batch_size` is per process)
    and whitens their advantages; each minibatch loss is divided by the minibatch's token count
    over every process, so the summed gradient is the whole minibatch's. The KL (for the
    controller), the logged means and the held-out check are reduced over all processes, so beta,
    early stopping and every decision are the same in each.

With `parallel.fsdp=true` (SFT, reward, DPO, PPO, GRPO) each transformer block is also sharded across the processes
(PyTorch FSDP2, `fully_shard`): its weights, gradients and Adam moments are split N ways and a block
is gathered whole only while it computes. The embeddings, final norm and heads stay whole in every
process (their gradients summed like the rest), so the code that calls a trunk and a head
separately (reward and DPO do) runs unchanged. `parallel.zero_stage=2` keeps a block's gathered weights from its
forward to its backward pass (ZeRO-2's trade, FSDP's SHARD_GRAD_OP); 3, the default, gathers them twice.
`parallel.offload_trainable=true` keeps the shards, their gradients and Adam moments in CPU memory (ZeRO-Offload).

Processes come from `tether <stage> --num-processes N` (which runs `torch.distributed.run`),
`torchrun`, or `accelerate launch`; accelerate's PartialState joins the process group (gloo on
CPU, NCCL on GPUs, one GPU per process). Started plainly, this is one process and every
reduction returns its input. Only the main process writes logs, checkpoints and models.
"""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor

from tether.config import ConfigError, ParallelSettings, check_parallel
from tether.models.loading import trunk_of
from tether.processes import is_sharded, processes
from tether.tracking import console

__all__ = ["apply_launcher", "shard_blocks", "gathered", "grad_norm", "like_param"]


def shard_blocks(model, zero_stage: int = 3, offload: bool = False) -> None:
    """FSDP2 over the processes, one unit per transformer block (see the module's docstring). A no-op in one process.
    zero_stage 3: a block gives its gathered weights back after its forward and gathers them again for its backward;
    2: it keeps them whole until its backward (FSDP's SHARD_GRAD_OP, ZeRO-2's memory for less communication).
    offload: the blocks' shards, gradients and optimizer moments live in CPU memory (FSDP's CPUOffloadPolicy), so the
    optimizer updates them there, and a block is copied to the accelerator only to compute (ZeRO-Offload)."""
    if processes().world == 1:
        return
    trunk = trunk_of(model)
    processes().reshard_blocks = zero_stage == 3
    processes().sharding = {"zero_stage": zero_stage, "offload_trainable": offload}
    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    for block in trunk.layers:
        fully_shard(block, reshard_after_forward=processes().reshard_blocks, offload_policy=policy)
    # the trunk is the root (reward and DPO call it directly): blocks under a root give their gathered weights
    # back after their forward too; its own tensors (embeddings, possibly tied to the LM head; the final norm) stay whole
    blocks = {p for block in trunk.layers for p in block.parameters()}
    fully_shard(trunk, ignored_params={p for p in trunk.parameters() if p not in blocks})
    processes().sharded = True


@contextlib.contextmanager
def gathered(model):
    """The model's sharded blocks held whole for a stretch of forward passes whose number differs between processes
    (sampling: each process stops when its own rows have ended). A sharded block gathers its weights in every forward,
    a collective that every process must join; here they are gathered once on entry (every process enters), stay
    whole inside, and are sharded again on exit. A no-op for a model that is not sharded."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for i, unit in enumerate(units):
            unit.reshard()
            # as sharded: the root keeps its weights; blocks give theirs back after the forward unless zero_stage=2
            unit.set_reshard_after_forward(i > 0 and processes().reshard_blocks, recurse=False)


def grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients, shards included (their squares summed over the processes)."""
    sharded = [p.grad.to_local().float().pow(2).sum() for p in params if p.grad is not None and is_sharded(p)]
    whole = [p.grad.float().pow(2).sum() for p in params if p.grad is not None and not is_sharded(p)]
    square = processes().sum(torch.stack(sharded).sum()) if sharded else torch.zeros(())
    return (square.to(whole[0].device if whole else square.device) + (torch.stack(whole).sum() if whole else 0.0)).sqrt()


def like_param(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor shaped for `param`: sharded the same way when `param` is a shard."""
    if not is_sharded(param):
        return value
    mesh = param.device_mesh  # cut on the mesh's device, then kept where the parameter lives (CPU when offloaded)
    return distribute_tensor(value.to(mesh.device_type), mesh, param.placements, src_data_rank=None).to(param.device)


def apply_launcher(cfg) -> None:
    """Give a training stage's config what its launcher asked for: the sharding (`launcher_sharding`) and the mixed
    precision (`launcher_precision`); say so once."""
    state = processes()
    if state.launcher_precision and hasattr(cfg, "precision") and cfg.precision != state.launcher_precision:
        console.print(
            f"tether: accelerate launch asked for mixed precision {state.launcher_precision}; "
            f"the run uses precision={state.launcher_precision} (the config said {cfg.precision})",
            soft_wrap=True,
        )
        cfg.precision = state.launcher_precision
    asked = state.launcher
    if asked is None or not hasattr(cfg, "parallel"):
        return
    try:
        cfg.parallel = ParallelSettings(
            fsdp=asked["fsdp"],
            zero_stage=asked["zero_stage"],
            offload_trainable=asked["offload_trainable"],
            activation_checkpointing=cfg.parallel.activation_checkpointing,
        )
        check_parallel(cfg)
    except ConfigError as e:
        raise ConfigError(f"accelerate launch asked for {asked['asked']}: {e}") from e
    parallel = cfg.parallel
    how = (
        f"parallel.fsdp=true parallel.zero_stage={parallel.zero_stage}"
        + (" parallel.offload_trainable=true" if parallel.offload_trainable else "")
        if parallel.fsdp
        else "parallel.fsdp=false"
    )
    console.print(f"tether: accelerate launch asked for {asked['asked']}; tether runs it with FSDP2 as {how}", soft_wrap=True)
