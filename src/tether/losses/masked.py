"""Masked reductions over padded (B, T) token tensors.

Masks are float or bool tensors, 1 on real response tokens and 0 on padding,
broadcastable to ``x``. Padded positions of ``x`` are never read (they may hold
garbage, even inf / NaN): every reduction goes through ``torch.where`` rather
than a bare ``x * mask``, so ``0 * inf`` can not leak a NaN. An empty mask gives
0, not NaN.
"""

from __future__ import annotations

import torch

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten"]


def _weights(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask as weights in x's dtype, broadcast to x's shape."""
    return mask.to(dtype=x.dtype).expand_as(x)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """sum_i mask_i * x_i, over all elements (``dim=None``) or along ``dim``.

    x:    (B, T) (any shape) values; padded entries are ignored.
    mask: (B, T) (broadcastable to x) float or bool, 1 on real tokens.
    Returns a scalar (``dim=None``) or x reduced along ``dim``.
    """
    w = _weights(x, mask)
    y = torch.where(w != 0, x * w, torch.zeros((), dtype=x.dtype, device=x.device))
    return y.sum() if dim is None else y.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """sum_i mask_i x_i / sum_i mask_i, and 0 where the mask is empty (no NaN).

    x:    (B, T) (any shape) values.
    mask: (B, T) (broadcastable to x) float or bool, 1 on real tokens.
    Returns a scalar (``dim=None``) or x reduced along ``dim``; e.g.
    ``masked_mean(x, mask, dim=1)`` is the (B,) per-sequence mean, 0 for an
    all-padding row.
    """
    total = masked_sum(x, mask, dim)
    count = masked_sum(torch.ones_like(x), mask, dim)
    return total / torch.where(count > 0, count, torch.ones_like(count))


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of x, over all of them (a scalar).

    Var = sum_i m_i (x_i - mu)^2 / N, mu = masked_mean(x, m), N = sum_i m_i;
    with ``unbiased=True`` Bessel's correction multiplies by N / (N - 1).
    N = 0 gives 0; N = 1 with ``unbiased=True`` gives the biased value (0)
    rather than 0 / 0.

    x:    (B, T) values.
    mask: (B, T) float or bool, 1 on real tokens.
    Returns a 0-dim tensor.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = masked_sum(torch.ones_like(x), mask)
        bessel = torch.where(n > 1, n / (n - 1).clamp_min(1), torch.ones_like(n))
        var = var * bessel
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the masked entries of x to mean 0 and (unbiased) std 1.

    whiten(x) = (x - mu) / sqrt(Var[x] + eps), mu and Var over the masked entries
    of the whole tensor (``masked_mean`` / ``masked_var``, unbiased).
    With ``shift_mean=False`` the mean is added back, mu + (x - mu) / sqrt(Var + eps):
    only the scale changes. This is the reward whitening without mean shift of
    OpenAI's lm-human-preferences code (Ziegler et al. 2019) as described in
    Huang et al. 2024, "The N Implementation Details of RLHF with PPO"; advantages
    use ``shift_mean=True``.

    x:    (B, T) values (rewards or advantages).
    mask: (B, T) float or bool, 1 on real tokens.
    Returns (B, T), 0 at padded positions.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    keep = _weights(x, mask) != 0
    return torch.where(keep, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))
