"""The policy loss of GRPO-style training (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE): a clipped
surrogate per token with an optional k3 KL term, then one of three ways to average it.

`grpo_token_loss` gives the per-token loss l_t (B, T); the caller sums it into a scalar with
one of the aggregations below. They differ in how much each token weighs:

  sequence_mean   1/B sum_i 1/|o_i| sum_t l_it     GRPO (Shao et al. 2024, eq. 3): a token of a
                                                   short response weighs more than one of a long
                                                   response, so short right answers and long wrong
                                                   ones are favoured (the length bias)
  token_mean      1/sum_i |o_i| sum_i sum_t l_it   DAPO (Yu et al. 2025, sec. 3.3, token-level
                                                   policy-gradient loss): every token weighs the same
  constant_mean   1/(B * L) sum_i sum_t l_it       Dr. GRPO (Liu et al. 2025, sec. 3.2): a constant
                                                   normaliser L (max_new_tokens), so neither the
                                                   length of a response nor that of the batch
                                                   changes a token's weight

Each takes an optional count (`n_tokens`, `n_sequences`, `normalizer`) that defaults to the
count in the tensors given: pass the minibatch's count when the minibatch is processed in
micro-batches, and the micro-batch losses then add up to the minibatch's loss exactly.

Shapes: B = responses, T = response length (right-padded); masks are float or bool (B, T),
1 on real response tokens.
"""

from __future__ import annotations

import torch

from tether.losses.kl import kl_k3
from tether.losses.masked import masked_mean, masked_sum

__all__ = ["grpo_token_loss", "token_mean", "sequence_mean", "constant_mean"]


def _zero_outside(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token GRPO loss: the clipped surrogate of PPO (Schulman et al. 2017, eq. 7) with an
    asymmetric clip range (DAPO's "clip-higher", Yu et al. 2025, sec. 3.1) and the KL to the
    reference as a loss term with the k3 estimator (GRPO, Shao et al. 2024, eqs. 3-4):

      rho_t = exp(logp_t - old_logp_t)
      l_t   = max(-A * rho_t, -A * clip(rho_t, 1 - eps_low, 1 + eps_high)) + beta * k3_t
      k3_t  = pi_ref/pi - log(pi_ref/pi) - 1        (only when ref_logp is given and beta != 0)

    eps_high > eps_low lets the probability of a rare token with a positive advantage grow
    further in one update, which keeps exploration alive (DAPO). A sequence-level advantage
    (B,) is spread over the response's tokens.

    logp:       (B, T) log pi_theta(o_t | q, o_<t) under the current policy (with grad).
    old_logp:   (B, T) log pi_old of the same tokens, from the sampling policy (detached here).
    advantages: (B, T) per-token or (B,) per-response advantages A (detached here).
    mask:       (B, T) float or bool, 1 on real response tokens.
    eps_low:    lower clip, the ratio is kept above 1 - eps_low.
    eps_high:   upper clip, the ratio is kept below 1 + eps_high.
    ref_logp:   (B, T) log pi_ref of the tokens, or None (no KL term).
    beta:       KL coefficient.
    weights:    (B, T) per-token weights of the surrogate term (not the KL), e.g. the truncated
                importance weights of a rollout sampled by vLLM; None = 1.
    Returns (per_token_loss (B, T), 0 at padding; metrics) with metrics, over real tokens:
      clipfrac (tokens whose clipped term is the max, i.e. carry no gradient; = clipfrac_low +
      clipfrac_high), clipfrac_low (ratio < 1 - eps_low with A < 0), clipfrac_high (ratio >
      1 + eps_high with A > 0), approx_kl (mean of 0.5 (logp - old_logp)^2), ratio_mean,
      ratio_max, and kl (mean k3 to the reference; only with ref_logp). All 0 for an empty mask.
    """
    keep = mask != 0
    log_ratio = _zero_outside(logp - old_logp.detach(), keep)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(ratio.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1).expand_as(ratio)
    adv = _zero_outside(adv, keep)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    if weights is not None:
        per_token = per_token * _zero_outside(weights.detach().to(per_token.dtype), keep)
    kl = None
    if ref_logp is not None:
        # padding zeroed before the estimator, so garbage there cannot reach the gradient as NaN
        kl = _zero_outside(kl_k3(_zero_outside(logp, keep), _zero_outside(ref_logp.detach().to(logp.dtype), keep)), keep)
        if beta != 0.0:
            per_token = per_token + beta * kl
    per_token = _zero_outside(per_token, keep)

    with torch.no_grad():
        as_float = lambda b: b.to(ratio.dtype)  # noqa: E731
        ratio_max = _zero_outside(ratio, keep).max() if ratio.numel() else ratio.new_zeros(())
        metrics = {
            "clipfrac": masked_mean(as_float(pg_clipped > pg_unclipped), mask).item(),
            "clipfrac_low": masked_mean(as_float((ratio < 1.0 - eps_low) & (adv < 0)), mask).item(),
            "clipfrac_high": masked_mean(as_float((ratio > 1.0 + eps_high) & (adv > 0)), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_max": ratio_max.item(),
        }
        if kl is not None:
            metrics["kl"] = masked_mean(kl, mask).item()
    return per_token, metrics


def token_mean(per_token: torch.Tensor, mask: torch.Tensor, n_tokens: float | None = None) -> torch.Tensor:
    """DAPO's token-level loss (Yu et al. 2025, sec. 3.3): sum_i sum_t l_it / N, N = real tokens.

    per_token: (B, T) loss per token (e.g. from `grpo_token_loss`).
    mask:      (B, T) float or bool, 1 on real response tokens.
    n_tokens:  N, default the real tokens in `mask` (give the minibatch's when this is a micro-batch).
    Returns a 0-dim tensor; 0 when N is 0.
    """
    n = masked_sum(torch.ones_like(per_token), mask) if n_tokens is None else torch.as_tensor(float(n_tokens))
    return masked_sum(per_token, mask) / torch.clamp(n, min=1.0)


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor, n_sequences: float | None = None) -> torch.Tensor:
    """GRPO's loss (Shao et al. 2024, eq. 3): each response's mean token loss, averaged over responses:
    sum_i (1/|o_i| sum_t l_it) / S, S = responses with at least one real token.

    per_token:   (B, T) loss per token.
    mask:        (B, T) float or bool, 1 on real response tokens; an all-padding row adds nothing.
    n_sequences: S, default the non-empty rows of `mask` (give the minibatch's when this is a micro-batch).
    Returns a 0-dim tensor; 0 when S is 0.
    """
    per_sequence = masked_mean(per_token, mask, dim=1)  # (B,), 0 for an all-padding row
    s = (mask != 0).any(dim=1).sum() if n_sequences is None else torch.as_tensor(float(n_sequences))
    return per_sequence.sum() / torch.clamp(s.to(per_sequence.dtype), min=1.0)


def constant_mean(per_token: torch.Tensor, mask: torch.Tensor, normalizer: float) -> torch.Tensor:
    """Dr. GRPO's loss (Liu et al. 2025, sec. 3.2): sum_i sum_t l_it / C with a constant C, here
    responses x max_new_tokens (the normaliser of TRL's `loss_type="dr_grpo"`).

    per_token:  (B, T) loss per token.
    mask:       (B, T) float or bool, 1 on real response tokens.
    normalizer: C > 0 (the minibatch's responses times the longest allowed response).
    Returns a 0-dim tensor.
    """
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer!r}")
    return masked_sum(per_token, mask) / float(normalizer)
