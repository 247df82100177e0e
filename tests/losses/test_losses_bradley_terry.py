import math

import pytest
import torch

from tether.losses import (
    bradley_terry_label_smoothed_loss,
    bradley_terry_loss,
    bradley_terry_tie_loss,
    reward_centering_penalty,
)


def test_single_pair_by_hand():
    # r_c = 2, r_r = 1: -log sigmoid(1) = log(1 + e^-1) = 0.3133
    loss, metrics = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]))
    assert loss.item() == pytest.approx(0.3133, abs=1e-4)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    assert metrics["accuracy"] == 1.0
    assert metrics["margin"] == pytest.approx(1.0)


def test_margin_by_hand():
    # r_c - r_r - m = 2 - 1 - 1 = 0: -log sigmoid(0) = ln 2 = 0.6931
    loss, metrics = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]), margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert metrics["margin"] == pytest.approx(1.0)  # reported margin is r_c - r_r, not minus m


def test_batch_by_hand():
    # pairs (2, 1) and (0, 1): losses -log sigmoid(1) = 0.3133, -log sigmoid(-1) = 1.3133
    # mean = 0.8133; accuracy 1/2; mean margin (1 + -1)/2 = 0; mean chosen 1, mean rejected 1
    loss, metrics = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx(0.8133, abs=1e-4)
    assert metrics == {
        "loss": pytest.approx(0.8133, abs=1e-4),
        "accuracy": 0.5,
        "margin": pytest.approx(0.0),
        "chosen_reward": pytest.approx(1.0),
        "rejected_reward": pytest.approx(1.0),
    }
    assert all(isinstance(v, float) for v in metrics.values())


def test_stable_for_large_gaps_and_gradient():
    r_c = torch.tensor([-100.0, 100.0], requires_grad=True)
    r_r = torch.tensor([100.0, -100.0])
    loss, _ = bradley_terry_loss(r_c, r_r)
    # -log sigmoid(-200) = 200, -log sigmoid(200) ~ 0 -> mean 100
    assert loss.item() == pytest.approx(100.0, abs=1e-4)
    loss.backward()
    # d/dr_c of -log sigmoid(d)/B = -(1 - sigmoid(d))/2 = (-0.5, ~0)
    assert torch.allclose(r_c.grad, torch.tensor([-0.5, 0.0]), atol=1e-6)


# ---------------------------------------------------------------- label-smoothed BT


def test_label_smoothed_single_pair_by_hand():
    # d = 2 - 1 = 1, eps = 0.1: -log sigmoid(1) = 0.3133, -log sigmoid(-1) = 1.3133
    # 0.9 * 0.3133 + 0.1 * 1.3133 = 0.2820 + 0.1313 = 0.4133 (= 0.3133 + eps * d)
    loss, metrics = bradley_terry_label_smoothed_loss(torch.tensor([2.0]), torch.tensor([1.0]), epsilon=0.1)
    assert loss.item() == pytest.approx(0.4133, abs=1e-4)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)) + 0.1, abs=1e-6)
    assert metrics == {
        "loss": pytest.approx(0.4133, abs=1e-4),
        "accuracy": 1.0,
        "margin": pytest.approx(1.0),
        "chosen_reward": pytest.approx(2.0),
        "rejected_reward": pytest.approx(1.0),
    }
    assert all(isinstance(v, float) for v in metrics.values())


