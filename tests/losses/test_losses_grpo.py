"""GRPO / RLOO / REINFORCE estimators and the GRPO token loss with its three aggregations, by hand."""

import math

import pytest
import torch

from tether.losses import (
    MovingAverageBaseline,
    constant_mean,
    group_advantages,
    group_advantages_batch_std,
    grpo_token_loss,
    kl_k3,
    leave_one_out_advantages,
    reinforce_advantages,
    sequence_mean,
    token_mean,
)

# ---------------------------------------------------------------- group-relative (GRPO, Dr. GRPO)


def test_group_advantages_by_hand():
    # group 0: r = (1, 2, 3): mean 2, centred (-1, 0, 1), sample std sqrt((1 + 0 + 1) / 2) = 1 -> A = (-1, 0, 1)
    # group 1: r = (5, 5, 5): all equal -> A = 0 (0 / eps, no NaN)
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    a = group_advantages(r, eps=0.0 + 1e-12)
    assert torch.allclose(a, torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), atol=1e-6)
    assert torch.isfinite(group_advantages(r, eps=0.0)).all()  # even with eps = 0 an equal group gives 0, not 0/0
    assert (group_advantages(r, eps=0.0)[1] == 0).all()
    # the default eps = 1e-4 divides by (1 + 1e-4)
    assert torch.allclose(group_advantages(r)[0], torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-4))


def test_group_advantages_without_std_is_dr_grpo():
    # Dr. GRPO: r - mean only; r = (0, 0, 1, 1) -> (-0.5, -0.5, 0.5, 0.5) whatever the spread
    r = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 10.0, 10.0]])
    a = group_advantages(r, scale_std=False)
    assert torch.allclose(a, torch.tensor([[-0.5, -0.5, 0.5, 0.5], [-5.0, -5.0, 5.0, 5.0]]))
    # with the std the two groups get the same advantages: the spread is divided out
    scaled = group_advantages(r)
    assert torch.allclose(scaled[0], scaled[1], atol=1e-3)  # up to eps = 1e-4 against stds 0.58 and 5.8


def test_group_advantages_with_dropped_samples():
    # r = (1, 2, [9 dropped]): mean 1.5, centred (-0.5, 0.5), std sqrt(0.5 / 1) = 0.7071 -> (-0.7071, 0.7071, 0)
    # a group with one kept sample: centred 0 -> A = 0
    r = torch.tensor([[1.0, 2.0, 9.0], [3.0, 7.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    a = group_advantages(r, mask, eps=1e-12)
    assert torch.allclose(a, torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], [0.0, 0.0, 0.0]]), atol=1e-5)
    all_dropped = group_advantages(r, torch.zeros(2, 3))
    assert (all_dropped == 0).all()


# ---------------------------------------------------------------- group mean, batch std (TRL's scale_rewards="batch")


def test_group_advantages_batch_std_by_hand():
    # r = ((0, 2), (4, 6)): group means 1 and 5 -> centred (-1, 1, -1, 1)
    # batch mean 3, sample std sqrt((9 + 1 + 1 + 9) / 3) = sqrt(20/3) = 2.5820 -> A = +-1 / 2.5820 = +-0.3873
    # (the std of the rewards around the batch's mean, not of the centred values, whose std is sqrt(4/3) = 1.1547)
    r = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    a = group_advantages_batch_std(r, eps=0.0)
    assert torch.allclose(a, torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) / math.sqrt(20 / 3), atol=1e-6)
    assert a[0, 1].item() == pytest.approx(0.3873, abs=1e-4)
    # the default eps = 1e-4 divides by 2.5820 + 1e-4; per-group scaling would give +-1 / (1.4142 + 1e-4) instead
    assert torch.allclose(group_advantages_batch_std(r), torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]) / (math.sqrt(20 / 3) + 1e-4))
    assert group_advantages(r)[0, 1].item() == pytest.approx(1 / (math.sqrt(2) + 1e-4))


