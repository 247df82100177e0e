"""Pairwise reward-model losses (Bradley-Terry and variants)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bradley_terry_loss",
    "bradley_terry_label_smoothed_loss",
    "bradley_terry_tie_loss",
    "reward_centering_penalty",
]


@torch.no_grad()
def _pair_metrics(loss: torch.Tensor, r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """The metrics every pairwise reward loss reports, as Python floats."""
    return {
        "loss": loss.item(),
        "accuracy": (r_chosen > r_rejected).float().mean().item(),
        "margin": (r_chosen - r_rejected).float().mean().item(),
        "chosen_reward": r_chosen.float().mean().item(),
        "rejected_reward": r_rejected.float().mean().item(),
    }


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry preference loss for a reward model.

    L = - mean_b log sigmoid(r_c[b] - r_r[b] - m[b])

    Bradley & Terry 1952; as a reward-model loss Ouyang et al. 2022 (InstructGPT)
    eq. 1 and Stiennon et al. 2020 (Learning to summarize from human feedback) sec. 3.4 eq. 1.
    The optional margin m is Llama 2's (Touvron et al. 2023, eq. 2): the chosen
    reward must beat the rejected one by at least m before the loss flattens.

    r_chosen:   (B,) scalar reward of the preferred response.
    r_rejected: (B,) scalar reward of the dispreferred response.
    margin:     (B,) or None: required gap m (0 when None).
    Returns (loss: 0-dim tensor, metrics) with metrics
      loss, accuracy (fraction of pairs with r_c > r_r), margin (mean r_c - r_r),
      chosen_reward / rejected_reward (means).
    """
    diff = r_chosen - r_rejected
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    return loss, _pair_metrics(loss, r_chosen, r_rejected)


def bradley_terry_label_smoothed_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    epsilon: float,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Label-smoothed Bradley-Terry loss, for preference labels that are flipped with rate eps.

    d[b] = r_c[b] - r_r[b] - m[b]
    L    = mean_b [ -(1 - eps) log sigmoid(d[b]) - eps log sigmoid(-d[b]) ]

    Each pair is treated as "chosen really is better" with probability 1 - eps, so the
    loss is the cross-entropy against the soft label 1 - eps. Unlike plain BT, whose loss
    keeps falling as d grows, this one (for eps > 0) is minimised at the finite gap
    d* = log((1 - eps) / eps), which stops the model from chasing mislabelled pairs
    with ever larger rewards. Equivalent form: -log sigmoid(d) + eps * d.

    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"
    (conservative DPO, the same smoothing applied to DPO's implicit reward gap; TRL's
    DPO ``label_smoothing``); for reward models, label smoothing against noisy pairs as in
    Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling".
    The optional margin m is Llama 2's, as in ``bradley_terry_loss``.
    eps = 0 gives exactly ``bradley_terry_loss``.

    r_chosen:   (B,) scalar reward of the (labelled) preferred response.
    r_rejected: (B,) scalar reward of the (labelled) dispreferred response.
    epsilon:    float in [0, 0.5): assumed label-flip rate; ValueError otherwise
                (eps = 0.5 makes the loss ignore the label entirely).
    margin:     (B,) or None: required gap m (0 when None).
    Returns (loss: 0-dim tensor, metrics) with the same metrics as ``bradley_terry_loss``:
      loss, accuracy (fraction of pairs with r_c > r_r), margin (mean r_c - r_r, without m),
      chosen_reward / rejected_reward (means).
    """
    if not (0.0 <= epsilon < 0.5):  # also rejects NaN
        raise ValueError(f"epsilon must be in [0, 0.5), got {epsilon!r}")
    diff = r_chosen - r_rejected
    logits = diff if margin is None else diff - margin
    loss = (-(1.0 - epsilon) * F.logsigmoid(logits) - epsilon * F.logsigmoid(-logits)).mean()
    return loss, _pair_metrics(loss, r_chosen, r_rejected)


def _masked_mean_or_nan(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of x over mask as a Python float; nan when the mask is empty."""
    n = int(mask.sum().item())
    return x[mask].float().mean().item() if n > 0 else float("nan")