def test_label_smoothed_margin_by_hand():
    # d = 2 - 1 - m(1) = 0: both terms are ln 2, so the loss is ln 2 whatever eps is
    loss, metrics = bradley_terry_label_smoothed_loss(torch.tensor([2.0]), torch.tensor([1.0]), epsilon=0.2, margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert metrics["margin"] == pytest.approx(1.0)  # reported margin is r_c - r_r, not minus m


def test_label_smoothed_eps_zero_equals_plain_bt():
    torch.manual_seed(0)
    r_c = torch.randn(16, dtype=torch.float64)
    r_r = torch.randn(16, dtype=torch.float64)
    m = torch.rand(16, dtype=torch.float64)
    for margin in (None, m):
        a = r_c.clone().requires_grad_(True)
        b = r_c.clone().requires_grad_(True)
        loss_bt, met_bt = bradley_terry_loss(a, r_r, margin)
        loss_ls, met_ls = bradley_terry_label_smoothed_loss(b, r_r, 0.0, margin)
        assert loss_ls.item() == pytest.approx(loss_bt.item(), abs=1e-12)
        assert met_ls == pytest.approx(met_bt)
        loss_bt.backward()
        loss_ls.backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_label_smoothed_gradient_direction_and_finite_optimum():
    # dL/dd = sigmoid(d) - (1 - eps); with eps = 0.1 the optimum is d* = ln(0.9 / 0.1) = ln 9 = 2.1972
    eps = 0.1
    r_r = torch.zeros(3)
    r_c = torch.tensor([1.0, math.log(9.0), 5.0], requires_grad=True)
    loss, _ = bradley_terry_label_smoothed_loss(r_c, r_r, eps)
    loss.backward()
    g = r_c.grad
    # d = 1: (0.7311 - 0.9) / 3 = -0.0563 < 0 -> descent still raises r_c (like plain BT)
    assert g[0].item() == pytest.approx((torch.sigmoid(torch.tensor(1.0)).item() - 0.9) / 3, abs=1e-6)
    assert g[0].item() < 0
    # d = ln 9: sigmoid = 0.9 -> zero gradient
    assert g[1].item() == pytest.approx(0.0, abs=1e-6)
    # d = 5: (0.9933 - 0.9) / 3 = +0.0311 > 0 -> descent lowers r_c (plain BT would keep pushing up)
    assert g[2].item() > 0


def test_label_smoothed_stable_for_large_gaps():
    # -(1 - eps) log sigmoid(d) - eps log sigmoid(-d) = softplus(-d) + eps * d
    # d = 200, eps = 0.1: ~0 + 20 = 20; d = -200: 200 - 20 = 180 -> mean 100
    loss, _ = bradley_terry_label_smoothed_loss(torch.tensor([100.0, -100.0]), torch.tensor([-100.0, 100.0]), 0.1)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(100.0, abs=1e-3)


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7, 1.0, float("nan")])
def test_label_smoothed_invalid_eps_raises(eps):
    with pytest.raises(ValueError):
        bradley_terry_label_smoothed_loss(torch.tensor([1.0]), torch.tensor([0.0]), eps)


# ---------------------------------------------------------------- BT with ties


def test_tie_at_equal_rewards_is_log2_with_zero_gradient():
    # t = 0.5, d = 0: -(0.5 log 0.5 + 0.5 log 0.5) = ln 2 = 0.6931; dL/dd = sigmoid(0) - 0.5 = 0
    r_a = torch.tensor([1.5], requires_grad=True)
    r_b = torch.tensor([1.5], requires_grad=True)
    loss, metrics = bradley_terry_tie_loss(r_a, r_b, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)
    loss.backward()
    assert r_a.grad.item() == pytest.approx(0.0, abs=1e-7)
    assert r_b.grad.item() == pytest.approx(0.0, abs=1e-7)
    assert metrics["tie_fraction"] == 1.0
    assert metrics["tie_gap"] == pytest.approx(0.0)
    for key in ("accuracy", "margin", "chosen_reward", "rejected_reward"):  # no non-tie rows
        assert math.isnan(metrics[key])