def test_group_advantages_batch_std_keeps_the_groups_spreads():
    # groups (0, 1) and (0, 10): one std for both, so the second group's advantages stay 10x the first's
    # (per-group scaling makes them equal: the difficulty bias Dr. GRPO removes)
    r = torch.tensor([[0.0, 1.0], [0.0, 10.0]])
    a = group_advantages_batch_std(r)
    assert a[1, 1].item() == pytest.approx(10 * a[0, 1].item())
    # batch mean 2.75, squares 7.5625 + 3.0625 + 7.5625 + 52.5625 = 70.75, std sqrt(70.75 / 3) = 4.8563; A_11 = 5 / (4.8563 + 1e-4)
    assert a[1, 1].item() == pytest.approx(5 / (math.sqrt(70.75 / 3) + 1e-4), rel=1e-6)


def test_group_advantages_batch_std_with_dropped_samples_and_a_wider_batch():
    # kept: group 0 (1, 3, [50 dropped]), group 1 (5, [dropped], 7): group means 2 and 6 -> centred (-1, 1, 0; -1, 0, 1)
    # batch of the kept rewards (1, 3, 5, 7): mean 4, std sqrt((9 + 1 + 1 + 9) / 3) = 2.5820; dropped samples get 0
    r = torch.tensor([[1.0, 3.0, 50.0], [5.0, -8.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    a = group_advantages_batch_std(r, mask, eps=0.0)
    s = math.sqrt(20 / 3)
    assert torch.allclose(a, torch.tensor([[-1 / s, 1 / s, 0.0], [-1 / s, 0.0, 1 / s]]), atol=1e-6)
    # batch_rewards: the std over a wider batch (other processes' kept rewards too): (1, 3, 5, 7, 4, 4) has mean 4,
    # std sqrt(20 / 5) = 2 -> A = +-1 / 2
    wider = torch.tensor([1.0, 3.0, 5.0, 7.0, 4.0, 4.0])
    a = group_advantages_batch_std(r, mask, batch_rewards=wider, eps=0.0)
    assert torch.allclose(a, torch.tensor([[-0.5, 0.5, 0.0], [-0.5, 0.0, 0.5]]))


def test_group_advantages_batch_std_equal_batch_gives_zero():
    # every reward equal: std 0, centred 0 -> 0 (not NaN), even with eps = 0; a batch of one sample too
    r = torch.full((2, 3), 4.0)
    assert (group_advantages_batch_std(r, eps=0.0) == 0).all()
    assert (group_advantages_batch_std(torch.tensor([[2.0, 9.0]]), torch.tensor([[1, 0]]), eps=0.0) == 0).all()
    assert (group_advantages_batch_std(r, torch.zeros(2, 3)) == 0).all()


def test_group_advantages_batch_std_matches_trl():
    # TRL's GRPOTrainer (trl/trainer/grpo_trainer.py, v0.23 and later, multi_objective_aggregation="sum_then_normalize"),
    # written out: rewards (B,) over the gathered batch, chunks of num_generations consecutive samples per prompt
    #   mean_grouped_rewards = rewards.view(-1, G).mean(dim=1).repeat_interleave(G, dim=0)
    #   std_rewards = nanstd(rewards).expand_as(rewards)        # scale_rewards == "batch": Bessel-corrected, whole batch
    #   advantages = (rewards - mean_grouped_rewards) / (std_rewards + 1e-4)
    torch.manual_seed(0)
    P, G = 5, 4
    rewards = torch.randn(P * G, dtype=torch.float64) * 3 + 1
    mean_grouped_rewards = rewards.view(-1, G).mean(dim=1).repeat_interleave(G, dim=0)
    std_rewards = rewards.std().expand_as(rewards)
    trl = (rewards - mean_grouped_rewards) / (std_rewards + 1e-4)
    assert torch.allclose(group_advantages_batch_std(rewards.view(P, G)).flatten(), trl, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- leave-one-out (RLOO)


def test_leave_one_out_by_hand():
    # r = (1, 2, 3): baselines (2+3)/2 = 2.5, (1+3)/2 = 2, (1+2)/2 = 1.5 -> A = (-1.5, 0, 1.5) = 3/2 * (r - mean)
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    a = leave_one_out_advantages(r)
    assert torch.allclose(a, torch.tensor([[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]]))
    # dropped third sample: baselines 2 and 1 -> (-1, 1, 0); one kept sample has no baseline -> 0
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a = leave_one_out_advantages(torch.tensor([[1.0, 2.0, 99.0], [4.0, 0.0, 0.0]]), mask)
    assert torch.allclose(a, torch.tensor([[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def test_leave_one_out_baseline_excludes_the_sample():
    # the baseline of sample i does not move when r_i moves
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 5, generator=g)
    bumped = r.clone()
    bumped[1, 2] += 10.0
    baseline = r - leave_one_out_advantages(r)
    baseline_bumped = bumped - leave_one_out_advantages(bumped)
    assert baseline[1, 2].item() == pytest.approx(baseline_bumped[1, 2].item(), abs=1e-5)


# ---------------------------------------------------------------- REINFORCE with a baseline


def test_reinforce_by_hand():
    # batch-mean baseline: r = (1, 2, 6), b = 3 -> (-2, -1, 3); a dropped sample gets 0
    r = torch.tensor([1.0, 2.0, 6.0])
    assert torch.allclose(reinforce_advantages(r, r.mean()), torch.tensor([-2.0, -1.0, 3.0]))
    assert torch.allclose(reinforce_advantages(r, 3.0, torch.tensor([1, 0, 1])), torch.tensor([-2.0, 0.0, 3.0]))


def test_moving_average_baseline_by_hand():
    # decay 0.9: first batch mean 3 -> b = 3; next mean 13 -> 0.9 * 3 + 0.1 * 13 = 4.0
    b = MovingAverageBaseline(0.9)
    assert b.value is None
    assert b.update(3.0) == pytest.approx(3.0)
    assert b.update(13.0) == pytest.approx(4.0)
    c = MovingAverageBaseline(0.5)
    c.load_state_dict(b.state_dict())
    assert c.value == pytest.approx(4.0) and c.decay == 0.9
    with pytest.raises(ValueError, match="decay"):
        MovingAverageBaseline(1.0)


# ---------------------------------------------------------------- the token loss


def test_asymmetric_clip_by_hand():
    # eps_low = 0.2, eps_high = 0.28
    # row 0, ratio 1.5: A = +1: max(-1.5, -1.28) = -1.28 (clipped high); A = -1: max(1.5, 1.28) = 1.5 (unclipped)
    # row 1, ratio 0.5: A = -1: max(0.5, 0.8) = 0.8 (clipped low);        A = +1: max(-0.5, -0.8) = -0.5 (unclipped)
    logp = torch.tensor([[math.log(1.5)] * 2, [math.log(0.5)] * 2], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    per_token, m = grpo_token_loss(logp, torch.zeros(2, 2), adv, torch.ones(2, 2), eps_low=0.2, eps_high=0.28)
    assert torch.allclose(per_token, torch.tensor([[-1.28, 1.5], [0.8, -0.5]]), atol=1e-6)
    assert m["clipfrac"] == pytest.approx(0.5) and m["clipfrac_high"] == pytest.approx(0.25) and m["clipfrac_low"] == pytest.approx(0.25)
    assert m["ratio_max"] == pytest.approx(1.5) and m["ratio_mean"] == pytest.approx(1.0)
    assert m["approx_kl"] == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2, abs=1e-6)
    assert "kl" not in m
    token_mean(per_token, torch.ones(2, 2)).backward()
    # clipped tokens carry no gradient; unclipped: d(-A rho)/dlogp / N = -A rho / 4 -> 1.5 / 4, -0.5 / 4
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.375], [0.0, -0.125]]))


def test_symmetric_clip_matches_the_high_side():
    # with eps_high = eps_low = 0.2 the A = +1 token at ratio 1.5 is clipped at 1.2
    logp = torch.full((1, 1), math.log(1.5))
    per_token, m = grpo_token_loss(logp, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1))
    assert per_token.item() == pytest.approx(-1.2) and m["clipfrac"] == 1.0


def test_first_iteration_ratio_one_no_clipping():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 6, generator=g)
    adv = torch.randn(4, generator=g)  # sequence-level, spread over the tokens
    mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6])
    per_token, m = grpo_token_loss(logp, logp.clone(), adv, mask, eps_low=0.2, eps_high=0.28)
    assert m["clipfrac"] == 0.0 and m["approx_kl"] == 0.0 and m["ratio_max"] == pytest.approx(1.0)
    # ratio 1: each token's loss is -A of its response
    assert torch.allclose(per_token, -adv[:, None] * mask)


