"""A lean sampling loop: the same `Rollout` as `generate`, with less work per token.

`generate` goes through Hugging Face's `generate`, which runs logits processors, stopping
criteria and cache bookkeeping around every forward pass, and draws each token with
`torch.multinomial` over the whole vocabulary. On a small model that overhead is a large
share of a rollout. This loop keeps only what sampling needs:

  prefill:  one forward over the left-padded distinct prompts (positions counted over real
            tokens), keeping the KV cache and only the last position's logits; a prompt given
            several times (samples per prompt, GRPO's groups) is computed once and its cache
            copied to each of its rows
  each token:  p = softmax(logits / temperature), cut to the nucleus when top_p < 1 (the
            smallest set of most likely tokens holding top_p of the mass, as HF's top-p);
            one uniform number u per row picks the token by inverse CDF (and its log-prob
            is kept, so an on-policy update needs no extra pass for log pi_old):
            y = min{ j : cdf_j > u * cdf_V }, exactly a draw from p (a zero-probability token
            has an empty interval and is never drawn)
  compact:  a row that has emitted EOS leaves the batch (and its cache rows go): later steps
            compute only the rows still running. Each row keeps its own uniform per step, so
            which rows ran alongside it changes no draw
  stop:     when every row has emitted EOS, or after max_new_tokens

With an SDPA model the decode steps get their (B, 1, 1, L) boolean attention mask directly,
skipping the causal-mask construction a 2D mask costs on every call. With stop strings the
work falls back to `generate` (HF stops a row at a stop string by matching decoded text).
The draws differ from `generate`'s for the same seed (another sampler), the distribution does not.
"""

from __future__ import annotations

import contextlib

import torch

from tether.config import GenerationSettings
from tether.data.collate import pad_left
from tether.data.records import Prompt
from tether.data.templates import encode_prompt
from tether.models.loading import autocast, device, kv_cache_of, load_causal_lm, load_tokenizer, with_kv_cache
from tether.rollout.generate import Rollout, generate
from tether.rollout.logprobs import head_inputs
from tether.rollout.vllm_engine import VLLMSampler

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
def sample_rollout(
    model,
    tokenizer,
    prompts: list[Prompt],
    settings: GenerationSettings,
    seed: int,
    precision: str = "bf16",
    value_head=None,
    with_entropy: bool = False,
) -> Rollout:
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
    # a prompt that comes several times (PPO's samples_per_prompt, GRPO's groups) is prefilled once:
    # the prefill runs over the distinct prompts and its KV cache is then copied out to every row
    first: dict[tuple, int] = {}
    inverse = [first.setdefault(tuple(ids), len(first)) for ids, _ in encoded]
    distinct_ids, distinct_mask = pad_left([list(ids) for ids in first], tokenizer.pad_token_id)
    distinct_ids, distinct_mask = distinct_ids.to(device()), distinct_mask.to(device())
    inverse = torch.tensor(inverse, device=distinct_ids.device)
    prompt_ids, prompt_mask = distinct_ids[inverse], distinct_mask[inverse]  # (B, P)
    B, R = prompt_ids.shape[0], settings.max_new_tokens
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen = torch.Generator(device=prompt_ids.device).manual_seed(seed)
    uniforms = torch.rand(R, B, generator=gen, device=prompt_ids.device)  # one per row and step
    direct_mask = getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"
    was_training = model.training
    model.eval()
    # per-token outputs, (B, R); a finished row leaves the batch, so its later slots stay padding / 0
    response_ids = torch.full((B, R), pad, dtype=torch.long, device=prompt_ids.device)
    logprobs, values, entropy = (torch.zeros(B, R, device=prompt_ids.device) for _ in range(3))
    want_hidden = value_head is not None
    active = torch.arange(B, device=prompt_ids.device)  # the rows still sampling

    def value_of(t: int, rows=None) -> None:  # the value head on the state the LM head just read (newest position), in fp32
        if want_hidden and t < R:
            with torch.autocast(device_type=prompt_ids.device.type, enabled=False):
                v = value_head(seen[-1][:, -1].float()).squeeze(-1)
            seen.clear()
            values[active, t] = v if rows is None else v[rows]

    n_steps = 0
    with autocast(precision), head_inputs(model) if want_hidden else contextlib.nullcontext([]) as seen:
        position = (distinct_mask.cumsum(-1) - 1).clamp(min=0)  # (B', P) positions over real tokens
        out = model(input_ids=distinct_ids, attention_mask=distinct_mask, position_ids=position, use_cache=True, logits_to_keep=1)
        cache, logits, position = kv_cache_of(out), out.logits[:, -1][inverse], position[:, -1:][inverse]
        if len(first) < B:
            cache.batch_select_indices(inverse)
        value_of(0, rows=inverse)
        mask = prompt_mask
        for t in range(R):
            token, logp = next_token(logits, settings.temperature, settings.top_p, uniforms[t, active])
            response_ids[active, t], logprobs[active, t] = token, logp
            if with_entropy:
                entropy[active, t] = torch.special.entr(torch.softmax(logits.float() / settings.temperature, dim=-1)).sum(-1)
            n_steps = t + 1
            running = token != eos
            if t == R - 1 or not bool(running.any()):
                break
            if not bool(running.all()):  # rows that just ended leave the batch: no more work spent on padding
                keep = running.nonzero().squeeze(-1)
                active, token, mask, position = active[keep], token[keep], mask[keep], position[keep]
                cache.batch_select_indices(keep)
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            position = position + 1
            attention = mask.bool()[:, None, None, :] if direct_mask else mask
            out = model(input_ids=token[:, None], attention_mask=attention, position_ids=position, use_cache=True, **with_kv_cache(cache))
            logits = out.logits[:, -1]
            value_of(t + 1)
    model.train(was_training)
    response_ids = response_ids[:, :n_steps]
    is_eos = response_ids == eos
    response_mask = ((is_eos.cumsum(-1) - is_eos.long()) == 0).long()  # a row's tokens up to and including its first EOS
    per_token = lambda x: x[:, :n_steps] * response_mask  # noqa: E731
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        finished=is_eos.any(-1),
        texts=[t.strip() for t in texts],
        prompts_truncated=sum(t for _, t in encoded),
        logprobs=per_token(logprobs),
        values=per_token(values) if want_hidden else None,
        entropy=per_token(entropy) if with_entropy else None,
    )


