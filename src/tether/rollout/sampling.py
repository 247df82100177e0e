"""A lean sampling loop: the same `Rollout` as `generate`, with less work per token.

`generate` goes through Hugging Face's `generate`, which runs logits processors, stopping
criteria and cache bookkeeping around every forward pass, and draws each token with
`torch.multinomial` over the whole vocabulary. On a small model that overhead is a large
share of a rollout. This loop keeps only what sampling needs:

  prefill:  one forward over the left-padded prompts (positions counted over real tokens),
            keeping the KV cache and only the last position's logits
  each token:  p = softmax(logits / temperature), cut to the nucleus when top_p < 1 (the
            smallest set of most likely tokens holding top_p of the mass, as HF's top-p);
            one uniform number u per row picks the token by inverse CDF (and its log-prob
            is kept, so an on-policy update needs no extra pass for log pi_old):
            y = min{ j : cdf_j > u * cdf_V }, exactly a draw from p (a zero-probability token
            has an empty interval and is never drawn); rows that have ended feed padding
  stop:     when every row has emitted EOS, or after max_new_tokens

With an SDPA model the decode steps get their (B, 1, 1, L) boolean attention mask directly,
skipping the causal-mask construction a 2D mask costs on every call. With stop strings the
work falls back to `generate` (HF stops a row at a stop string by matching decoded text).
The draws differ from `generate`'s for the same seed (another sampler), the distribution does not.
"""

from __future__ import annotations

import torch

from tether.config import GenerationSettings
from tether.data.collate import pad_left
from tether.data.records import Prompt
from tether.data.templates import encode_prompt
from tether.models.loading import autocast, device
from tether.rollout.generate import Rollout, generate

__all__ = ["sample_rollout", "next_token"]


def next_token(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / temperature), nucleus-filtered when top_p < 1.

    logits: (B, V) next-token logits.
    u:      (B,) uniform numbers in [0, 1), one per row.
    Returns ((B,) token ids, (B,) their log-probability log softmax(logits / temperature), before any top-p cut:
    the number `policy_forward` computes for the token).
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    full = probs
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # the mass before the token already reaches top_p
        outside[:, 0] = False  # the most likely token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
    cdf = probs.cumsum(-1)  # (B, V)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)  # (B, 1), in [0, total mass)
    token = torch.searchsorted(cdf, target, right=True).clamp(max=probs.shape[-1] - 1)  # (B, 1)
    return token.squeeze(-1), full.gather(-1, token).log().squeeze(-1)  # a drawn token has p > 0


@torch.no_grad()
def sample_rollout(model, tokenizer, prompts: list[Prompt], settings: GenerationSettings, seed: int,
                   precision: str = "bf16", value_head=None, with_entropy: bool = False) -> Rollout:
    """Sample one response per prompt, as one batch: `generate`'s `Rollout` (same layout and meaning) with
    the per-token numbers of the sampling pass filled in, each (B, R) and 0 on padding:

    logprobs  log pi(y_t | x, y_<t) of each sampled token under softmax(logits / temperature), read
              off the sampling step's own logits: the numbers `policy_forward` gives over the rollout,
              up to floating-point rounding (incremental decoding adds in another order; more so in bf16)
    values    with `value_head` (a Linear on the last hidden state): the head on the state before each
              token, as `policy_forward(..., value_head=)` reads it
    entropy   with `with_entropy`: the entropy of softmax(logits / temperature) at each step

    When stop strings send the work to `generate`, these stay None.
    """
    if settings.stop_strings:
        return generate(model, tokenizer, prompts, settings, seed, precision)
    encoded = [encode_prompt(tokenizer, p, settings.max_prompt_tokens) for p in prompts]
    prompt_ids, prompt_mask = pad_left([ids for ids, _ in encoded], tokenizer.pad_token_id)
    prompt_ids, prompt_mask = prompt_ids.to(device()), prompt_mask.to(device())
    B = prompt_ids.shape[0]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen = torch.Generator(device=prompt_ids.device).manual_seed(seed)
    uniforms = torch.rand(settings.max_new_tokens, B, generator=gen, device=prompt_ids.device)  # one per row and step
    direct_mask = getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"
    was_training = model.training
    model.eval()
    tokens, logps, values, entropies = [], [], [], []
    finished = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    mask = prompt_mask
    position = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P) positions over real tokens
    want_hidden = value_head is not None

    def value_of(out) -> None:  # the head on the last layer's state at the newest position, in fp32
        if want_hidden:
            with torch.autocast(device_type=prompt_ids.device.type, enabled=False):
                values.append(value_head(out.hidden_states[-1][:, -1].float()).squeeze(-1))

    with autocast(precision):
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position, use_cache=True, logits_to_keep=1,
                    output_hidden_states=want_hidden)
        cache, logits, position = out.past_key_values, out.logits[:, -1], position[:, -1:]
        value_of(out)
        for t in range(settings.max_new_tokens):
            token, logp = next_token(logits, settings.temperature, settings.top_p, uniforms[t])
            token = torch.where(finished, torch.full_like(token, pad), token)  # ended rows feed padding
            tokens.append(token)
            logps.append(logp)
            if with_entropy:
                entropies.append(torch.special.entr(torch.softmax(logits.float() / settings.temperature, dim=-1)).sum(-1))
            finished |= token == eos
            if t == settings.max_new_tokens - 1 or bool(finished.all()):
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            position = position + 1
            attention = mask.bool()[:, None, None, :] if direct_mask else mask
            out = model(input_ids=token[:, None], attention_mask=attention, position_ids=position, past_key_values=cache, use_cache=True,
                        output_hidden_states=want_hidden)
            cache, logits = out.past_key_values, out.logits[:, -1]
            value_of(out)
    model.train(was_training)
    response_ids = torch.stack(tokens, dim=1) if tokens else prompt_ids.new_zeros(B, 0)  # (B, R)
    is_eos = response_ids == eos
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # tokens after the first EOS are padding
    response_mask = (~after_eos).long()
    response_ids = response_ids.masked_fill(after_eos, pad)
    per_token = lambda rows: (torch.stack(rows[:response_ids.shape[1]], dim=1).masked_fill(after_eos, 0.0) if rows  # noqa: E731
                              else torch.zeros(B, 0, device=prompt_ids.device))
    texts = tokenizer.batch_decode(response_ids.masked_fill(response_mask == 0, pad), skip_special_tokens=True)
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
                   finished=is_eos.any(-1), texts=[t.strip() for t in texts], prompts_truncated=sum(t for _, t in encoded),
                   logprobs=per_token(logps), values=per_token(values) if want_hidden else None,
                   entropy=per_token(entropies) if with_entropy else None)