def test_kl_term_by_hand():
    # pi = 0.5, pi_ref = 0.25, old = pi, A = 0: l = beta * k3 = 0.1 * (0.5 + ln 2 - 1) = 0.1 * 0.19315
    # d k3 / d logp = 1 - pi_ref / pi = 0.5 -> gradient beta * 0.5 / N per token
    logp = torch.full((1, 2), math.log(0.5), requires_grad=True)
    ref = torch.full((1, 2), math.log(0.25))
    per_token, m = grpo_token_loss(logp, logp.detach().clone(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.1)
    assert torch.allclose(per_token, torch.full((1, 2), 0.1 * (0.5 + math.log(2.0) - 1.0)), atol=1e-7)
    assert m["kl"] == pytest.approx(0.5 + math.log(2.0) - 1.0, abs=1e-6)
    assert m["kl"] == pytest.approx(kl_k3(logp, ref).mean().item(), abs=1e-7)
    token_mean(per_token, torch.ones(1, 2)).backward()
    assert torch.allclose(logp.grad, torch.full((1, 2), 0.1 * 0.5 / 2))
    # beta = 0: the KL is measured, not trained
    per_token, m = grpo_token_loss(logp, logp.detach().clone(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.0)
    assert (per_token == 0).all() and m["kl"] > 0


def test_kl_term_zero_when_policy_is_reference():
    logp = torch.randn(2, 3, requires_grad=True)
    per_token, m = grpo_token_loss(logp, logp.detach(), torch.zeros(2), torch.ones(2, 3), ref_logp=logp.detach().clone(), beta=1.0)
    assert m["kl"] == 0.0
    token_mean(per_token, torch.ones(2, 3)).backward()
    assert (logp.grad == 0).all()


def test_all_padding_rows_and_garbage_give_no_nan():
    logp = torch.tensor([[0.0, float("inf")], [float("-inf"), float("nan")]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0], [0.0, float("nan")]])
    ref = torch.tensor([[0.0, float("nan")], [float("inf"), 0.0]])
    adv = torch.tensor([2.0, float("nan")])
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # row 1: all padding
    per_token, m = grpo_token_loss(logp, old, adv, mask, ref_logp=ref, beta=0.5)
    assert torch.allclose(per_token, torch.tensor([[-2.0, 0.0], [0.0, 0.0]]))
    assert all(math.isfinite(v) for v in m.values())
    for aggregate in (token_mean(per_token, mask), sequence_mean(per_token, mask), constant_mean(per_token, mask, 4.0)):
        assert math.isfinite(aggregate.item())
    (token_mean(per_token, mask) + sequence_mean(per_token, mask)).backward()
    assert torch.isfinite(logp.grad).all()

    empty = torch.zeros(2, 2)
    per_token, m = grpo_token_loss(torch.randn(2, 2), torch.randn(2, 2), torch.randn(2), empty)
    assert (per_token == 0).all() and all(v == 0.0 for v in m.values())
    assert token_mean(per_token, empty).item() == 0.0 and sequence_mean(per_token, empty).item() == 0.0


# ---------------------------------------------------------------- aggregations (the length-bias fixes)

PER_TOKEN = torch.tensor([[1.0, 1.0, 1.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregations_by_hand():
    # row 0: three tokens of loss 1; row 1: one token of loss 4 (the 9s are padding)
    # token_mean    = (1 + 1 + 1 + 4) / 4 = 1.75          every token the same weight (DAPO)
    # sequence_mean = (mean(1,1,1) + 4) / 2 = 2.5         every response the same weight (GRPO)
    # constant_mean = 7 / (2 responses * 3 max tokens) = 7/6   (Dr. GRPO)
    assert token_mean(PER_TOKEN, MASK).item() == pytest.approx(1.75)
    assert sequence_mean(PER_TOKEN, MASK).item() == pytest.approx(2.5)
    assert constant_mean(PER_TOKEN, MASK, 6.0).item() == pytest.approx(7.0 / 6.0)
    with pytest.raises(ValueError, match="normalizer"):
        constant_mean(PER_TOKEN, MASK, 0.0)


def test_aggregations_ignore_an_all_padding_row():
    per_token = torch.cat([PER_TOKEN, torch.full((1, 3), 5.0)])
    mask = torch.cat([MASK, torch.zeros(1, 3, dtype=MASK.dtype)])
    assert token_mean(per_token, mask).item() == pytest.approx(1.75)
    assert sequence_mean(per_token, mask).item() == pytest.approx(2.5)


def test_single_token_responses_aggregate_alike():
    # one token per response: every aggregation is the plain mean (constant with C = B * 1)
    per_token = torch.tensor([[0.5], [-1.5], [2.5]])
    mask = torch.ones(3, 1)
    mean = per_token.mean().item()
    assert token_mean(per_token, mask).item() == pytest.approx(mean)
    assert sequence_mean(per_token, mask).item() == pytest.approx(mean)
    assert constant_mean(per_token, mask, 3.0).item() == pytest.approx(mean)


def test_micro_batches_add_up_to_the_minibatch():
    # with the minibatch's counts given, the micro-batch losses sum to the whole minibatch's loss
    g = torch.Generator().manual_seed(0)
    per_token = torch.randn(6, 5, generator=g)
    mask = (torch.arange(5)[None] < torch.tensor([5, 1, 3, 0, 2, 4])[:, None]).long()
    n_tokens, n_seq = mask.sum().item(), int((mask.sum(1) > 0).sum())
    parts = [slice(0, 2), slice(2, 5), slice(5, 6)]
    for whole, part in [
        (token_mean(per_token, mask), lambda s: token_mean(per_token[s], mask[s], n_tokens)),
        (sequence_mean(per_token, mask), lambda s: sequence_mean(per_token[s], mask[s], n_seq)),
        (constant_mean(per_token, mask, 30.0), lambda s: constant_mean(per_token[s], mask[s], 30.0)),
    ]:
        assert sum(part(s) for s in parts).item() == pytest.approx(whole.item(), abs=1e-6)


def test_length_bias_direction():
    # two responses with the same positive advantage, lengths 1 and 4, ratio 1: the gradient on each token
    # under sequence_mean is A / (S * |o_i|) -- the short response's token gets 4x the weight -- and under
    # token_mean A / N for both
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    per_token, _ = grpo_token_loss(logp, logp.detach(), torch.ones(2), mask)
    sequence_mean(per_token, mask).backward()
    assert logp.grad[0, 0].item() == pytest.approx(-0.5) and logp.grad[1, 0].item() == pytest.approx(-0.125)
    logp.grad = None
    per_token, _ = grpo_token_loss(logp, logp.detach(), torch.ones(2), mask)
    token_mean(per_token, mask).backward()
    assert logp.grad[0, 0].item() == pytest.approx(-0.2) and logp.grad[1, 0].item() == pytest.approx(-0.2)


def test_token_loss_weights_scale_the_surrogate_not_the_kl():
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    old = logp.clone()  # ratio 1: the surrogate is -A
    ref = torch.tensor([[math.log(0.25), math.log(0.25)]])
    adv = torch.tensor([2.0])
    mask = torch.ones(1, 2)
    weights = torch.tensor([[0.5, 3.0]])
    per_token, _ = grpo_token_loss(logp, old, adv, mask, ref_logp=ref, beta=0.1, weights=weights)
    k3 = kl_k3(logp, ref)
    torch.testing.assert_close(per_token, torch.tensor([[-2.0 * 0.5, -2.0 * 3.0]]) + 0.1 * k3)
