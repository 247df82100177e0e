"""Frozen models in Ray actors (`placement=ray`): the reward model and the reference on their own devices.

PPO holds four models. On one machine tether keeps them in one process and one copy of the
shared weights (models/sharing.py). When they no longer fit beside each other, OpenRLHF and veRL
put each on its own GPUs or nodes with Ray; tether does the same for the frozen ones:

  reward actor:     PPO's reward model (or ensemble) scores each rollout: (B,) normalised scores;
                    in GRPO each reward source that holds a model (`model`, `judge`) gets an actor
                    (a Python function source stays in the policy's process)
  reference actor:  with full fine-tuning, the frozen reference gives log pi_ref of each response
                    token; with LoRA the reference is the policy's own weights with the adapter
                    off, so it stays with the policy and no actor is started

Each actor asks Ray for `gpus` GPUs (Ray gives it those and no others) and `cpus` CPU cores
(its torch threads). The policy's process sends token tensors and gets tensors back; the two
actors work on a rollout at the same time. The numbers are those of the local models: the same
weights, inputs and chunks (up to the order of floating-point sums across thread counts).

Ray is an optional extra (`pip install "tether[ray]"`) and is imported only here, only when asked for.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from tether.config import ConfigError
from tether.models.loading import autocast, device, load_frozen_lm
from tether.models.reward_model import load_reward_model
from tether.processes import processes
from tether.rewards.sources import RewardSource, load_source, source_names
from tether.rollout.logprobs import in_chunks, policy_forward


@dataclass
class RemoteCall:
    """A call under way in an actor; `result()` waits for its tensor."""

    ref: object

    def result(self) -> torch.Tensor:
        import ray

        return ray.get(self.ref)


class FrozenModelWorker:
    """What runs inside an actor: one frozen model (or reward source) and the no-grad passes PPO and GRPO need from it."""

    def __init__(self, kind: str, path, precision: str, threads: int):
        os.environ["WORLD_SIZE"] = "1"  # one process inside the actor, whatever launched the driver
        torch.set_num_threads(max(1, threads))
        self.kind, self.precision = kind, precision
        if kind == "source":  # `path` is a reward source's settings
            self.model = load_source(path, precision)
        else:
            self.model = load_reward_model(path) if kind == "reward" else load_frozen_lm(path)

    def score_texts(self, prompts: list, completions: list[str], metadata: list[dict]) -> list:
        """A reward source's scores (floats or None) for (prompt, completion) pairs."""
        return self.model(prompts, completions, metadata)

    def vocab(self) -> dict[str, int]:
        return self.model.vocab()

    @torch.no_grad()
    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, std_coef: float) -> torch.Tensor:
        """(B,) normalised reward-model scores (prompt + response, EOS-ended)."""
        with autocast(self.precision):
            return self.model.scores(input_ids.to(device()), attention_mask.to(device()), std_coef=std_coef).float().cpu()

    @torch.no_grad()
    def logprobs(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float, chunk: int
    ) -> torch.Tensor:
        """(B, R) log pi_ref of each response token, `chunk` rows a pass (as the local reference would run)."""
        seqs, attn = sequences.to(device()), attention_mask.to(device())
        with autocast(self.precision):
            out = in_chunks(lambda rows: policy_forward(self.model, seqs[rows], attn[rows], prompt_len, temperature), len(seqs), chunk)
        return out["logp"].float().cpu()


class RemoteModel:
    """A frozen model in its own Ray actor; `scores` / `logprobs` start a call and return a `RemoteCall`."""

    def __init__(self, kind: str, path: str, precision: str, gpus: float, cpus: int):
        import ray

        actor = ray.remote(num_gpus=gpus, num_cpus=cpus)(FrozenModelWorker)
        self.kind, self.path = kind, path
        self.actor = actor.remote(kind, path, precision, cpus)

    def vocab(self) -> dict[str, int]:
        import ray

        return ray.get(self.actor.vocab.remote())

    def scores(self, input_ids, attention_mask, std_coef: float = 0.0) -> RemoteCall:
        return RemoteCall(self.actor.scores.remote(input_ids.cpu(), attention_mask.cpu(), std_coef))

    def logprobs(self, sequences, attention_mask, prompt_len: int, temperature: float, chunk: int) -> RemoteCall:
        return RemoteCall(self.actor.logprobs.remote(sequences.cpu(), attention_mask.cpu(), prompt_len, temperature, chunk))

    def score_texts(self, prompts, completions, metadata) -> list:
        import ray

        return ray.get(self.actor.score_texts.remote(prompts, completions, metadata))


class RayPlacement:
    """Starts Ray (or joins the cluster at `address`) when the first actor is asked for, and the actors; `close` stops
    what it started. A run whose frozen models all stay local (LoRA, a function reward) starts nothing."""

    def __init__(self, address: str | None, gpus: float, cpus: int):
        try:
            import ray  # noqa: F401  (checked here, so a missing Ray fails before any model loads)
        except ImportError:
            raise ConfigError('placement=ray needs Ray, which is not installed: pip install "tether[ray]"') from None
        self.address, self.gpus, self.cpus, self.models, self.started = address, gpus, cpus, [], False

    def model(self, kind: str, path, precision: str) -> RemoteModel:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started = True
        remote = RemoteModel(kind, path, precision, self.gpus, self.cpus)
        self.models.append(remote)
        return remote

    def reward_sources(self, settings: list, precision: str) -> list:
        """`load_reward_sources`, with each source that holds a model (model, judge) in its own actor."""
        return [
            RewardSource(
                name,
                s.weight,
                self.model("source", s, precision).score_texts if s.type in ("model", "judge") else load_source(s, precision),
            )
            for name, s in zip(source_names(settings), settings)
        ]

    def close(self) -> None:
        import ray

        for remote in self.models:
            ray.kill(remote.actor)
        self.models = []
        if self.started:
            ray.shutdown()


@contextlib.contextmanager
def placed(cfg):
    """A RayPlacement for `cfg.placement == "ray"` (closed when the stage ends, however it ends), else None."""
    if cfg.placement != "ray":
        yield None
        return
    if processes().world > 1:
        raise ConfigError("placement=ray runs the stage in one process, with the frozen models in Ray actors: drop --num-processes")
    placement = RayPlacement(cfg.ray.address, cfg.ray.gpus_per_model, cfg.ray.cpus_per_model)
    try:
        yield placement
    finally:
        placement.close()
