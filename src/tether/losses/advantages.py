"""Generalized advantage estimation over padded token sequences."""

from __future__ import annotations

import torch

__all__ = ["gae"]


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation, Schulman et al. 2016, "High-Dimensional
    Continuous Control Using Generalized Advantage Estimation", eq. 11-16:

      delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
      A_t     = sum_{l >= 0} (gamma * lam)^l delta_{t+l} = delta_t + gamma * lam * A_{t+1}
      R_t     = A_t + V(s_t)                              (the value target)

    Each row is one finished episode: the value after its last real token is 0
    (no bootstrap). Rewards and values at padded positions are ignored (treated as
    0) and both outputs are 0 there. lam = 1 gives the discounted reward-to-go minus
    V; lam = 0 gives the one-step TD error. Computed with a reverse loop over T,
    without gradient (outputs are detached).

    rewards: (B, T) per-token reward r_t (e.g. from ``per_token_rewards``).
    values:  (B, T) V(s_t) from the value model at rollout time.
    mask:    (B, T) float or bool, 1 on real response tokens (right-padded).
    gamma:   discount factor.
    lam:     GAE lambda.
    Returns (advantages (B, T), returns (B, T)), in at least float32.
    """
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    m = mask.to(dtype)
    keep = m != 0
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(keep, rewards.detach().to(dtype), zero)
    v = torch.where(keep, values.detach().to(dtype), zero)

    B, T = r.shape
    advantages_reversed = []
    last_gae = torch.zeros(B, dtype=dtype, device=r.device)
    for t in reversed(range(T)):
        next_value = v[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = r[:, t] + gamma * next_value - v[:, t]
        last_gae = (delta + gamma * lam * last_gae) * m[:, t]
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = torch.where(keep, advantages + v, zero)
    return advantages, returns
