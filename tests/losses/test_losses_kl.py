import math

import pytest
import torch

from tether.losses import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3


def test_estimators_by_hand():
    # pi = 0.5, pi_ref = 0.25: logp - ref_logp = ln 2 = 0.6931
    # k1 = 0.6931
    # k2 = 0.5 * 0.6931^2 = 0.2402
    # k3 = r - log r - 1 with r = pi_ref/pi = 0.5: 0.5 + 0.6931 - 1 = 0.1931
    logp = torch.full((1, 2), math.log(0.5))
    ref = torch.full((1, 2), math.log(0.25))
    assert torch.allclose(kl_k1(logp, ref), torch.full((1, 2), math.log(2.0)))
    assert torch.allclose(kl_k2(logp, ref), torch.full((1, 2), 0.5 * math.log(2.0) ** 2))
    assert torch.allclose(kl_k3(logp, ref), torch.full((1, 2), 0.5 + math.log(2.0) - 1.0))
    assert kl_k3(logp, ref)[0, 0].item() == pytest.approx(0.1931, abs=1e-4)


@pytest.mark.parametrize("k", [kl_k1, kl_k2, kl_k3])
def test_policy_equals_reference_gives_zero(k):
    logp = torch.log_softmax(torch.randn(3, 5, 7), -1)[..., 0]
    out = k(logp, logp.clone())
    assert out.shape == (3, 5)
    assert (out == 0).all()


def test_k2_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp = -5 * torch.rand(64, 32, generator=g)
    ref = -5 * torch.rand(64, 32, generator=g)
    assert (kl_k2(logp, ref) >= 0).all()
    assert (kl_k3(logp, ref) >= 0).all()


def test_k1_k3_unbiased_on_samples():
    # sample tokens from pi; mean of k1 and k3 -> KL(pi || pi_ref)
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.4, 0.4])
    true_kl = (p * (p / q).log()).sum().item()  # 0.2332
    a = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, ref = p.log()[a][None], q.log()[a][None]
    assert kl_k1(logp, ref).mean().item() == pytest.approx(true_kl, abs=0.01)
    assert kl_k3(logp, ref).mean().item() == pytest.approx(true_kl, abs=0.01)


def test_k3_accurate_near_zero():
    logp = torch.tensor([[0.0]], dtype=torch.float32)
    ref = torch.tensor([[1e-4]], dtype=torch.float32)
    # k3 = e^x - x - 1 ~ x^2 / 2 = 5e-9 for x = 1e-4
    assert kl_k3(logp, ref).item() == pytest.approx(5e-9, rel=1e-3)


def test_adaptive_controller_worked_number():
    # beta 0.1, target 6, kl 12: err = 12/6 - 1 = 1 -> clipped to 0.2
    # n = 256, horizon = 10000: K = 0.0256 -> beta = 0.1 * (1 + 0.2 * 0.0256) = 0.100512
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(12.0, n_steps=256)
    assert c.beta == pytest.approx(0.1 * (1 + 0.2 * 0.0256))
    assert c.beta == pytest.approx(0.100512)


def test_adaptive_controller_direction_and_clip():
    # below target: kl 0 -> err = -1 clipped to -0.2 -> 0.1 * (1 - 0.00512) = 0.099488
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(0.0, n_steps=256)
    assert c.beta == pytest.approx(0.099488)
    # inside the clip: kl 6.6 -> err 0.1 -> 0.1 * (1 + 0.1 * 0.0256) = 0.100256
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(torch.tensor(6.6), n_steps=256)
    assert c.beta == pytest.approx(0.100256)
    # on target: unchanged
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(6.0, n_steps=256)
    assert c.beta == pytest.approx(0.1)
    # very large KL is clipped the same as kl = 12
    hi = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    hi.update(1e6, n_steps=256)
    assert hi.beta == pytest.approx(0.100512)


def test_adaptive_controller_state_dict_roundtrip():
    c = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    for kl in (1.0, 9.0, 20.0):
        c.update(kl, n_steps=512)
    d = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    d.load_state_dict(c.state_dict())
    assert d.beta == c.beta
    c.update(3.0, 64)
    d.update(3.0, 64)
    assert d.beta == c.beta


def test_fixed_controller():
    c = FixedKLController(0.05)
    c.update(100.0, n_steps=256)
    c.update(0.0, n_steps=256)
    assert c.beta == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.beta == 0.05
