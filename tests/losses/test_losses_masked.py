import math

import pytest
import torch

from tether.losses import masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("mask", [MASK.bool(), MASK.float()])
def test_masked_sum_and_mean_by_hand(mask):
    # real entries: 1, 2 (row 0) and 4 (row 1)
    # sum = 7, mean = 7/3; per row: sums (3, 4), means (1.5, 4)
    assert masked_sum(X, mask).item() == pytest.approx(7.0)
    assert masked_mean(X, mask).item() == pytest.approx(7.0 / 3.0)
    assert torch.allclose(masked_sum(X, mask, dim=1), torch.tensor([3.0, 4.0]))
    assert torch.allclose(masked_mean(X, mask, dim=1), torch.tensor([1.5, 4.0]))


def test_padding_garbage_is_ignored():
    x = X.clone()
    x[0, 2] = float("nan")
    x[1, 1] = float("inf")
    x[1, 2] = -float("inf")
    assert masked_sum(x, MASK).item() == pytest.approx(7.0)
    assert masked_mean(x, MASK).item() == pytest.approx(7.0 / 3.0)
    assert masked_var(x, MASK).item() == pytest.approx(7.0 / 3.0)


def test_empty_mask_gives_zero_not_nan():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # row 1 is all padding -> its mean is 0
    assert torch.allclose(masked_mean(X, mask, dim=1), torch.tensor([1.5, 0.0]))
    empty = torch.zeros_like(MASK)
    assert masked_mean(X, empty).item() == 0.0
    assert masked_var(X, empty).item() == 0.0
    w = masked_whiten(X, empty)
    assert not torch.isnan(w).any() and (w == 0).all()


def test_masked_mean_grad_with_empty_row_is_finite():
    x = X.clone().requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    masked_mean(x, mask, dim=1).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(x.grad, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_masked_var_by_hand():
    # values 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    # biased var = 42/27 = 14/9 = 1.5556; unbiased = 42/18 = 7/3 = 2.3333
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(14.0 / 9.0)
    assert masked_var(X, MASK, unbiased=True).item() == pytest.approx(7.0 / 3.0)
    # matches torch.var on the selected entries
    sel = X[MASK.bool()]
    assert masked_var(X, MASK).item() == pytest.approx(sel.var(unbiased=True).item())


def test_masked_var_single_element_no_nan():
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    assert masked_var(X, mask, unbiased=True).item() == 0.0


def test_masked_whiten_mean0_std1_and_padding_zero():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(4, 7, generator=g)
    lengths = torch.tensor([7, 3, 0, 5])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert (w[~mask] == 0).all()


def test_masked_whiten_without_mean_shift_keeps_mean():
    g = torch.Generator().manual_seed(1)
    x = 3.0 + 5.0 * torch.randn(4, 7, generator=g)
    mask = torch.ones(4, 7)
    mask[1, 4:] = 0
    mean_before = masked_mean(x, mask).item()
    w = masked_whiten(x, mask, shift_mean=False)
    assert masked_mean(w, mask).item() == pytest.approx(mean_before, abs=1e-5)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-5)
    # only the scale changed: w - mean == whiten(x) (shifted)
    assert torch.allclose((w - mean_before)[mask.bool()], masked_whiten(x, mask)[mask.bool()], atol=1e-5)


def test_masked_whiten_by_hand():
    # values 1, 2, 4: mean 7/3, unbiased std sqrt(7/3) = 1.5275
    # whitened: (1 - 7/3)/1.5275 = -0.8729, (2 - 7/3)/1.5275 = -0.2182, (4 - 7/3)/1.5275 = 1.0911
    w = masked_whiten(X, MASK)
    s = math.sqrt(7.0 / 3.0)
    expected = torch.tensor([[(1 - 7 / 3) / s, (2 - 7 / 3) / s, 0.0], [(4 - 7 / 3) / s, 0.0, 0.0]])
    assert torch.allclose(w, expected, atol=1e-6)
