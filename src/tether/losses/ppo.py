"""PPO for language models: KL-shaped rewards, clipped policy and value losses."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tether.losses.kl import kl_k1
from tether.losses.masked import masked_mean, masked_var

__all__ = [
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "entropy_from_logits",
    "explained_variance",
]


def _zero_outside(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@torch.no_grad()
def per_token_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kl_estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = kl_k1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-penalised per-token rewards for PPO.

      kl_t = k(logp_t, ref_logp_t)                       (k1 by default: log pi/pi_ref)
      r_t  = -beta * kl_t + [t == last real token] * score

    i.e. R(x, y) = r_theta(x, y) - beta * log(pi(y|x) / pi_ref(y|x)) spread over the
    tokens: Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", sec. 2.2; Stiennon et al. 2020, "Learning to summarize from human
    feedback", sec. 3.4 (eq. 2). The reward-model score lands on the last real
    token of each row; all-padding rows get no score and all-zero rewards.
    No gradient flows (outputs are detached).

    scores:       (B,) reward-model score of each full response.
    logp:         (B, T) log pi(a_t|s_t) under the policy that sampled the tokens.
    ref_logp:     (B, T) log pi_ref(a_t|s_t) under the frozen reference policy.
    mask:         (B, T) float or bool, 1 on real response tokens (right-padded).
    beta:         KL coefficient (e.g. ``controller.beta``).
    kl_estimator: (B, T), (B, T) -> (B, T), one of ``kl_k1``, ``kl_k2``, ``kl_k3``.
    Returns (rewards (B, T), kl (B, T)), both 0 at padded positions.
    """
    keep = mask != 0
    kl = _zero_outside(kl_estimator(logp.detach(), ref_logp.detach()), keep)
    rewards = -beta * kl

    B, T = keep.shape
    positions = torch.arange(1, T + 1, device=keep.device).expand(B, T)
    last = (positions * keep).argmax(dim=1)  # index of the last real token
    has_tokens = keep.any(dim=1)
    score = torch.where(has_tokens, scores.detach().to(rewards.dtype), torch.zeros((), dtype=rewards.dtype, device=rewards.device))
    rewards = rewards.clone()
    rewards[torch.arange(B, device=keep.device), last] += score
    return rewards, kl


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate, Schulman et al. 2017, "Proximal Policy Optimization
    Algorithms", eq. 7, negated to a loss and averaged over every real token of the
    batch:

      rho_t = exp(logp_t - old_logp_t)
      L     = masked_mean( w_t * max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)) )

    w_t = 1 unless `weights` are given (the truncated importance weights of a rollout sampled
    by another engine, `truncated_importance_weights`).

    logp:       (B, T) log pi_theta(a_t|s_t) under the current policy (with grad).
    old_logp:   (B, T) log pi_theta_old(a_t|s_t) from the rollout (detached here).
    advantages: (B, T) A_t, e.g. from ``gae`` (detached here).
    mask:       (B, T) float or bool, 1 on real response tokens.
    clip_eps:   epsilon of the clip.
    weights:    (B, T) per-token weights w_t (detached here), or None.
    Returns (loss: 0-dim tensor, metrics) with metrics
      policy_loss, clipfrac (fraction of tokens where the clipped term is the max,
      i.e. carries no gradient), approx_kl (masked mean of 0.5 (logp - old_logp)^2),
      ratio_mean, ratio_max (0 when the mask is empty).
    """
    keep = mask != 0
    log_ratio = _zero_outside(logp - old_logp.detach(), keep)
    ratio = torch.exp(log_ratio)
    adv = _zero_outside(advantages.detach().to(ratio.dtype), keep)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    if weights is not None:
        per_token = per_token * _zero_outside(weights.detach().to(per_token.dtype), keep)
    loss = masked_mean(per_token, mask)

    with torch.no_grad():
        # ratio > 0 on real tokens, so zeroing the padding leaves the max unchanged
        ratio_max = _zero_outside(ratio, keep).max() if ratio.numel() else ratio.new_zeros(())
        metrics = {
            "policy_loss": loss.item(),
            "clipfrac": masked_mean((pg_clipped > pg_unclipped).to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "ratio_max": ratio_max.item(),
        }
    return loss, metrics


def truncated_importance_weights(
    trainer_logp: torch.Tensor,
    sampler_logp: torch.Tensor,
    mask: torch.Tensor,
    cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling (TIS; Yao et al. 2025, "Your Efficient RL Framework Secretly
    Brings You Off-Policy RL Training"): when the rollout was sampled by another engine (vLLM),
    whose log-probs differ a little from the trainer's for the same weights, each token's
    policy-gradient term is weighed by

      w_t = min( exp(trainer_logp_t - sampler_logp_t), cap )

    trainer_logp: (B, T) log pi_old(y_t) computed by the trainer.
    sampler_logp: (B, T) log-probs the sampling engine reported for the same tokens.
    mask:         (B, T) 1 on real response tokens.
    cap:          C >= 1, the truncation.
    Returns (weights (B, T), 0 at padding, detached; metrics) with metrics is_weight_mean,
    is_weight_capped (fraction of tokens at the cap) and is_logp_gap (mean |trainer - sampler|).
    """
    keep = mask != 0
    with torch.no_grad():
        gap = _zero_outside(trainer_logp.float() - sampler_logp.float(), keep)
        raw = torch.exp(gap)
        weights = _zero_outside(raw.clamp(max=cap), keep)
        metrics = {
            "is_weight_mean": masked_mean(weights, mask).item(),
            "is_weight_capped": masked_mean((raw >= cap).float(), mask).item(),
            "is_logp_gap": masked_mean(gap.abs(), mask).item(),
        }
    return weights, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (the PPO reference implementation, openai/baselines ppo2;
    Huang et al. 2022, "The 37 Implementation Details of PPO", detail 9):

      V_clip = clip(V_t, V_old_t - eps, V_old_t + eps)
      L_V    = masked_mean( 0.5 * max((V_t - R_t)^2, (V_clip - R_t)^2) )

    values:     (B, T) V(s_t) from the value model being trained (with grad).
    old_values: (B, T) V(s_t) recorded at rollout time (detached here).
    returns:    (B, T) value targets R_t, e.g. from ``gae`` (detached here).
    mask:       (B, T) float or bool, 1 on real response tokens.
    clip_eps:   epsilon of the clip (in value units).
    Returns (loss: 0-dim tensor, metrics) with metrics
      value_loss, vf_clipfrac (fraction of tokens where the clipped error is the max).
    """
    keep = mask != 0
    values = _zero_outside(values, keep)
    old_values = _zero_outside(old_values.detach().to(values.dtype), keep)
    returns = _zero_outside(returns.detach().to(values.dtype), keep)
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err_unclipped = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)

    with torch.no_grad():
        # a token counts as clipped only where the clip moved V_t: V_old + clamp(V_t - V_old) can round away from an
        # unclipped V_t (by one ulp, leaving the loss and its gradient as they were), so compare V_t with its clamp directly
        moved = torch.clamp(values, old_values - clip_eps, old_values + clip_eps) != values
        clipped = moved & (err_clipped > err_unclipped)
        metrics = {
            "value_loss": loss.item(),
            "vf_clipfrac": masked_mean(clipped.to(loss.dtype), mask).item(),
        }
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at every position.

      H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v,   p = softmax(z)

    Computed in at least float32; -inf logits (masked vocabulary) give p = 0 and no NaN.

    logits: (B, T, V) unnormalised next-token scores z.
    Returns (B, T).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype)
    z = torch.clamp(z, min=torch.finfo(dtype).min)
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of the variance of the returns that the value function explains.

      EV = 1 - Var[R - V] / Var[R]     (over the masked tokens)

    1 is a perfect value function, 0 no better than a constant, < 0 worse.

    values:  (B, T) V(s_t).
    returns: (B, T) value targets R_t.
    mask:    (B, T) float or bool, 1 on real response tokens.
    Returns a Python float; ``nan`` when Var[R] is 0 (including an empty mask).
    """
    var_returns = masked_var(returns.float(), mask, unbiased=False).item()
    if var_returns == 0.0:
        return float("nan")
    var_residual = masked_var((returns - values).float(), mask, unbiased=False).item()
    return 1.0 - var_residual / var_returns