def bradley_terry_tie_loss(r_a: torch.Tensor, r_b: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss with ties: binary cross-entropy of sigmoid(r_a - r_b) against a soft target.

    d[b] = r_a[b] - r_b[b]
    L    = mean_b [ -( t[b] log sigmoid(d[b]) + (1 - t[b]) log sigmoid(-d[b]) ) ]

    t = 1: a preferred (plain BT with a as chosen); t = 0: b preferred (plain BT with b as
    chosen); t = 0.5: tie, whose loss is minimised at d = 0 (value log 2, gradient 0), so
    tied pairs pull the two rewards together instead of being dropped. Any t in [0, 1] is
    accepted (e.g. the fraction of annotators preferring a); rows with t == 0.5 are ties,
    rows with t > 0.5 prefer a and rows with t < 0.5 prefer b.

    Bradley & Terry 1952 model P(a > b) = sigmoid(r_a - r_b); fitting it by cross-entropy
    to soft / tied labels as in Christiano et al. 2017 ("Deep RL from human preferences",
    secs. 2.2.2-2.2.3: comparisons judged equally good get a uniform target, i.e. 0.5).

    r_a:    (B,) scalar reward of the first response.
    r_b:    (B,) scalar reward of the second response.
    target: (B,) in [0, 1], usually {1, 0.5, 0}: probability that a is preferred;
            ValueError if any value is outside [0, 1].
    Returns (loss: 0-dim tensor, metrics) with metrics
      loss,
      accuracy:  over non-tie rows, fraction with sign(d) == sign(t - 0.5) (d == 0 counts wrong),
      margin:    over non-tie rows, mean preferred-minus-dispreferred reward,
      chosen_reward / rejected_reward: over non-tie rows, mean reward of the preferred /
                 dispreferred response,
      tie_fraction: fraction of rows with t == 0.5,
      tie_gap:   over tie rows, mean |r_a - r_b| (trained towards 0).
    Metrics over an empty set of rows are nan. With t = 1 everywhere, loss and metrics
    equal ``bradley_terry_loss(r_a, r_b)``.
    """
    t = target.to(r_a.dtype)
    if bool(((t < 0) | (t > 1) | torch.isnan(t)).any()):
        raise ValueError("target must lie in [0, 1] (1: a preferred, 0.5: tie, 0: b preferred)")
    d = r_a - r_b
    loss = -(t * F.logsigmoid(d) + (1.0 - t) * F.logsigmoid(-d)).mean()
    with torch.no_grad():
        tie = t == 0.5
        decided = ~tie
        sign = torch.sign(t - 0.5)  # +1: a preferred, -1: b preferred, 0: tie
        a_wins = t > 0.5
        preferred = torch.where(a_wins, r_a, r_b)
        dispreferred = torch.where(a_wins, r_b, r_a)
        metrics = {
            "loss": loss.item(),
            "accuracy": _masked_mean_or_nan((torch.sign(d) == sign).float(), decided),
            "margin": _masked_mean_or_nan(sign * d, decided),
            "chosen_reward": _masked_mean_or_nan(preferred, decided),
            "rejected_reward": _masked_mean_or_nan(dispreferred, decided),
            "tie_fraction": tie.float().mean().item(),
            "tie_gap": _masked_mean_or_nan(d.abs(), tie),
        }
    return loss, metrics


def reward_centering_penalty(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Auxiliary penalty that keeps reward-model outputs centred at 0.

    P = mean_b (r_c[b] + r_r[b])^2

    The Bradley-Terry loss only sees reward differences, so it leaves the overall offset of
    the rewards free to drift; this term pins it (the pair's mean reward is pushed to 0).
    Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do
    not Eliminate Reward Hacking" (arXiv 2312.09244). It is a term, not a full loss: the
    trainer adds ``coefficient * P`` to a Bradley-Terry loss (TRL's RewardConfig calls the
    coefficient ``center_rewards_coefficient``). dP/dr_c[b] = dP/dr_r[b] = 2 (r_c[b] + r_r[b]) / B.

    r_chosen:   (B,) scalar reward of the preferred response.
    r_rejected: (B,) scalar reward of the dispreferred response.
    Returns P as a 0-dim tensor (differentiable; no metrics).
    """
    return ((r_chosen + r_rejected) ** 2).mean()
