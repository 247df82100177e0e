"""Pairwise reward-model loss (Bradley-Terry)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bradley_terry_loss"]


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
    with torch.no_grad():
        metrics = {
            "loss": loss.item(),
            "accuracy": (r_chosen > r_rejected).float().mean().item(),
            "margin": diff.float().mean().item(),
            "chosen_reward": r_chosen.float().mean().item(),
            "rejected_reward": r_rejected.float().mean().item(),
        }
    return loss, metrics
