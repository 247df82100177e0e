"""Log-probabilities (and values) of response tokens in one forward pass."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from tether.losses import entropy_from_logits
from tether.models.reward_model import position_ids_from_mask


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


def response_logits(model, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, want_hidden: bool = False):
    """Logits (B, R, V) that predict each response token, and optionally the hidden states feeding them.

    Only the last R+1 positions go through the LM head (`logits_to_keep`): with a
    49k-token vocabulary the head is a large share of the cost, and prompt logits are
    never needed.
    """
    R = sequences.shape[1] - prompt_len
    with head_inputs(model) if want_hidden else contextlib.nullcontext([]) as seen:
        out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                    logits_to_keep=R + 1, use_cache=False)
    logits = out.logits[:, :-1]  # position P-1+t predicts response token t
    hidden = seen[-1][:, -(R + 1):-1] if want_hidden else None  # (B, R, d), the states before each response token
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
        h, t = hidden[i:i + HEAD_CHUNK], tokens[i:i + HEAD_CHUNK]
        parts.append(torch.utils.checkpoint.checkpoint(chunk_logprobs, h, t, use_reentrant=False) if torch.is_grad_enabled()
                     else chunk_logprobs(h, t))
    return torch.cat(parts)


def policy_forward(model, sequences, attention_mask, prompt_len: int, temperature: float, value_head=None, with_entropy: bool = False):
    """One pass over (prompt + response): response log-probs, values from `value_head`, entropy.

    Returns dict with `logp` (B, R), `values` (B, R) or None, `entropy` (B, R) or None.
    """
    logits, hidden = response_logits(model, sequences, attention_mask, prompt_len, want_hidden=value_head is not None)
    tokens = sequences[:, prompt_len:]
    logp = token_logprobs(logits, tokens, temperature)
    values = None
    if value_head is not None:
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # values in fp32
            values = value_head(hidden.float()).squeeze(-1)
    entropy = entropy_from_logits(logits.float() / temperature) if with_entropy else None
    return {"logp": logp, "values": values, "entropy": entropy}


def reference_logprobs(policy, reference, seqs: torch.Tensor, attn: torch.Tensor, P: int, temperature: float, chunk: int) -> torch.Tensor:
    """(B, R) log pi_ref, `chunk` rows a pass: from the reference's Ray actor (placement=ray), the frozen copy (full
    fine-tuning), or the policy itself with its adapter off (LoRA: `reference` is None)."""
    from tether.models.loading import adapter_off
    from tether.placement import RemoteModel
    from tether.training import in_chunks

    if isinstance(reference, RemoteModel):
        return reference.logprobs(seqs, attn, P, temperature, chunk).result().to(seqs.device)
    with (adapter_off(policy) if reference is None else contextlib.nullcontext()):
        return in_chunks(lambda rows: policy_forward(policy if reference is None else reference, seqs[rows], attn[rows], P, temperature),
                         len(seqs), chunk)["logp"]
