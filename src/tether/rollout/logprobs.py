"""Log-probabilities (and values) of response tokens in one forward pass."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tether.losses import entropy_from_logits
from tether.models.loading import adapter_off, position_ids_from_mask, trunk_of


@dataclass
class FrozenStates:
    """What a model's frozen lower blocks (`freeze_layers`) compute for a batch: the input of block `first` at every
    position, (B, T, d). Those blocks never change during training, so every later pass over the same sequences (the
    reference's, each PPO epoch's) can start at block `first` instead of recomputing them."""

    first: int
    states: torch.Tensor
    as_tuple: bool  # whether the model's blocks return (hidden,) rather than hidden (older transformers)

    def __getitem__(self, rows) -> FrozenStates:
        return FrozenStates(self.first, self.states[rows], self.as_tuple)


class _StopAfter(Exception):
    """Raised by the recording hook: the blocks above the frozen ones are not needed for the record."""


def frozen_states(model, sequences: torch.Tensor, attention_mask: torch.Tensor, n_blocks: int) -> FrozenStates:
    """The output of block `n_blocks - 1` (the input of block `n_blocks`), computed without running the blocks above
    it or the LM head: the forward pass is cut off by a hook once that block has run."""
    seen = []

    def record(module, args, output):
        seen.append(output)
        raise _StopAfter

    handle = trunk_of(model).layers[n_blocks - 1].register_forward_hook(record)
    try:
        trunk_of(model)(
            input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask), use_cache=False
        )
    except _StopAfter:
        pass
    finally:
        handle.remove()
    out = seen[0]
    as_tuple = isinstance(out, tuple)
    return FrozenStates(n_blocks, (out[0] if as_tuple else out).detach(), as_tuple)


class _Replay(torch.nn.Module):
    """Stands in for a frozen block: hands its input on unchanged, or, for the last frozen block, the recorded states."""

    def __init__(self, block, states: torch.Tensor | None, as_tuple: bool):
        super().__init__()
        self.states, self.as_tuple = states, as_tuple
        if hasattr(block, "attention_type"):  # some models pick each block's attention mask by it
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states if self.states is None else self.states
        return (out,) if self.as_tuple else out


@contextlib.contextmanager
def starting_at(model, frozen: FrozenStates | None):
    """Forward passes inside start at block `frozen.first` from the recorded states: the blocks below are stood in
    for (not removed, so each block keeps its index, which some models read). A no-op for `frozen=None`."""
    if frozen is None:
        yield
        return
    blocks = trunk_of(model).layers
    saved = [blocks[i] for i in range(frozen.first)]
    for i in range(frozen.first):
        blocks[i] = _Replay(saved[i], frozen.states if i == frozen.first - 1 else None, frozen.as_tuple)
    try:
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


@contextlib.contextmanager
def head_inputs(model):
    """Collects, for every forward pass inside, the hidden states the LM head reads (the last layer's, after the
    final norm: what `output_hidden_states` gives last), at the positions it reads (`logits_to_keep`). Read off the
    head itself, so it works wherever the head runs: under PEFT, and under FSDP, whose wrapped blocks Hugging Face's
    hidden-state recording does not see."""
    seen: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


def response_logits(
    model,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    want_hidden: bool = False,
    frozen: FrozenStates | None = None,
):
    """Logits (B, R, V) that predict each response token, and optionally the hidden states feeding them.

    Only the last R+1 positions go through the LM head (`logits_to_keep`): with a
    49k-token vocabulary the head is a large share of the cost, and prompt logits are
    never needed. With `frozen`, the pass starts above the frozen blocks from their recorded output.
    """
    R = sequences.shape[1] - prompt_len
    with head_inputs(model) if want_hidden else contextlib.nullcontext([]) as seen, starting_at(model, frozen):
        out = model(
            input_ids=sequences,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=R + 1,
            use_cache=False,
        )
    logits = out.logits[:, :-1]  # position P-1+t predicts response token t
    hidden = seen[-1][:, -(R + 1) : -1] if want_hidden else None  # (B, R, d), the states before each response token
    return logits, hidden


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token) under softmax(logits / temperature), in fp32.  logits (B,T,V), tokens (B,T) -> (B,T)."""
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


HEAD_CHUNK = 512  # rows of hidden states through the LM head at a time
"""Response tokens whose logits are computed together: (512, V) fp32 logits are 100 MB for a 49k vocabulary."""


