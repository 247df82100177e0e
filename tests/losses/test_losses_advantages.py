import torch

from tether.losses import gae


def test_gae_by_hand():
    # T = 2, gamma = 0.9, lam = 0.5, r = (1, 2), V = (0.5, 1.0), value after the end = 0
    # delta_1 = 2 + 0.9*0 - 1.0 = 1.0              A_1 = 1.0
    # delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4            A_0 = 1.4 + 0.9*0.5*1.0 = 1.85
    # returns = A + V = (2.35, 2.0)
    r = torch.tensor([[1.0, 2.0]])
    v = torch.tensor([[0.5, 1.0]])
    adv, ret = gae(r, v, torch.ones(1, 2), gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[1.85, 1.0]]))
    assert torch.allclose(ret, torch.tensor([[2.35, 2.0]]))


def test_gae_padding_is_ignored_and_zero():
    # same row as above followed by two padded positions holding garbage
    r = torch.tensor([[1.0, 2.0, 7.0, float("nan")]])
    v = torch.tensor([[0.5, 1.0, 100.0, float("inf")]])
    mask = torch.tensor([[1, 1, 0, 0]])
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[1.85, 1.0, 0.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[2.35, 2.0, 0.0, 0.0]]))


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    # rewards (0, 0, 1), V = 0.5 everywhere: reward-to-go = 1 -> A = 0.5, returns = 1
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv, torch.full((1, 3), 0.5))
    assert torch.allclose(ret, torch.ones(1, 3))

    g = torch.Generator().manual_seed(0)
    B, T = 5, 8
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = torch.tensor([8, 5, 1, 0, 3])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    adv, ret = gae(r, v, mask, gamma=1.0, lam=1.0)
    rm = r * mask
    reward_to_go = rm.flip(1).cumsum(1).flip(1)
    assert torch.allclose(adv, (reward_to_go - v) * mask, atol=1e-5)
    assert torch.allclose(ret, reward_to_go * mask, atol=1e-5)


def test_gae_lambda_zero_is_one_step_td():
    g = torch.Generator().manual_seed(1)
    B, T, gamma = 4, 6, 0.95
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = torch.tensor([6, 4, 0, 1])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    adv, ret = gae(r, v, mask, gamma=gamma, lam=0.0)
    vm = v * mask
    next_v = torch.cat([vm[:, 1:], torch.zeros(B, 1)], dim=1)  # 0 after the last real token
    td = (r + gamma * next_v - v) * mask
    assert torch.allclose(adv, td, atol=1e-6)
    assert torch.allclose(ret, (td + v) * mask, atol=1e-6)


def test_gae_all_padding_row_is_zero_and_no_grad():
    r = torch.randn(2, 4, requires_grad=True)
    v = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    adv, ret = gae(r, v, mask, gamma=1.0, lam=0.95)
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv[1] == 0).all() and (ret[1] == 0).all()
    assert (adv[0, 3] == 0) and (ret[0, 3] == 0)


def test_gae_bool_and_float_masks_agree():
    g = torch.Generator().manual_seed(2)
    r, v = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    a1, r1 = gae(r, v, mask.bool(), 0.99, 0.95)
    a2, r2 = gae(r, v, mask.float(), 0.99, 0.95)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)
