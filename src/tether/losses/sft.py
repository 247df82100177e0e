"""Supervised fine-tuning: next-token cross-entropy on the labelled tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "sft_loss", "sft_loss_sum"]

IGNORE_INDEX = -100


def sft_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood and the number of tokens in it.

    L_sum = - sum_{b, t : labels[b, t+1] != -100} log softmax(logits[b, t])[labels[b, t+1]]

    The shift is done here: position t predicts token t + 1 (logits[:, :-1] against
    labels[:, 1:]); labels equal to -100 (prompt, padding) are ignored. For gradient
    accumulation, divide each micro-batch's sum by the token count of the whole
    accumulation window (the sum of every micro-batch's ``n_tokens``), so that one
    batch of 8 and 8 micro-batches of 1 give the same gradient.

    logits: (B, T, V) unnormalised next-token scores (any float dtype; computed in
            at least float32).
    labels: (B, T) int64 token ids, -100 where ignored.
    Returns (loss_sum, n_tokens): a 0-dim tensor (0 when no token is labelled)
    and a Python int.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    dtype = torch.promote_types(shift_logits.dtype, torch.float32)
    loss_sum = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)).to(dtype),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    n_tokens = int((shift_labels != IGNORE_INDEX).sum().item())
    return loss_sum, n_tokens


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over the labelled tokens of the batch.

    L = L_sum / N, L_sum and N from ``sft_loss_sum`` (0 when N = 0, no NaN).

    logits: (B, T, V) unnormalised next-token scores.
    labels: (B, T) int64 token ids, -100 where ignored.
    Returns (loss: 0-dim tensor, {"loss": float, "tokens": float}).
    """
    loss_sum, n_tokens = sft_loss_sum(logits, labels)
    loss = loss_sum / max(n_tokens, 1)
    with torch.no_grad():
        metrics = {"loss": loss.item(), "tokens": float(n_tokens)}
    return loss, metrics
