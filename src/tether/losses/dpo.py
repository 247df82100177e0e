"""Direct preference optimisation losses: the policy is its own reward model.

DPO (Rafailov et al. 2023) reads a reward off the policy and a frozen reference,

    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))            (the implicit reward, eq. 5)

and fits it to preference pairs with a pairwise loss on

    h = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))

(c = chosen, r = rejected; every log-prob conditioned on the prompt x). The variants below
differ only in the loss applied to h. One function per variant, all with the same inputs:

    logp_chosen, logp_rejected:          (B,) log pi(y | x) summed over each response's tokens
                                         (the policy being trained; gradients flow through these)
    ref_logp_chosen, ref_logp_rejected:  (B,) the same sums under the frozen reference pi_ref
                                         (no gradient needed); zeros give the reference-free loss

and the same metrics (Python floats, means over the B pairs):

    loss, rewards_chosen (mean r(x, y_c)), rewards_rejected (mean r(x, y_r)),
    margin (mean r(x, y_c) - r(x, y_r)), accuracy (fraction of pairs with r(x, y_c) > r(x, y_r),
    a tie counting one half, so a policy equal to its reference scores 0.5, chance).

The implicit reward is always beta * log-ratio, whatever the loss, so the metrics of two
variants can be compared (TRL reports the same quantities).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "dpo_sigmoid_loss",
    "dpo_ipo_loss",
    "dpo_ipo_token_mean_loss",
    "dpo_hinge_loss",
    "dpo_conservative_loss",
    "dpo_reference_free_loss",
]


def _log_ratio_gap(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected) -> torch.Tensor:
    """(B,) h = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))."""
    return (logp_chosen - ref_logp_chosen) - (logp_rejected - ref_logp_rejected)


@torch.no_grad()
def _dpo_metrics(loss, beta, logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected) -> dict[str, float]:
    """The metrics every DPO variant reports, as Python floats."""
    r_chosen = beta * (logp_chosen - ref_logp_chosen).float()  # (B,) implicit rewards
    r_rejected = beta * (logp_rejected - ref_logp_rejected).float()
    wins = (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()
    return {
        "loss": loss.item(),
        "rewards_chosen": r_chosen.mean().item(),
        "rewards_rejected": r_rejected.mean().item(),
        "margin": (r_chosen - r_rejected).mean().item(),
        "accuracy": wins.mean().item(),
    }


def dpo_sigmoid_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO loss: Bradley-Terry on the implicit rewards.

    L = - mean_b log sigmoid(beta * h[b])

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", eq. 7. beta is the strength of the KL leash of the RLHF objective the loss
    solves (typically 0.1; smaller lets the policy move further from the reference). At
    policy == reference, h = 0 and L = log 2. dL/dlogp_c[b] = -beta * sigmoid(-beta h[b]) / B.

    logp_chosen, logp_rejected:         (B,) summed response log-probs under the policy.
    ref_logp_chosen, ref_logp_rejected: (B,) the same under the reference.
    beta: float > 0.
    Returns (loss: 0-dim tensor, metrics) with the metrics of the module docstring.
    """
    h = _log_ratio_gap(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    loss = -F.logsigmoid(beta * h).mean()
    return loss, _dpo_metrics(loss, beta, logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)


def dpo_ipo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """IPO: regress the log-ratio gap onto a fixed target instead of pushing it to infinity.

    L = mean_b (h[b] - 1 / (2 beta))^2

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17 (their tau is beta here). DPO's loss keeps falling as h grows, so on
    deterministic preferences it drives the policy arbitrarily far from the reference; IPO's
    minimum is at the finite gap h = 1 / (2 beta). At policy == reference, L = 1 / (4 beta^2).
    The gap is taken on whatever log-probs are passed: summed, as in the paper's equation.
    TRL takes it on per-token means instead: ``dpo_ipo_token_mean_loss``.

    Shapes and metrics as ``dpo_sigmoid_loss``; beta: float > 0.
    """
    h = _log_ratio_gap(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, _dpo_metrics(loss, beta, logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)


def dpo_ipo_token_mean_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    n_chosen: torch.Tensor,
    n_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """IPO on per-token mean log-ratios, as TRL's DPOTrainer computes `loss_type="ipo"`.

    h_bar[b] = (log pi(y_c) - log pi_ref(y_c)) / n_c[b] - (log pi(y_r) - log pi_ref(y_r)) / n_r[b]
    L = mean_b (h_bar[b] - 1 / (2 beta))^2

    ``dpo_ipo_loss`` (Azar et al. 2023, eq. 17) with each response's log-ratio divided by its
    token count. A summed gap grows with the responses' length, so the target 1 / (2 beta) means
    a different leash for long and short answers; the per-token mean makes beta independent of
    length. TRL averages this way for IPO since v0.7.11 (v0.7.5 to v0.7.10 used sums): up to v0.28
    by dividing the log-probs in `concatenated_forward`, from v0.29 inside the loss, a choice its
    comment says was "confirmed with the IPO authors" (the paper's results correspond to this
    form). A beta tuned with TRL's IPO therefore means the same here. Example: log-ratios +3 over 3 tokens and -2 over 2 tokens give
    h_bar = 1 - (-1) = 2; beta = 1 gives (2 - 0.5)^2 = 2.25 (the summed gap would be 5).

    The metrics are those of the module docstring, on the summed log-ratios (beta * (log pi -
    log pi_ref)), so they mean the same as every other variant's and as TRL's from v0.29
    (TRL up to v0.28 reported them on the per-token means).

    logp_chosen, logp_rejected:         (B,) summed response log-probs under the policy.
    ref_logp_chosen, ref_logp_rejected: (B,) the same under the reference.
    n_chosen, n_rejected:               (B,) the responses' token counts (those summed over,
                                        EOS included); a count below 1 is taken as 1, as TRL does.
    beta: float > 0.
    Returns (loss: 0-dim tensor, metrics) as ``dpo_sigmoid_loss``.
    """
    per_token_c = (logp_chosen - ref_logp_chosen) / n_chosen.to(logp_chosen.dtype).clamp(min=1.0)  # (B,)
    per_token_r = (logp_rejected - ref_logp_rejected) / n_rejected.to(logp_rejected.dtype).clamp(min=1.0)  # (B,)
    loss = ((per_token_c - per_token_r - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, _dpo_metrics(loss, beta, logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)


def dpo_hinge_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss on the implicit reward margin (SLiC's calibration loss).

    L = mean_b max(0, 1 - beta * h[b])

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback": a
    hinge max(0, delta - log pi(y_c) + log pi(y_r)) with margin delta; here delta = 1 / beta and
    the log-probs are taken relative to the reference, as in Liu et al. 2023 (RSO, "Statistical
    Rejection Sampling Improves Preference Optimization") and TRL's `hinge`. A pair stops
    contributing once its implicit reward margin beta * h reaches 1. At policy == reference, L = 1.

    Shapes and metrics as ``dpo_sigmoid_loss``; beta: float > 0.
    """
    h = _log_ratio_gap(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    loss = torch.relu(1.0 - beta * h).mean()
    return loss, _dpo_metrics(loss, beta, logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)


def dpo_conservative_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_logp_chosen: torch.Tensor,
    ref_logp_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Conservative DPO: the DPO loss against labels that are flipped with probability eps.

    L = mean_b [ -(1 - eps) log sigmoid(beta h[b]) - eps log sigmoid(-beta h[b]) ]

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO" (cDPO; TRL's
    `label_smoothing`). The cross-entropy against the soft label 1 - eps is minimised at the
    finite margin beta * h = log((1 - eps) / eps), so mislabelled pairs cannot pull the policy
    arbitrarily far. eps = 0 is exactly ``dpo_sigmoid_loss``; at policy == reference L = log 2.

    Shapes and metrics as ``dpo_sigmoid_loss``; beta: float > 0.
    label_smoothing: eps in [0, 0.5); ValueError otherwise (0.5 ignores the labels entirely).
    """
    if not (0.0 <= label_smoothing < 0.5):  # also rejects NaN
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    z = beta * _log_ratio_gap(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    loss = (-(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)).mean()
    return loss, _dpo_metrics(loss, beta, logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)


def dpo_reference_free_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Reference-free DPO: the sigmoid loss with the reference log-ratio taken as 0.

    L = - mean_b log sigmoid(beta * (log pi(y_c) - log pi(y_r)))

    ``dpo_sigmoid_loss`` with pi_ref uniform over responses (Rafailov et al. 2023, eq. 7 with
    log pi_ref(y_c) = log pi_ref(y_r)); no reference model is held or run. Nothing then keeps the
    policy near where it started, and the implicit rewards are beta * log pi(y | x) itself.
    (The other variants become reference-free the same way: pass zeros as the reference log-probs.)

    logp_chosen, logp_rejected: (B,) summed response log-probs under the policy.
    beta: float > 0.
    Returns (loss: 0-dim tensor, metrics) as ``dpo_sigmoid_loss`` (rewards = beta * logp).
    """
    zeros = torch.zeros_like(logp_chosen)
    return dpo_sigmoid_loss(logp_chosen, logp_rejected, zeros, zeros, beta)
