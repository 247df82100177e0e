"""The parts an RL stage's loop is written against, each with one job, chosen once in setup from the config.

  Sampler       a rollout and its log-probs: tether's own sampler on the policy (`PolicySampler`) or a
                vLLM engine holding a copy of it (`VLLMEngineSampler`); for the sampling stages (bon, rs),
                responses of a model or of an engine holding it (`ResponseSampler`)
  Reference     log pi_ref of each response token: the policy with its LoRA adapter off, a frozen copy
                (in CPU memory with offload_frozen) (`LocalReference`), or a frozen copy in a Ray actor
                (`RayReference`)
  Scorer        (B,) scores and (B,) keep flags for a rollout from the stage's `reward` sources: one reward model
                or ensemble alone is scored on the policy's token ids (here or in a Ray actor), any other list
                (a function, a judge, several sources) on the decoded text; then the missing-EOS penalty and
                the clip (`build_scorer`). `SourceScorer`: a list of reward sources' weighted sum and each source's part
                (bon, rs); `GroupScorer`: the same over P groups of G samples (GRPO), with the groups whose
                rewards are all equal
  Value         the critic: a zero-initialised head on the policy trunk (`PolicyHeadValue`), or a model of its
                own (`ModelValue`): the reward model under a second adapter, or a full copy of it
  PolicyPasses  the trainable policy's (and value's) passes over a rollout: the frozen lower blocks run once
                per rollout and are replayed from their recorded outputs (reuse_frozen_states), and the
                sampling pass's own log-probs and values stand for the first pass (reuse_sampling_pass).
                `KeptPasses`: GRPO's, over the kept samples (`KeptBatch`): with one minibatch and one iteration
                the update's own pass is pi_old, and with a sharded policy every process runs as many passes

Where each model lives (this process, CPU memory, a Ray actor) and which engine samples are decided when
these are built; a loop calls them the same way whatever was chosen, and gets the same numbers.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tether.config import LoraSettings, RewardSourceSettings
from tether.distributed import gathered
from tether.losses import truncated_importance_weights
from tether.models.loading import apply_lora, autocast, device, position_ids_from_mask, trunk_of, unwrap
from tether.models.reward_model import RewardNormalization
from tether.models.sharing import shallow_clone
from tether.processes import processes
from tether.rewards.sources import RewardSource, load_reward_sources, score_samples
from tether.rollout.generate import Rollout
from tether.rollout.logprobs import FrozenStates, in_chunks, policy_forward, record_frozen, reference_logprobs
from tether.rollout.sampling import load_sampler, sample_responses, sample_rollout


def rows_of(x: torch.Tensor | None, rows) -> torch.Tensor | None:
    """`x[rows]`, or None for a per-token tensor a part does not keep (a sampler's log-probs, importance weights)."""
    return None if x is None else x[rows]


# ---- Sampler: prompts in, a Rollout with its log-probs out; `sync(policy)` after every update


class PolicySampler:
    """tether's own sampler on the policy (gathered whole first when sharded, unless `gather` is False: the caller
    holds it whole already). Its log-probs are the trainer's own, so they may stand for log pi_old (`exact`); with
    `value_head` it also keeps the head's values, with `with_entropy` each step's entropy."""

    exact = True

    def __init__(self, policy, tokenizer, generation, precision: str, value_head=None, with_entropy: bool = False, gather: bool = True):
        self.policy, self.tokenizer, self.generation, self.precision = policy, tokenizer, generation, precision
        self.value_head, self.with_entropy, self.gather = value_head, with_entropy, gather

    def sample(self, prompts: list, seed: int) -> Rollout:
        # sharded (parallel.fsdp): whole for the rollout, whose length differs between processes
        with gathered(self.policy) if self.gather else contextlib.nullcontext():
            return sample_rollout(
                self.policy,
                self.tokenizer,
                prompts,
                self.generation,
                seed=seed,
                precision=self.precision,
                value_head=self.value_head,
                with_entropy=self.with_entropy,
            )

    def importance_weights(self, old_logp: torch.Tensor, rollout: Rollout, mask: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """The sample is the policy's own: no reweighting."""
        return None, {}

    def weigh(self, old_logp: torch.Tensor, sampled_logp: torch.Tensor | None, mask: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """As `importance_weights`, for any rows of a rollout: no reweighting."""
        return None, {}

    def sync(self, policy) -> None:
        """Nothing to push: it samples the policy itself."""


class VLLMEngineSampler:
    """A vLLM engine (rollout/vllm_engine.py) holding a copy of the policy, synced after every update. Its log-probs
    are a little off the trainer's, so each token's surrogate term is weighed by min(pi_old / pi_vllm, is_cap)."""

    exact = False

    def __init__(self, engine, tokenizer, is_cap: float):
        self.engine, self.tokenizer, self.is_cap = engine, tokenizer, is_cap

    def sample(self, prompts: list, seed: int) -> Rollout:
        return self.engine.sample(self.tokenizer, prompts, seed)

    def importance_weights(self, old_logp: torch.Tensor, rollout: Rollout, mask: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """(B, R) truncated importance weights and their `is_weight_*` statistics (Yao et al. 2025)."""
        return self.weigh(old_logp, rollout.logprobs, mask)

    def weigh(self, old_logp: torch.Tensor, sampled_logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """As `importance_weights`, for any rows of a rollout: (b, R) log pi_old, the engine's log-probs of the same tokens
        and the mask."""
        return truncated_importance_weights(old_logp, sampled_logp, mask, self.is_cap)

    def sync(self, policy) -> None:
        self.engine.sync(policy)


class ResponseSampler:
    """A sampling stage's sampler (bon, rs): the model at `path`, or a vLLM engine that takes its weights (engine=vllm;
    one engine a process, rollout/sampling.py's load_sampler). `responses` gives one dict per prompt, in their order:
    response, finished, n_tokens."""

    def __init__(self, path: str, cfg):
        self.tokenizer, self.model = load_sampler(path, cfg)
        self.generation, self.precision = cfg.generation, cfg.precision

    def responses(self, prompts: list, seed: int, progress=None) -> list[dict]:
        return sample_responses(self.model, self.tokenizer, prompts, self.generation, seed, self.precision, progress=progress)

    def release(self) -> None:
        """Let go of the model (an engine stays with the process, for the next policy)."""
        self.model = None
        gc.collect()


# ---- Reference: log pi_ref; `start` begins the pass (a Ray actor works meanwhile), `result()` waits for it


@dataclass
class Ready:
    """A pass already done, read like a call under way in an actor."""

    value: torch.Tensor

    def result(self) -> torch.Tensor:
        return self.value


@dataclass
class OnDevice:
    """An actor's answer, moved to `device` when it is read."""

    call: object
    device: torch.device

    def result(self) -> torch.Tensor:
        return self.call.result().to(self.device)


class LocalReference:
    """The reference in this process: the policy with its adapter off (LoRA: `model` is None; the policy's recorded
    frozen blocks are the reference's too), or a frozen copy (full fine-tuning; in CPU memory with offload_frozen)."""

    def __init__(self, policy, model, temperature: float, chunk: int):
        self.policy, self.model, self.temperature, self.chunk = policy, model, temperature, chunk

    def logprobs(self, seqs, attn, P: int, chunk: int | None = None, frozen: FrozenStates | None = None) -> torch.Tensor:
        """(B, R) log pi_ref, `chunk` rows a pass."""
        return reference_logprobs(self.policy, self.model, seqs, attn, P, self.temperature, chunk or self.chunk, frozen=frozen)

    def start(self, seqs, attn, P: int, frozen: FrozenStates | None = None) -> Ready:
        return Ready(self.logprobs(seqs, attn, P, frozen=frozen))


class RayReference:
    """A frozen copy of the policy in its own Ray actor (placement=ray); `start` returns while the actor works."""

    def __init__(self, remote, temperature: float, chunk: int):
        self.model, self.temperature, self.chunk = remote, temperature, chunk

    def start(self, seqs, attn, P: int, frozen: FrozenStates | None = None, chunk: int | None = None) -> OnDevice:
        return OnDevice(self.model.logprobs(seqs, attn, P, self.temperature, chunk or self.chunk), seqs.device)

    def logprobs(self, seqs, attn, P: int, chunk: int | None = None, frozen: FrozenStates | None = None) -> torch.Tensor:
        return self.start(seqs, attn, P, chunk=chunk).result()


# ---- Scorer: (B,) scores after the penalty and the clip, and (B,) whether each episode counts


class Scorer:
    """`raw(prompts, rollout)` -> (B,) scores and (B,) keep flags; then a response that never ended gets
    `missing_eos_penalty` (when set) and every score is clipped to [-clip, clip]."""

    def __init__(self, raw: Callable, missing_eos_penalty: float | None, clip: float):
        self.raw, self.missing_eos_penalty, self.clip = raw, missing_eos_penalty, clip

    def __call__(self, prompts: list, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        scores, keep = self.raw(prompts, rollout)
        if self.missing_eos_penalty is not None:
            scores = torch.where(rollout.finished, scores, torch.full_like(scores, self.missing_eos_penalty))
        return scores.clamp(-self.clip, self.clip), keep


class RewardModelScores:
    """A reward model or ensemble's normalised scores of (prompt + response, EOS-ended) on the policy's own token ids
    (mean - std_coef * std over an ensemble's members), times the source's weight; every episode kept. `remote`: the
    model is in a Ray actor and its answer is waited for."""

    def __init__(self, rm, tokenizer, precision: str, std_coef: float, remote: bool, weight: float = 1.0):
        self.rm, self.eos, self.pad, self.precision, self.std_coef, self.remote, self.weight = (
            rm,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            precision,
            std_coef,
            remote,
            weight,
        )

    def __call__(self, prompts: list, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.ones(len(prompts), dtype=torch.bool, device=rollout.sequences.device)
        with torch.no_grad(), autocast(self.precision):
            scores = self.rm.scores(*rollout.sequences_for_reward(self.eos, self.pad), std_coef=self.std_coef)
        scores = scores.result().to(keep.device) if self.remote else scores
        return (scores if self.weight == 1.0 else self.weight * scores), keep


class TextScores:
    """The weighted sum of a list of reward sources' scores of the (prompt, completion) texts (rewards/sources.py;
    metadata is {}). A None from any source drops that episode from the update."""

    def __init__(self, sources: list[RewardSource]):
        self.sources = sources

    def __call__(self, prompts: list, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        values = score_samples(self.sources, prompts, rollout.texts, [{} for _ in prompts])[0]
        on = rollout.sequences.device
        return torch.tensor([0.0 if v is None else v for v in values], device=on), torch.tensor([v is not None for v in values], device=on)


def build_scorer(
    sources: list[RewardSourceSettings],
    rm,
    tokenizer,
    precision: str,
    missing_eos_penalty: float | None,
    clip: float,
    remote: bool = False,
    offload: bool = False,
) -> Scorer:
    """The Scorer of a stage's `reward` list. `rm`: the loaded reward model (or its Ray actor, `remote`) when the list is
    one `type: model` source (`reward_model_source`): it scores the policy's token ids. Any other list is loaded here
    (`offload`: its models' weights in CPU memory) and scores the decoded text."""
    if rm is not None:
        (source,) = sources
        raw = RewardModelScores(rm, tokenizer, precision, source.std_coef, remote, source.weight)
    else:
        raw = TextScores(load_reward_sources(sources, precision, offload))
    return Scorer(raw, missing_eos_penalty, clip)


@dataclass
class GroupScores:
    """A GroupScorer's verdict on P groups of G samples (sample k of group p is row p * G + k)."""

    values: list  # (B,) each sample's weighted sum, None where a source dropped it
    parts: dict  # each source's own (B,) scores, by name
    scores: torch.Tensor  # (P, G) the rewards, 0.0 where dropped
    valid: torch.Tensor  # (P, G) scored (no source dropped it)
    equal_groups: torch.Tensor  # (P,) every kept reward the same, or fewer than two kept: nothing to compare
    keep: torch.Tensor  # (P, G) trained on: valid, and (dynamic sampling) in a group with a spread
    rows: torch.Tensor  # (N,) the kept samples' rows


class SourceScorer:
    """A list of reward sources (rewards/sources.py: reward models here or in Ray actors, functions, verifiers, judges):
    their weighted sum per sample and each source's own scores. The sampling stages' scorer (bon, rs) as it is."""

    def __init__(self, sources: list):
        self.sources = sources

    def score(self, prompts: list, texts: list[str], metadata: list[dict]) -> tuple[list, dict]:
        """(B,) weighted sums (None: a source dropped that sample) and each source's (B,) scores, by name."""
        return score_samples(self.sources, prompts, texts, metadata)

    def records(self, records: list, texts: list[str]) -> list:
        """(B,) weighted sums for prompt records (a record's meta reaches the functions as their metadata)."""
        return self.score([r.prompt for r in records], texts, [dict(r.meta) for r in records])[0]


class GroupScorer(SourceScorer):
    """Reward sources over a rollout of groups (GRPO): their weighted sum per sample, each source's part, and with
    `dynamic_sampling` the groups whose rewards are all equal left out (DAPO, sec. 3.2)."""

    def __init__(self, sources: list, group_size: int, dynamic_sampling: bool):
        super().__init__(sources)
        self.group_size, self.dynamic_sampling = group_size, dynamic_sampling

    def __call__(self, prompts: list, texts: list[str], metadata: list[dict]) -> GroupScores:
        values, parts = self.score(prompts, texts, metadata)
        valid = torch.tensor([v is not None for v in values]).view(-1, self.group_size)  # (P, G)
        scores = torch.tensor([0.0 if v is None else v for v in values]).view(-1, self.group_size)  # (P, G)
        spread = torch.where(valid, scores, -torch.inf).amax(1) - torch.where(valid, scores, torch.inf).amin(1)  # (P,)
        equal_groups = ~(spread > 0)  # all equal, or fewer than two kept samples
        keep = valid & ~equal_groups[:, None] if self.dynamic_sampling else valid  # (P, G)
        return GroupScores(values, parts, scores, valid, equal_groups, keep, keep.flatten().nonzero().squeeze(-1))


# ---- Value: V(s_t) at every response position; `head` joins the policy's pass, `model` runs a pass of its own


class RewardModelValue(torch.nn.Module):
    """Value function from a copy of the reward model: its head applied at every response position,
    on the reward model's normalised scale (the scale of the scores it will predict)."""

    def __init__(self, reward_model, normalization: RewardNormalization):
        super().__init__()
        self.model, self.gain, self.bias = reward_model, normalization.gain, normalization.bias

    def forward(self, sequences, attention_mask, prompt_len: int) -> torch.Tensor:
        hidden = trunk_of(self.model)(
            input_ids=sequences, attention_mask=attention_mask, use_cache=False, position_ids=position_ids_from_mask(attention_mask)
        ).last_hidden_state
        raw = unwrap(self.model).score(hidden[:, prompt_len - 1 : -1]).squeeze(-1).float()  # (B, R)
        return raw * self.gain + self.bias


def reward_adapter_value(member, lora: LoraSettings) -> RewardModelValue:
    """A value model that starts as the reward model at the memory cost of an adapter: the
    reward model's own (frozen, shared) tensors under a new LoRA adapter, and a trainable copy of its head."""
    model = apply_lora(shallow_clone(member.model), lora, task_type="SEQ_CLS", modules_to_save=["score"])
    return RewardModelValue(model, member.normalization)


class PolicyHeadValue:
    """A zero-initialised Linear on the policy's last hidden state: its values come out of the policy's own pass
    (and out of the sampling pass, with reuse_sampling_pass). Saved as value_head.safetensors."""

    model = None

    def __init__(self, hidden_size: int):
        self.head = torch.nn.Linear(hidden_size, 1).to(device())
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.modules = {"value_head": self.head}

    def values(self, seqs, attn, P: int, policy_out: dict) -> torch.Tensor:
        return policy_out["values"]

    def rollout_values(self, rollout: Rollout, chunk: int) -> torch.Tensor:
        return rollout.values

    def save(self, out: Path) -> None:
        save_file({k: v.detach().cpu() for k, v in self.head.state_dict().items()}, str(Path(out) / "value_head.safetensors"))


class ModelValue:
    """A value model with a trunk of its own (a RewardModelValue): the reward model's weights under a second
    adapter, or a full trainable copy of the reward model."""

    head = None

    def __init__(self, model: RewardModelValue):
        self.model = model
        self.modules = {"value_model": model}

    def values(self, seqs, attn, P: int, policy_out: dict) -> torch.Tensor:
        return self.model(seqs, attn, P)

    def rollout_values(self, rollout: Rollout, chunk: int) -> torch.Tensor:
        seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
        return in_chunks(lambda rows: {"values": self.model(seqs[rows], attn[rows], P)}, len(seqs), chunk)["values"]

    def save(self, out: Path) -> None:
        """Not saved: the value model is a by-product of training the policy."""


# ---- PolicyPasses: log pi, V and entropy of the trainable models over one rollout


class PolicyPasses:
    """The trainable policy's and value's passes over rollouts. With `frozen_blocks` > 0 the policy's frozen lower
    blocks run once per rollout (`over`) and every later pass starts above them; with `reuse_sampling_pass` the
    sampler's own log-probs, values and entropies are log pi_old, V_old and the entropy (no second pass)."""

    def __init__(self, policy, value, temperature: float, chunk: int, frozen_blocks: int, reuse_sampling_pass: bool):
        self.policy, self.value, self.temperature, self.chunk = policy, value, temperature, chunk
        self.frozen_blocks, self.reuse_sampling_pass = frozen_blocks, reuse_sampling_pass

    def over(self, rollout: Rollout) -> RolloutPasses:
        seqs, attn = rollout.sequences, rollout.attention_mask
        frozen = record_frozen(self.policy, seqs, attn, self.frozen_blocks, self.chunk) if self.frozen_blocks else None
        return RolloutPasses(self, rollout, frozen)


class RolloutPasses:
    """PolicyPasses over one rollout; `frozen` holds its recorded lower blocks (or None)."""

    def __init__(self, parts: PolicyPasses, rollout: Rollout, frozen: FrozenStates | None):
        self.parts, self.rollout, self.frozen = parts, rollout, frozen
        self.seqs, self.attn, self.P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]

    def __call__(self, rows, with_entropy: bool = False) -> dict:
        """`logp` (b, R), `values` (b, R) and `entropy` (b, R) or None, for the rollout's `rows`."""
        parts, seqs, attn = self.parts, self.seqs[rows], self.attn[rows]
        out = policy_forward(
            parts.policy,
            seqs,
            attn,
            self.P,
            parts.temperature,
            value_head=parts.value.head,
            with_entropy=with_entropy,
            frozen=None if self.frozen is None else self.frozen[rows],
        )
        out["values"] = parts.value.values(seqs, attn, self.P, out)
        return out

    def old(self) -> dict:
        """log pi_old, V_old and the entropy of the whole rollout, before the update (call under no_grad); in
        chunks: without gradients a chunk's logits weigh about what a micro-batch's kept activations do."""
        rollout, parts = self.rollout, self.parts
        if parts.reuse_sampling_pass and rollout.logprobs is not None:  # no second pass of the policy
            return {"logp": rollout.logprobs, "values": parts.value.rollout_values(rollout, parts.chunk), "entropy": rollout.entropy}
        return in_chunks(lambda rows: self(rows, with_entropy=True), len(self.seqs), parts.chunk)


# ---- KeptPasses: GRPO's passes of the policy over the samples a step keeps


@dataclass
class KeptBatch:
    """The kept rows of a rollout, with the columns that are padding in every kept row cut off (leading prompt
    padding, trailing response padding): sequences and attention_mask (N, P + R), the prompt width P, the response
    mask (N, R) and the sampler's log-probs of the response tokens (N, R; None when it kept none)."""

    seqs: torch.Tensor
    attn: torch.Tensor
    P: int
    mask: torch.Tensor
    sampled_logp: torch.Tensor | None

    @classmethod
    def of(cls, rollout: Rollout, rows: torch.Tensor) -> KeptBatch:
        prompt_mask, response_mask = rollout.prompt_mask[rows], rollout.response_mask[rows]
        lead = int((prompt_mask.sum(0) == 0).long().cumprod(0).sum())  # prompt columns that are padding in every kept row
        R = int(response_mask.sum(-1).max()) if len(rows) else 0
        P = rollout.prompt_ids.shape[1] - lead
        seqs = torch.cat([rollout.prompt_ids[rows, lead:], rollout.response_ids[rows, :R]], dim=1)
        attn = torch.cat([prompt_mask[:, lead:], response_mask[:, :R]], dim=1)
        mask = response_mask[:, :R].float()
        sampled = rollout.logprobs[rows, :R].float() * mask if rollout.logprobs is not None else None
        return cls(seqs, attn, P, mask, sampled)

    def __len__(self) -> int:
        return len(self.seqs)


class KeptPasses:
    """The policy's passes over a KeptBatch (GRPO has no value). `on_policy` (one minibatch, one iteration): no scoring
    pass, the update's own forward pass is pi_old and is written into `old` as each micro-batch runs; except that
    `old_first` (a KL-shaped reward needs log pi_old before the update) takes it from the sampler when its numbers are
    the trainer's own (`trust_sampler`), else from a pass. `sharded`: each minibatch is padded with empty passes so that
    every process runs as many (a sharded block computes only when every process runs it)."""

    def __init__(
        self, policy, temperature: float, chunk: int, precision: str, on_policy: bool, old_first: bool, trust_sampler: bool, sharded: bool
    ):
        self.policy, self.temperature, self.chunk, self.precision = policy, temperature, chunk, precision
        self.on_policy, self.old_first, self.trust_sampler, self.sharded = on_policy, old_first, trust_sampler, sharded

    def forward(self, batch: KeptBatch, rows, with_entropy: bool = False) -> dict:
        return policy_forward(self.policy, batch.seqs[rows], batch.attn[rows], batch.P, self.temperature, with_entropy=with_entropy)

    def old(self, batch: KeptBatch) -> dict:
        """`logp` log pi_old (N, R) and `entropy` (N, R; None when nothing was kept), before the update (call under no_grad);
        on-policy, zeros the update fills in."""
        N, mask = len(batch), batch.mask
        if N == 0:
            return {"logp": torch.zeros_like(mask), "entropy": None}
        if not self.on_policy:
            return in_chunks(lambda rows: self.forward(batch, rows, with_entropy=True), N, self.chunk)
        logp = torch.zeros_like(mask)
        if self.old_first:
            logp = (
                batch.sampled_logp
                if self.trust_sampler and batch.sampled_logp is not None
                # as the sampler computed it
                else in_chunks(lambda rows: self.forward(batch, rows), N, self.chunk)["logp"]
            )
        return {"logp": logp, "entropy": torch.zeros_like(mask)}

    def __call__(self, batch: KeptBatch, rows, old: dict) -> dict:
        """`logp` (b, R) of the policy now, with grad; on-policy it is pi_old too (and gives the entropy)."""
        new = self.forward(batch, rows, with_entropy=self.on_policy)
        if self.on_policy:  # the first and only pass: pi_old is this very policy
            old["logp"][rows], old["entropy"][rows] = new["logp"].detach(), new["entropy"].detach()
        return new

    def micro_batches(self, minibatch: torch.Tensor, rollout: Rollout):
        """The minibatch's rows `chunk` at a time; sharded, then as many empty passes (on a row given no weight, their
        gradient zero) as the busiest process has micro-batches more than this one."""
        micros = [micro for micro in minibatch.split(self.chunk) if len(micro)]  # an empty minibatch splits into one empty part
        idle = int(processes().max(len(micros))) - len(micros) if self.sharded else 0  # counted before any pass runs
        yield from micros
        empty = KeptBatch.of(rollout, torch.tensor([0])) if idle else None
        for _ in range(idle):
            with autocast(self.precision):
                (self.forward(empty, slice(None))["logp"].sum() * 0.0).backward()
