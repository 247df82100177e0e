import math

import pytest
import torch

from tether.losses import bradley_terry_loss


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
