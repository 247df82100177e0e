import math

import pytest
import torch

from tether.losses import (
    entropy_from_logits,
    explained_variance,
    kl_k1,
    kl_k3,
    masked_mean,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    truncated_importance_weights,
)

# ---------------------------------------------------------------- per_token_rewards


def test_per_token_rewards_by_hand():
    # logp - ref_logp = 0.1 everywhere, beta = 0.5 -> -beta * kl = -0.05 per real token
    # row 0 has 2 real tokens: score 1 lands on t=1 -> (-0.05, 0.95, 0)
    # row 1 has 3 real tokens: score 2 lands on t=2 -> (-0.05, -0.05, 1.95)
    # row 2 is all padding -> zeros, score dropped
    ref = torch.zeros(3, 3)
    logp = ref + 0.1
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    scores = torch.tensor([1.0, 2.0, 5.0])
    rewards, kl = per_token_rewards(scores, logp, ref, mask, beta=0.5)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.95, 0.0], [-0.05, -0.05, 1.95], [0.0, 0.0, 0.0]]))
    assert torch.allclose(kl, torch.tensor([[0.1, 0.1, 0.0], [0.1, 0.1, 0.1], [0.0, 0.0, 0.0]]))


def test_per_token_rewards_estimator_and_garbage_padding():
    # k3 with log r = ref - logp = -0.1: e^-0.1 + 0.1 - 1 = 0.0048374
    logp = torch.tensor([[0.1, 0.1, float("nan")]])
    ref = torch.tensor([[0.0, 0.0, 3.0]])
    mask = torch.tensor([[True, True, False]])
    rewards, kl = per_token_rewards(torch.tensor([1.0]), logp, ref, mask, beta=1.0, kl_estimator=kl_k3)
    k = math.exp(-0.1) + 0.1 - 1
    assert torch.allclose(kl, torch.tensor([[k, k, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-k, 1.0 - k, 0.0]]))


def test_per_token_rewards_policy_equals_reference():
    logp = torch.randn(2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    rewards, kl = per_token_rewards(torch.tensor([0.3, -0.7]), logp, logp.clone(), mask, beta=0.1, kl_estimator=kl_k1)
    assert (kl == 0).all()
    assert torch.allclose(rewards, torch.tensor([[0, 0, 0, 0.3], [0, -0.7, 0, 0]]))


def test_per_token_rewards_no_grad():
    logp = torch.randn(2, 3, requires_grad=True)
    scores = torch.randn(2, requires_grad=True)
    rewards, kl = per_token_rewards(scores, logp, torch.zeros(2, 3), torch.ones(2, 3), beta=0.1)
    assert not rewards.requires_grad and not kl.requires_grad


# ---------------------------------------------------------------- ppo_policy_loss


def test_policy_loss_by_hand():
    # ratio = 1.5 on both tokens, eps = 0.2
    # token 0, A = +1: max(-1.5, -1.2) = -1.2   (clipped branch active)
    # token 1, A = -1: max(+1.5, +1.2) = +1.5   (unclipped)
    # loss = (-1.2 + 1.5) / 2 = 0.15, clipfrac = 0.5
    # approx_kl = 0.5 * ln(1.5)^2 = 0.0822
    old = torch.zeros(1, 2)
    logp = torch.full((1, 2), math.log(1.5), requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]])
    loss, m = ppo_policy_loss(logp, old, adv, torch.ones(1, 2), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert m["policy_loss"] == pytest.approx(0.15, abs=1e-6)
    assert m["clipfrac"] == pytest.approx(0.5)
    assert m["approx_kl"] == pytest.approx(0.5 * math.log(1.5) ** 2, abs=1e-6)
    assert m["ratio_mean"] == pytest.approx(1.5)
    assert m["ratio_max"] == pytest.approx(1.5)
    assert all(isinstance(v, float) for v in m.values())
    loss.backward()
    # clipped token: no gradient; unclipped: d/dlogp (-A * ratio) / N = 1.5 / 2 = 0.75
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.75]]))