_ENGINES: dict = {}
"""This process's vLLM engine, once started: later calls swap its weights instead of starting another
(an engine's GPU memory is not reliably given back, and rejection sampling samples a new policy every round)."""


def load_sampler(path: str, cfg, model=None):
    """(tokenizer, sampler) for a sampling stage: the model itself for tether's sampler, or, with
    `cfg.engine == "vllm"`, a vLLM engine holding it (rollout/vllm_engine.py); `sample_responses` takes either.
    An engine already running in this process gets the weights of the model at `path` (same architecture),
    taken from `model` when the caller has it loaded already. The tokenizer takes `cfg.chat_template` where the stage has one."""
    if cfg.engine != "vllm":
        return load_tokenizer(path, getattr(cfg, "chat_template", None)), load_causal_lm(path).eval()
    engine = _ENGINES.get("vllm")
    if engine is None:
        engine = _ENGINES["vllm"] = VLLMSampler(path, cfg.generation, cfg.vllm, cfg.seed)
    elif engine.model_path != path:
        engine.sync(model if model is not None else load_causal_lm(path))
    engine.model_path = path
    return load_tokenizer(path, getattr(cfg, "chat_template", None)), engine


def sample_responses(
    model, tokenizer, prompts: list[Prompt], settings: GenerationSettings, seed: int, precision: str = "bf16", progress=None
) -> list[dict]:
    """Sample one response for each prompt in batches of `settings.batch_size`, with the lean sampler
    (rollout/sampling.py; HF `generate` when there are stop strings), or all at once with a vLLM engine
    (`load_sampler`), which schedules its own batches.

    Prompts are bucketed by length (similar lengths share a batch, so less padding; a prompt given several
    times stays in one run, so its prefill is computed once) and returned in the input order as dicts:
    response, finished, n_tokens.
    """
    vllm = hasattr(model, "sync")  # a VLLMSampler: every prompt in one call
    lengths = [len(encode_prompt(tokenizer, p, settings.max_prompt_tokens)[0]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    size = max(len(order), 1) if vllm else settings.batch_size
    results: list[dict | None] = [None] * len(prompts)
    for b, start in enumerate(range(0, len(order), size)):
        idx = order[start : start + size]
        batch = [prompts[i] for i in idx]
        rollout = (
            model.sample(tokenizer, batch, seed, settings)
            if vllm
            else sample_rollout(model, tokenizer, batch, settings, seed=seed * 100003 + b, precision=precision)
        )
        for j, i in enumerate(idx):
            results[i] = {"response": rollout.texts[j], "finished": bool(rollout.finished[j]), "n_tokens": int(rollout.lengths[j])}
        if progress is not None:
            progress(len(idx))
    return results  # type: ignore[return-value]
