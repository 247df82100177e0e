"""Per-token KL(pi || pi_ref) estimators and KL-coefficient controllers.

The estimators follow J. Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html). With tokens sampled from pi and
r = pi_ref(a|s) / pi(a|s), i.e. log r = ref_logp - logp:

  k1 = -log r                 unbiased, high variance, can be negative
  k2 = 0.5 (log r)^2          biased (low bias), always >= 0
  k3 = (r - 1) - log r        unbiased, always >= 0, low variance

Each is (B, T) -> (B, T), elementwise; masking is the caller's job.
"""

from __future__ import annotations

import torch

__all__ = ["kl_k1", "kl_k2", "kl_k3", "AdaptiveKLController", "FixedKLController"]


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(a|s) - log pi_ref(a|s)   (Schulman 2020).

    logp:     (B, T) log pi(a_t|s_t) under the current policy (tokens sampled from it).
    ref_logp: (B, T) log pi_ref(a_t|s_t) under the reference policy.
    Returns (B, T).
    """
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi(a|s) - log pi_ref(a|s))^2   (Schulman 2020).

    logp:     (B, T) log pi(a_t|s_t) under the current policy.
    ref_logp: (B, T) log pi_ref(a_t|s_t) under the reference policy.
    Returns (B, T), >= 0.
    """
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(log r) - log r - 1, log r = log pi_ref(a|s) - log pi(a|s)   (Schulman 2020).

    Computed as expm1(log r) - log r, accurate near r = 1.

    logp:     (B, T) log pi(a_t|s_t) under the current policy.
    ref_logp: (B, T) log pi_ref(a_t|s_t) under the reference policy.
    Returns (B, T), >= 0.
    """
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


class AdaptiveKLController:
    """Adaptive KL coefficient, Ziegler et al. 2019, "Fine-Tuning Language Models
    from Human Preferences", sec. 2.2:

      e_t      = clip(KL_t / KL_target - 1, -0.2, 0.2)
      beta_t+1 = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    init_beta: starting coefficient beta_0.
    target:    target KL (nats per sequence, as measured by the caller).
    horizon:   time constant in samples; one update over n_steps samples scales
               beta by a factor in [1 - 0.2 n_steps/horizon, 1 + 0.2 n_steps/horizon].
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Move beta towards keeping ``current_kl`` at ``target``; returns the new beta.

        current_kl: observed KL (float or 0-dim tensor).
        n_steps:    number of samples (or steps) since the last update.
        """
        err = float(current_kl) / self.target - 1.0
        err = min(max(err, -0.2), 0.2)
        self.beta *= 1.0 + err * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


class FixedKLController:
    """Constant KL coefficient with the AdaptiveKLController interface.

    beta: the coefficient; ``update`` leaves it unchanged.
    """

    def __init__(self, beta: float):
        self.beta = float(beta)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])