def head_logprobs(head, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(N,) log pi(token) from (N, d) hidden states, the LM head applied HEAD_CHUNK rows at a time, so the
    (N, V) logits are never held whole; with gradients on, each chunk's logits are recomputed in the
    backward pass (torch.utils.checkpoint) instead of kept: about 1 GB less at 8 pairs of 96-token
    responses and a 49k vocabulary, for one more head matmul per chunk."""

    def chunk_logprobs(h, t):
        return token_logprobs(head(h), t)

    if hidden.shape[0] <= HEAD_CHUNK:
        return chunk_logprobs(hidden, tokens)
    parts = []
    for i in range(0, hidden.shape[0], HEAD_CHUNK):
        h, t = hidden[i : i + HEAD_CHUNK], tokens[i : i + HEAD_CHUNK]
        parts.append(
            torch.utils.checkpoint.checkpoint(chunk_logprobs, h, t, use_reentrant=False)
            if torch.is_grad_enabled()
            else chunk_logprobs(h, t)
        )
    return torch.cat(parts)


def policy_forward(
    model,
    sequences,
    attention_mask,
    prompt_len: int,
    temperature: float,
    value_head=None,
    with_entropy: bool = False,
    frozen: FrozenStates | None = None,
):
    """One pass over (prompt + response): response log-probs, values from `value_head`, entropy; with `frozen`
    (the rows' recorded FrozenStates) it starts above the frozen blocks.

    Returns dict with `logp` (B, R), `values` (B, R) or None, `entropy` (B, R) or None.
    """
    logits, hidden = response_logits(model, sequences, attention_mask, prompt_len, want_hidden=value_head is not None, frozen=frozen)
    tokens = sequences[:, prompt_len:]
    logp = token_logprobs(logits, tokens, temperature)
    values = None
    if value_head is not None:
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # values in fp32
            values = value_head(hidden.float()).squeeze(-1)
    entropy = entropy_from_logits(logits.float() / temperature) if with_entropy else None
    return {"logp": logp, "values": values, "entropy": entropy}


def in_chunks(fn, n: int, size: int) -> dict:
    """`fn(rows)` -> dict of tensors with `rows` first, run on consecutive slices of `size` rows
    and concatenated: the values of one call over all n rows, with 1/k of the peak memory."""
    parts = [fn(slice(i, i + size)) for i in range(0, n, size)]
    return {key: None if parts[0][key] is None else torch.cat([part[key] for part in parts]) for key in parts[0]}


def reference_logprobs(
    policy, reference, seqs: torch.Tensor, attn: torch.Tensor, P: int, temperature: float, chunk: int, frozen: FrozenStates | None = None
) -> torch.Tensor:
    """(B, R) log pi_ref, `chunk` rows a pass: from the frozen copy (full fine-tuning), or the policy itself with its
    adapter off (LoRA: `reference` is None; there `frozen`, the policy's recorded lower blocks, which are the
    reference's too, spares their pass). A reference in a Ray actor is asked by stages/rl_parts.py's RayReference."""
    with adapter_off(policy) if reference is None else contextlib.nullcontext():
        return in_chunks(
            lambda rows: policy_forward(
                policy if reference is None else reference,
                seqs[rows],
                attn[rows],
                P,
                temperature,
                frozen=frozen[rows] if frozen is not None and reference is None else None,
            ),
            len(seqs),
            chunk,
        )["logp"]


def record_frozen(model, seqs: torch.Tensor, attn: torch.Tensor, n_blocks: int, chunk: int) -> FrozenStates:
    """FrozenStates of a whole batch, `chunk` rows a pass."""
    parts = [frozen_states(model, seqs[i : i + chunk], attn[i : i + chunk], n_blocks) for i in range(0, len(seqs), chunk)]
    return FrozenStates(n_blocks, torch.cat([p.states for p in parts]), parts[0].as_tuple)


@torch.no_grad()
def replays_exactly(model, probe: torch.Tensor, n_blocks: int, with_adapter_off: bool = False) -> bool:
    """Whether passes that start from recorded FrozenStates give this model's own logits on `probe` (1, T): a check
    made once before training, for architectures whose blocks do something this replay does not expect. With
    `with_adapter_off`, also the reference's logits (the policy's adapter off) from the policy's recorded states: true
    when the frozen blocks' adapters are still the identity, as LoRA initialises them."""
    attn = torch.ones_like(probe)
    frozen = frozen_states(model, probe, attn, n_blocks)
    passes = [contextlib.nullcontext] + ([lambda: adapter_off(model)] if with_adapter_off else [])
    for switch in passes:
        with switch():
            full = response_logits(model, probe, attn, 1)[0]
            replayed = response_logits(model, probe, attn, 1, frozen=frozen)[0]
        if not torch.allclose(full, replayed, rtol=1e-4, atol=1e-5):
            return False
    return True
