"""Data parallelism over processes: every process holds the whole model, trains on its share
of each batch, and the gradients are summed across processes before the optimizer step.

    SFT, reward, DPO: N processes with grad_accum g make the same update as 1 process with
    grad_accum N*g (each takes every N-th micro-batch of the step's window, and the loss is
    normalised by the whole window's count, so the summed gradient is the window's).
    PPO, GRPO: each process samples its share of the step's episodes (with its own seed), and
    advantage statistics, KL and the held-out check are reduced over all of them, so beta,
    early stopping and every decision are the same in each process; the update is the mean of
    the processes' gradients, as DistributedDataParallel makes it.

Processes come from `tether <stage> --num-processes N` (which runs `torch.distributed.run`),
`torchrun`, or `accelerate launch`; accelerate's PartialState joins the process group (gloo on
CPU, NCCL on GPUs, one GPU per process). Started plainly, this is one process and every
reduction returns its input. Only the main process writes logs, checkpoints and models.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["processes", "Processes"]


class Processes:
    """This process's place among the data-parallel processes (rank, world size) and the reductions they share."""

    def __init__(self):
        from accelerate import PartialState

        # cpu=True on a machine without CUDA: several CPU processes then join over gloo
        self.state = PartialState(cpu=not torch.cuda.is_available()) if _launched() else None
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1
        self.is_main = self.rank == 0
        if not self.is_main:  # one process speaks for all
            from tether.tracking import console

            console.quiet = True

    @property
    def device(self) -> torch.device:
        return self.state.device if self.state else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def share(self, items: list) -> list:
        """This process's part of `items`: every world-th one, starting at its rank."""
        return items[self.rank::self.world]

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

    def check_in_step(self, params: list[torch.nn.Parameter], stage: str) -> None:
        """Raise unless every process holds the same trained weights (a checksum compared across processes):
        called before a stage saves its model, so a gradient that was not reduced can not go unnoticed."""
        if self.world == 1:
            return
        checksum = float(sum(p.detach().double().sum().item() for p in params))
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
        without a gradient in this process counts as zero there."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        if average:
            flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).clone()
            offset += n

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _launched() -> bool:
    """Started by a launcher that set up a process group (torchrun, accelerate launch)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def processes() -> Processes:
    """The one Processes object of this process (the process group is joined on first use)."""
    return Processes()