def test_tie_pulls_rewards_together():
    # t = 0.5, d = 2: 0.5 * (0.1269 + 2.1269) = 1.1269; dL/dd = sigmoid(2) - 0.5 = 0.3808
    # -> gradient +0.3808 on r_a, -0.3808 on r_b: descent lowers r_a and raises r_b
    r_a = torch.tensor([2.0], requires_grad=True)
    r_b = torch.tensor([0.0], requires_grad=True)
    loss, metrics = bradley_terry_tie_loss(r_a, r_b, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(1.1269, abs=1e-4)
    loss.backward()
    assert r_a.grad.item() == pytest.approx(0.3808, abs=1e-4)
    assert r_b.grad.item() == pytest.approx(-0.3808, abs=1e-4)
    assert metrics["tie_gap"] == pytest.approx(2.0)
    # and symmetrically for d = -2
    r_a = torch.tensor([0.0], requires_grad=True)
    loss, _ = bradley_terry_tie_loss(r_a, torch.tensor([2.0]), torch.tensor([0.5]))
    loss.backward()
    assert r_a.grad.item() == pytest.approx(-0.3808, abs=1e-4)


def test_tie_target_one_equals_plain_bt_and_target_zero_swaps():
    torch.manual_seed(0)
    r_a = torch.randn(16, dtype=torch.float64)
    r_b = torch.randn(16, dtype=torch.float64)
    a1 = r_a.clone().requires_grad_(True)
    a2 = r_a.clone().requires_grad_(True)
    loss_bt, met_bt = bradley_terry_loss(a1, r_b)
    loss_t, met_t = bradley_terry_tie_loss(a2, r_b, torch.ones(16))
    assert loss_t.item() == pytest.approx(loss_bt.item(), abs=1e-12)
    assert {k: met_t[k] for k in met_bt} == pytest.approx(met_bt)
    assert met_t["tie_fraction"] == 0.0
    assert math.isnan(met_t["tie_gap"])  # no tie rows
    loss_bt.backward()
    loss_t.backward()
    assert torch.allclose(a1.grad, a2.grad, atol=1e-12)
    # t = 0 is plain BT with b as the chosen response (int targets are accepted too)
    loss_bt, met_bt = bradley_terry_loss(r_b, r_a)
    loss_t, met_t = bradley_terry_tie_loss(r_a, r_b, torch.zeros(16, dtype=torch.long))
    assert loss_t.item() == pytest.approx(loss_bt.item(), abs=1e-12)
    for key in met_bt:
        assert met_t[key] == pytest.approx(met_bt[key])


def test_tie_batch_by_hand():
    # rows (r_a, r_b, t) -> d = r_a - r_b:
    #   (2, 1, 1)   d =  1: -log sigmoid(1)  = 0.3133   a preferred, right
    #   (0, 1, 1)   d = -1: -log sigmoid(-1) = 1.3133   a preferred, wrong
    #   (1, 1, 0.5) d =  0: ln 2             = 0.6931   tie
    #   (3, 0, 0)   d =  3: -log sigmoid(-3) = 3.0486   b preferred, wrong
    # loss = (0.3133 + 1.3133 + 0.6931 + 3.0486) / 4 = 5.3683 / 4 = 1.3421
    # non-tie rows: accuracy 1/3; preferred - dispreferred = 1, -1, -3 -> margin -1
    # preferred rewards 2, 0, 0 -> 2/3; dispreferred 1, 1, 3 -> 5/3; tie_fraction 1/4; tie_gap 0
    loss, metrics = bradley_terry_tie_loss(
        torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.5, 0.0])
    )
    assert loss.item() == pytest.approx(1.3421, abs=1e-4)
    assert metrics == {
        "loss": pytest.approx(1.3421, abs=1e-4),
        "accuracy": pytest.approx(1 / 3),
        "margin": pytest.approx(-1.0),
        "chosen_reward": pytest.approx(2 / 3),
        "rejected_reward": pytest.approx(5 / 3),
        "tie_fraction": 0.25,
        "tie_gap": pytest.approx(0.0),
    }
    assert all(isinstance(v, float) for v in metrics.values())


def test_tie_accuracy_counts_zero_gap_as_wrong_on_decided_rows():
    # d = 0 on a decided row: sign(d) = 0 matches neither label (as r_c > r_r is strict in plain BT)
    _, metrics = bradley_terry_tie_loss(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert metrics["accuracy"] == 0.5


def test_tie_stable_for_large_gaps():
    # t = 0.5, d = 200: 0.5 * (0 + 200) = 100
    loss, _ = bradley_terry_tie_loss(torch.tensor([100.0]), torch.tensor([-100.0]), torch.tensor([0.5]))
    assert loss.item() == pytest.approx(100.0, abs=1e-4)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_tie_invalid_target_raises(bad):
    with pytest.raises(ValueError):
        bradley_terry_tie_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, bad]))


# ---------------------------------------------------------------- reward centering


def test_centering_penalty_by_hand_and_gradient():
    # r_c + r_r = (1 + -1, 2 + 1) = (0, 3): mean(0^2, 3^2) = 4.5
    # dP/dr = 2 (r_c + r_r) / B = (0, 3) for both chosen and rejected
    r_c = torch.tensor([1.0, 2.0], requires_grad=True)
    r_r = torch.tensor([-1.0, 1.0], requires_grad=True)
    p = reward_centering_penalty(r_c, r_r)
    assert isinstance(p, torch.Tensor) and p.dim() == 0
    assert p.item() == pytest.approx(4.5)
    p.backward()
    assert torch.allclose(r_c.grad, torch.tensor([0.0, 3.0]))
    assert torch.allclose(r_r.grad, torch.tensor([0.0, 3.0]))


def test_centering_penalty_fixes_the_offset_bt_ignores():
    # BT sees only r_c - r_r, so shifting both by 5 leaves it unchanged; the penalty
    # goes from 0 (centred pair (1, -1)) to (6 + 4)^2 = 100
    r_c, r_r = torch.tensor([1.0]), torch.tensor([-1.0])
    loss0, _ = bradley_terry_loss(r_c, r_r)
    loss5, _ = bradley_terry_loss(r_c + 5, r_r + 5)
    assert loss5.item() == pytest.approx(loss0.item())
    assert reward_centering_penalty(r_c, r_r).item() == pytest.approx(0.0)
    assert reward_centering_penalty(r_c + 5, r_r + 5).item() == pytest.approx(100.0)
    # as a trainer combines them: loss + coefficient * penalty (TRL's center_rewards_coefficient)
    total = loss5 + 0.01 * reward_centering_penalty(r_c + 5, r_r + 5)
    assert total.item() == pytest.approx(loss0.item() + 1.0)
