"""Batched sampling: left-padded prompts, KV cache, stop at EOS, seeded.

A `Rollout` keeps the token layout every RL stage uses:

    sequences = [ left pad | prompt ]  [ response | right pad ]
                 <--------- P -------> <--------- R --------->

so column P is the first response token for every row, the prompt's last token (column
P-1) predicts it, and `response_mask` marks real response tokens (the EOS included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.config import GenerationSettings
from tether.data.collate import pad_left
from tether.data.records import Prompt
from tether.data.templates import encode_prompt
from tether.models.loading import autocast, device


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R) right-padded with pad_token_id
    response_mask: torch.Tensor  # (B, R) 1 on real response tokens, EOS included
    finished: torch.Tensor  # (B,) bool: the response ended with EOS within max_new_tokens
    texts: list[str]  # decoded responses, special tokens removed
    prompts_truncated: int  # prompts cut from the left to fit max_prompt_tokens
    # per-token numbers kept by the sampling pass (rollout/sampling.py), (B, R), 0 on padding; None when not kept
    logprobs: torch.Tensor | None = None  # log pi(y_t | ...) under softmax(logits / temperature)
    values: torch.Tensor | None = None  # a value head on the state before each token
    entropy: torch.Tensor | None = None  # entropy of the sampling distribution at each step

    @property
    def sequences(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def sequences_for_reward(self, eos_token_id: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequences, attention_mask) with EOS appended to responses that were cut off.

        A reward model learns from preference text, and is shown every response as
        `prompt + text + EOS`; a response cut at max_new_tokens is scored the same way, so
        the head is always read on the token it was trained on (the EOS). Whether
        unfinished responses should be punished is `missing_eos_penalty`'s job.
        """
        extra = torch.full_like(self.response_ids[:, :1], pad_token_id)
        ids = torch.cat([self.response_ids, extra], dim=1)
        mask = torch.cat([self.response_mask, torch.zeros_like(extra)], dim=1)
        # every response that does not already end with EOS: cut off, or ended by a stop string
        last = ids.gather(1, (self.lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        rows = torch.nonzero((last != eos_token_id) | (self.lengths == 0)).squeeze(-1)
        cols = self.lengths[rows]
        ids[rows, cols] = eos_token_id
        mask[rows, cols] = 1
        return torch.cat([self.prompt_ids, ids], dim=1), torch.cat([self.prompt_mask, mask], dim=1)


def _generation_config(tokenizer, settings: GenerationSettings):
    from transformers import GenerationConfig

    # A fresh config: a model's own generation_config may carry top_k=50 or a repetition
    # penalty, which would make the sampled distribution differ from the policy's log-probs.
    return GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=0,
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        repetition_penalty=1.0,
        stop_strings=settings.stop_strings or None,  # lets a row stop sampling early; the cut itself is cut_at_stop_strings
    )


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Prompt], settings: GenerationSettings, seed: int, precision: str = "bf16") -> Rollout:
    """Sample one response per prompt, as one batch."""
    encoded = [encode_prompt(tokenizer, p, settings.max_prompt_tokens) for p in prompts]
    prompt_ids, prompt_mask = pad_left([ids for ids, _ in encoded], tokenizer.pad_token_id)
    prompt_ids, prompt_mask = prompt_ids.to(device()), prompt_mask.to(device())
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    with autocast(precision):
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=_generation_config(tokenizer, settings),
            **({"tokenizer": tokenizer} if settings.stop_strings else {}),  # HF matches stop strings on text
        )
    model.train(was_training)
    response_ids = out[:, prompt_ids.shape[1] :]
    is_eos = response_ids == tokenizer.eos_token_id
    # keep tokens up to and including the first EOS; everything after is padding
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    finished = is_eos.any(-1)
    response_ids = response_ids.masked_fill(after_eos, tokenizer.pad_token_id)
    if response_ids.shape[1] == 0:  # max_new_tokens == 0 or immediate stop everywhere
        response_mask = response_ids.new_zeros(response_ids.shape)
    if settings.stop_strings:
        response_ids, response_mask, finished = cut_at_stop_strings(tokenizer, response_ids, response_mask, finished, settings.stop_strings)
    texts = tokenizer.batch_decode(response_ids * response_mask + tokenizer.pad_token_id * (1 - response_mask), skip_special_tokens=True)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        finished=finished,
        texts=[t.strip() for t in texts],
        prompts_truncated=sum(t for _, t in encoded),
    )


def cut_at_stop_strings(
    tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor, finished: torch.Tensor, stop_strings: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """End each response at the shortest token prefix whose text contains a stop string.

    The stop string stays in the response (its tokens were sampled, so they keep their
    log-probs); every token after it becomes padding, and the response counts as finished.
    Returns new (response_ids, response_mask, finished).
    """
    ids, mask, finished = response_ids.clone(), response_mask.clone(), finished.clone()
    text_of = lambda row, n: tokenizer.decode(ids[row, :n].tolist(), skip_special_tokens=True)  # noqa: E731
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        if not any(s in text_of(row, n) for s in stop_strings):
            continue
        lo, hi = 1, n  # the shortest prefix holding a stop string: containment only grows with the prefix
        while lo < hi:
            mid = (lo + hi) // 2
            if any(s in text_of(row, mid) for s in stop_strings):
                hi = mid
            else:
                lo = mid + 1
        ids[row, lo:] = tokenizer.pad_token_id
        mask[row, lo:] = 0
        finished[row] = True
    return ids, mask, finished