def test_policy_loss_equal_policies():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    loss, m = ppo_policy_loss(logp, logp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-masked_mean(adv, mask).item(), abs=1e-6)
    assert m["clipfrac"] == 0.0
    assert m["approx_kl"] == 0.0
    assert m["ratio_mean"] == pytest.approx(1.0)
    assert m["ratio_max"] == pytest.approx(1.0)


def test_policy_loss_mean_over_all_tokens_of_batch():
    # token-level mean, not mean of per-sequence means: row 0 has 3 tokens A = 1, row 1 one token A = 4
    # ratio 1 -> loss = -(1 + 1 + 1 + 4) / 4 = -1.75   (a mean of row means would give -2.5)
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, _ = ppo_policy_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-1.75)


def test_policy_loss_all_padding_and_garbage():
    logp = torch.tensor([[0.0, float("inf")], [float("-inf"), float("nan")]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0], [0.0, float("nan")]])
    adv = torch.tensor([[2.0, float("nan")], [float("inf"), 1.0]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    loss, m = ppo_policy_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx(-2.0)
    assert all(math.isfinite(v) for v in m.values())
    loss.backward()
    assert torch.isfinite(logp.grad).all()

    empty = torch.zeros(2, 2)
    loss, m = ppo_policy_loss(torch.randn(2, 2, requires_grad=True), torch.randn(2, 2), torch.randn(2, 2), empty)
    assert loss.item() == 0.0
    assert all(v == 0.0 for v in m.values())


# ---------------------------------------------------------------- ppo_value_loss


def test_value_loss_clipped_branch_active():
    # v = 1, v_old = 0, R = 1, eps = 0.2: v_clip = 0.2
    # unclipped (1 - 1)^2 = 0, clipped (0.2 - 1)^2 = 0.64 -> 0.5 * 0.64 = 0.32, vf_clipfrac 1
    v = torch.tensor([[1.0]], requires_grad=True)
    loss, m = ppo_value_loss(v, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.32)
    assert m == {"value_loss": pytest.approx(0.32), "vf_clipfrac": 1.0}
    loss.backward()
    assert v.grad.item() == 0.0  # the clipped value does not depend on v


def test_value_loss_unclipped_cases():
    # v = 0.1 inside the clip range: both branches (0.1 - 1)^2 = 0.81 -> 0.405, vf_clipfrac 0
    # v = -0.5 moved away from R: unclipped 2.25 > clipped (-0.2 - 1)^2 = 1.44 -> 1.125
    # mean over the two tokens: (0.405 + 1.125) / 2 = 0.765
    v = torch.tensor([[0.1, -0.5, 123.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    loss, m = ppo_value_loss(v, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, float("nan")]]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.765)
    assert m["vf_clipfrac"] == 0.0
    loss.backward()
    # d/dv 0.5 * (v - R)^2 / 2 = (v - R) / 2 = (-0.45, -0.75, 0)
    assert torch.allclose(v.grad, torch.tensor([[-0.45, -0.75, 0.0]]))


def test_value_loss_counts_no_unclipped_token_as_clipped():
    # v_old = -0.0705, v = 0.0592: |v - v_old| = 0.130 < eps = 0.2, so the clip leaves v alone and both errors are
    # (v - R)^2 with R = -0.814. In fp32 v_old + (v - v_old) rounds to a float next to v, whose error was larger:
    # the metric counted this unclipped token as clipped. vf_clipfrac is 0; the loss is what it was (0.5 * (v - R)^2 to
    # one ulp), so training computes the same numbers as before the fix.
    v_old, v, r = -0.0704934149980545, 0.05917617306113243, -0.8141170740127563
    old = torch.tensor([[v_old]])
    vt = torch.tensor([[v]])
    assert (old + (vt - old)).item() != vt.item()  # the rounding the old formula hit
    loss, m = ppo_value_loss(vt, old, torch.tensor([[r]]), torch.ones(1, 1), clip_eps=0.2)
    assert m["vf_clipfrac"] == 0.0
    rt = torch.tensor([[r]])
    assert loss.item() == (0.5 * torch.maximum((vt - rt) ** 2, (old + (vt - old) - rt) ** 2)).item()  # the loss as it was
    assert loss.item() == pytest.approx((0.5 * (vt - rt) ** 2).item(), rel=1e-6)


def test_value_loss_all_padding():
    v = torch.randn(2, 3, requires_grad=True)
    loss, m = ppo_value_loss(v, torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0 and m["vf_clipfrac"] == 0.0
    loss.backward()
    assert (v.grad == 0).all()


# ---------------------------------------------------------------- entropy / explained variance


def test_entropy_by_hand():
    # uniform over 4 -> ln 4 = 1.3863; one-hot via -inf -> 0; (0, ln 3) -> p = (1/4, 3/4)
    # H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf], [0.0, math.log(3.0), -math.inf, -math.inf]]],
        requires_grad=True,
    )
    h = entropy_from_logits(logits)
    assert h.shape == (1, 3)
    expected = [math.log(4.0), 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    assert torch.allclose(h, torch.tensor([expected]), atol=1e-6)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_entropy_matches_categorical_and_is_stable():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 5, 17, generator=g)
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), ref, atol=1e-5)
    big = entropy_from_logits(logits * 1e4)  # near one-hot, huge logits
    assert torch.isfinite(big).all() and (big > -1e-3).all()
    h16 = entropy_from_logits(logits.bfloat16())
    assert h16.dtype == torch.float32
    assert torch.allclose(h16, torch.distributions.Categorical(logits=logits.bfloat16().float()).entropy(), atol=1e-4)


def test_explained_variance_by_hand():
    # R = (1, 2, 3), V = (1, 2, 2): residual (0, 0, 1)
    # Var[R - V] = 2/9, Var[R] = 2/3 -> EV = 1 - (2/9)/(2/3) = 2/3
    ret = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    val = torch.tensor([[1.0, 2.0, 2.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    ev = explained_variance(val, ret, mask)
    assert isinstance(ev, float)
    assert ev == pytest.approx(2.0 / 3.0)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)  # perfect
    assert explained_variance(torch.zeros_like(ret), ret, mask) == pytest.approx(0.0)  # constant predictor


def test_explained_variance_nan_when_returns_constant():
    assert math.isnan(explained_variance(torch.randn(2, 3), torch.ones(2, 3), torch.ones(2, 3)))
    assert math.isnan(explained_variance(torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 3)))


# ---------------------------------------------------------------- truncated importance weights (engine=vllm)


def test_truncated_importance_weights_by_hand():
    trainer = torch.tensor([[math.log(0.5), math.log(0.4), math.log(0.9)], [math.log(0.2), 0.0, 0.0]])
    sampler = torch.tensor([[math.log(0.5), math.log(0.1), math.log(0.6)], [math.log(0.4), 7.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w, m = truncated_importance_weights(trainer, sampler, mask, cap=2.0)
    # 0.5/0.5 = 1; 0.4/0.1 = 4 -> capped at 2; 0.9/0.6 = 1.5; 0.2/0.4 = 0.5; padding 0 whatever its numbers
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 1.5], [0.5, 0.0, 0.0]]))
    assert m["is_weight_mean"] == pytest.approx((1 + 2 + 1.5 + 0.5) / 4)
    assert m["is_weight_capped"] == pytest.approx(1 / 4)
    assert m["is_logp_gap"] == pytest.approx((0 + math.log(4) + math.log(1.5) + math.log(2)) / 4)
    assert not w.requires_grad


def test_policy_loss_with_weights_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.3)]], requires_grad=True)
    old = torch.tensor([[math.log(0.5), math.log(0.2)]])
    adv = torch.tensor([[1.0, -2.0]])
    mask = torch.ones(1, 2)
    # ratios 1 and 1.5; token 2 (A < 0): max(2 * 1.5, 2 * 1.2) = 3; weights 0.5 and 2: (0.5 * -1 + 2 * 3) / 2 = 2.75
    loss, _ = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2, weights=torch.tensor([[0.5, 2.0]]))
    assert loss.item() == pytest.approx(2.75)
    plain, _ = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2, weights=torch.ones(1, 2))
    assert plain.item() == pytest.approx(ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)[0].item()) == pytest.approx(1.0)
