"""Advantage estimators: GAE over padded token sequences (PPO); group-relative (GRPO, Dr. GRPO,
scaled by the batch's std), leave-one-out (RLOO) and REINFORCE with a baseline over whole responses."""

from __future__ import annotations

import torch

__all__ = [
    "gae",
    "group_advantages",
    "group_advantages_batch_std",
    "leave_one_out_advantages",
    "reinforce_advantages",
    "MovingAverageBaseline",
]


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


# --------------------------------------------------------------------------- sequence-level estimators
# GRPO, RLOO and REINFORCE score a whole response with one number: each takes (P, G) rewards of
# the G samples drawn for each of P prompts (or (B,) for REINFORCE) and returns one advantage per
# sample, which the stage spreads over the response's tokens. A `mask` of samples marks those
# that count (a reward source may drop one by returning None); the rest get advantage 0 and
# take no part in any mean.


def _count_and_mean(rewards: torch.Tensor, keep: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewards zeroed outside `keep`, the count of kept entries and their mean along `dim` (0 when none)."""
    r = torch.where(keep, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device))
    n = keep.sum(dim, keepdim=True).to(rewards.dtype)
    return r, n, r.sum(dim, keepdim=True) / n.clamp(min=1)


def _sample_mask(rewards: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.to(rewards.device) != 0


@torch.no_grad()
def group_advantages(rewards: torch.Tensor, mask: torch.Tensor | None = None, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages of GRPO, Shao et al. 2024 ("DeepSeekMath"), sec. 4.1.2:

      A_i = (r_i - mean_g r) / (std_g r + eps)        scale_std=True  (GRPO)
      A_i =  r_i - mean_g r                           scale_std=False (Dr. GRPO, Liu et al. 2025,
                                                       "Understanding R1-Zero-Like Training", sec. 3.1)

    mean and std are over the kept samples of the sample's own group; std is the sample std
    (Bessel-corrected, as TRL's GRPOTrainer), 0 for a group of one. Dividing by the std gives
    groups with a small spread (questions nearly always or never solved) the same weight as
    the others: Dr. GRPO's "question-level difficulty bias", which scale_std=False removes. A group
    of identical rewards gets A = 0 everywhere (never NaN, even with eps = 0).

    rewards: (P, G) r of the G samples of each of P prompts.
    mask:    (P, G) float or bool, 1 where the sample counts; None = all.
    Returns (P, G) advantages in at least float32, 0 where the mask is 0.
    """
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    keep = _sample_mask(rewards, mask)
    r, n, mean = _count_and_mean(rewards, keep, dim=1)  # (P, G), (P, 1), (P, 1)
    centred = torch.where(keep, r - mean, torch.zeros_like(r))
    if not scale_std:
        return centred
    std = (centred.pow(2).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()  # (P, 1)
    scale = std + eps
    return centred / torch.where(scale > 0, scale, torch.ones_like(scale))  # an equal group: 0 / 1, even with eps = 0


@torch.no_grad()
def group_advantages_batch_std(
    rewards: torch.Tensor, mask: torch.Tensor | None = None, batch_rewards: torch.Tensor | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages scaled by the whole batch's reward std (TRL's GRPOTrainer with
    `scale_rewards="batch"`; the "group-level mean, batch-level std" of Liu et al. 2025, "Tricks or
    Traps? A Deep Dive into RL for LLM Reasoning", their Lite PPO):

      A_i = (r_i - mean_g r) / (std_batch r + eps)

    mean_g is over the kept samples of the sample's own group, as in ``group_advantages``;
    std_batch is the sample std (Bessel-corrected) of the batch's kept rewards themselves, around
    the batch's mean (not of the centred r - mean_g), 0 for fewer than two. Every group is divided
    by the same number, so a group with a small spread keeps its small advantages (no
    difficulty bias, as ``scale_std=False``) while the advantages still come out near unit scale
    whatever the reward's units. TRL computes the same: `nanstd(rewards)` over the whole gathered
    batch, eps = 1e-4. A batch of identical rewards gets A = 0 (never NaN, even with eps = 0).
    Example: r = ((0, 2), (4, 6)): group means 1 and 5, centred (-1, 1, -1, 1); batch mean 3,
    std sqrt((9 + 1 + 1 + 9) / 3) = 2.582, so A = +-1 / (2.582 + eps) = +-0.3873.

    rewards:       (P, G) r of the G samples of each of P prompts.
    mask:          (P, G) float or bool, 1 where the sample counts; None = all.
    batch_rewards: (M,) the kept rewards of the whole batch the std is taken over, when the batch
                   is wider than `rewards` (every process's samples); None = rewards where mask is 1.
    Returns (P, G) advantages in at least float32, 0 where the mask is 0.
    """
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    keep = _sample_mask(rewards, mask)
    r, _, mean = _count_and_mean(rewards, keep, dim=1)  # (P, G), (P, 1) group means
    centred = torch.where(keep, r - mean, torch.zeros_like(r))  # (P, G)
    batch = rewards[keep] if batch_rewards is None else batch_rewards.to(rewards.device, rewards.dtype)  # (M,)
    std = batch.std() if batch.numel() > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)  # Bessel-corrected
    scale = std + eps
    return centred / torch.where(scale > 0, scale, torch.ones_like(scale))  # an equal batch: 0 / 1, even with eps = 0


@torch.no_grad()
def leave_one_out_advantages(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE Leave-One-Out (RLOO): each sample's baseline is the mean reward of the other
    samples of its group. Kool et al. 2019 ("Buy 4 REINFORCE Samples, Get a Baseline for Free!");
    Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style Optimization for Learning
    from Human Feedback in LLMs"), eq. 6:

      A_i = r_i - 1/(n-1) sum_{j != i} r_j  =  n/(n-1) (r_i - mean_g r)

    with n the kept samples of the group. The baseline does not depend on r_i, so the estimate
    stays unbiased; a group with one kept sample has no baseline and gets A = 0.

    rewards: (P, G) r of the G samples of each of P prompts.
    mask:    (P, G) float or bool, 1 where the sample counts; None = all.
    Returns (P, G) advantages in at least float32, 0 where the mask is 0.
    """
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    keep = _sample_mask(rewards, mask)
    r, n, _ = _count_and_mean(rewards, keep, dim=1)
    baseline = (r.sum(1, keepdim=True) - r) / (n - 1).clamp(min=1)  # (P, G)
    ok = keep & (n > 1)
    return torch.where(ok, r - baseline, torch.zeros_like(r))


@torch.no_grad()
def reinforce_advantages(rewards: torch.Tensor, baseline: float | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE with a baseline, Williams 1992 ("Simple Statistical Gradient-Following Algorithms
    for Connectionist Reinforcement Learning"), eq. 4 with the reinforcement baseline b:

      A_i = r_i - b

    b is the batch's mean reward (`masked_mean(rewards, mask)`) or a moving average of past
    batches' means (`MovingAverageBaseline`); either way one number for every sample.

    rewards:  (B,) (any shape) r of each sample.
    baseline: b, a float or 0-dim tensor.
    mask:     same shape as rewards, 1 where the sample counts; None = all.
    Returns advantages shaped like rewards, in at least float32, 0 where the mask is 0.
    """
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    keep = _sample_mask(rewards, mask)
    b = torch.as_tensor(baseline, dtype=rewards.dtype, device=rewards.device)
    return torch.where(keep, rewards - b, torch.zeros_like(rewards))


class MovingAverageBaseline:
    """An exponential moving average of the mean reward, REINFORCE's running baseline
    (Williams 1992, sec. 6; the "reinforcement comparison" of Sutton & Barto 2018, sec. 2.8):

      b_{t+1} = decay * b_t + (1 - decay) * mean(r_t),     b_1 = mean(r_1)

    `value` is the baseline for the coming batch (None before the first); `update` folds in
    a batch's mean reward after its advantages were taken, so no sample is its own baseline
    (except in the very first batch, which uses its own mean).
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.value: float | None = None

    def update(self, mean_reward: float) -> float:
        """Fold one batch's mean reward into the average; returns the new baseline."""
        mean_reward = float(mean_reward)
        self.value = mean_reward if self.value is None else self.decay * self.value + (1.0 - self.decay) * mean_reward
        return self.value

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.value = float(state["decay"]), state["value"]
