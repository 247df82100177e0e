"""DPO losses against hand-worked numbers, and their edge cases."""

import math

import pytest
import torch

from tether.losses import (
    dpo_conservative_loss,
    dpo_hinge_loss,
    dpo_ipo_loss,
    dpo_ipo_token_mean_loss,
    dpo_reference_free_loss,
    dpo_sigmoid_loss,
)

# One pair used throughout: policy logp chosen -10, rejected -12; reference -11 on both.
#   log-ratios: chosen -10 - (-11) = +1, rejected -12 - (-11) = -1, so h = 1 - (-1) = 2
LP_C, LP_R, REF_C, REF_R = (torch.tensor([x]) for x in (-10.0, -12.0, -11.0, -11.0))


def test_sigmoid_by_hand():
    # beta = 0.5: beta * h = 1; -log sigmoid(1) = log(1 + e^-1) = 0.3133
    # implicit rewards: chosen 0.5 * 1 = 0.5, rejected 0.5 * -1 = -0.5, margin 1, accuracy 1
    loss, m = dpo_sigmoid_loss(LP_C, LP_R, REF_C, REF_R, beta=0.5)
    assert loss.item() == pytest.approx(0.3133, abs=1e-4)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    assert m == {
        "loss": pytest.approx(0.3133, abs=1e-4),
        "rewards_chosen": pytest.approx(0.5),
        "rewards_rejected": pytest.approx(-0.5),
        "margin": pytest.approx(1.0),
        "accuracy": 1.0,
    }
    assert all(isinstance(v, float) for v in m.values())


def test_sigmoid_batch_by_hand():
    # pair 1 as above (h = 2); pair 2 reversed: logp_c -12, logp_r -10, refs -11 -> h = -2
    # beta = 0.5: losses -log sigmoid(1) = 0.3133 and -log sigmoid(-1) = 1.3133, mean 0.8133
    # rewards chosen (0.5, -0.5) mean 0; rejected (-0.5, 0.5) mean 0; margins (1, -1) mean 0; accuracy 1/2
    lp_c, lp_r = torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -10.0])
    ref = torch.tensor([-11.0, -11.0])
    loss, m = dpo_sigmoid_loss(lp_c, lp_r, ref, ref, beta=0.5)
    assert loss.item() == pytest.approx(0.8133, abs=1e-4)
    assert m["accuracy"] == 0.5 and m["margin"] == pytest.approx(0.0)
    assert m["rewards_chosen"] == pytest.approx(0.0) and m["rewards_rejected"] == pytest.approx(0.0)


def test_sigmoid_gradient_by_hand():
    # dL/dlogp_c = -beta * sigmoid(-beta h) / B = -0.5 * sigmoid(-1) = -0.5 * 0.26894 = -0.13447
    # dL/dlogp_r = +0.13447; the reference gets no gradient when it is a constant
    lp_c, lp_r = LP_C.clone().requires_grad_(True), LP_R.clone().requires_grad_(True)
    loss, _ = dpo_sigmoid_loss(lp_c, lp_r, REF_C, REF_R, beta=0.5)
    loss.backward()
    assert lp_c.grad.item() == pytest.approx(-0.13447, abs=1e-5)
    assert lp_r.grad.item() == pytest.approx(0.13447, abs=1e-5)


def test_policy_equal_to_reference_gives_log2_and_zero_rewards():
    # logp == ref_logp on both responses: h = 0, -log sigmoid(0) = log 2, every reward 0, and
    # the tie counts one half in the accuracy (chance)
    lp = torch.tensor([-7.0, -3.5, -20.0])
    loss, m = dpo_sigmoid_loss(lp, lp + 1.0, lp, lp + 1.0, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-7)
    assert m["rewards_chosen"] == 0.0 and m["rewards_rejected"] == 0.0 and m["margin"] == 0.0
    assert m["accuracy"] == 0.5


def test_equal_chosen_and_rejected_logps():
    # the policy gives both responses the same log-prob, the reference too: h = 0 whatever beta
    lp = torch.tensor([-5.0])
    for fn, expected in ((dpo_sigmoid_loss, math.log(2.0)), (dpo_hinge_loss, 1.0), (dpo_ipo_loss, 25.0)):
        loss, m = fn(lp, lp, lp - 2.0, lp - 2.0, beta=0.1)  # ipo: (0 - 1/(2*0.1))^2 = 5^2 = 25
        assert loss.item() == pytest.approx(expected, abs=1e-5), fn.__name__
        assert m["accuracy"] == 0.5 and m["margin"] == 0.0
        # rewards are not 0 here: beta * (logp - ref) = 0.1 * 2 = 0.2 on both
        assert m["rewards_chosen"] == pytest.approx(0.2) and m["rewards_rejected"] == pytest.approx(0.2)


def test_ipo_by_hand():
    # h = 2; beta = 0.5: target 1 / (2 * 0.5) = 1, (2 - 1)^2 = 1
    loss, m = dpo_ipo_loss(LP_C, LP_R, REF_C, REF_R, beta=0.5)
    assert loss.item() == pytest.approx(1.0)
    assert m["rewards_chosen"] == pytest.approx(0.5) and m["accuracy"] == 1.0
    # beta = 0.25: target 1 / 0.5 = 2 = h, so the loss is 0 and so is its gradient
    lp_c = LP_C.clone().requires_grad_(True)
    loss, _ = dpo_ipo_loss(lp_c, LP_R, REF_C, REF_R, beta=0.25)
    loss.backward()
    assert loss.item() == pytest.approx(0.0) and lp_c.grad.item() == pytest.approx(0.0)
    # beta = 1: target 0.5, (2 - 0.5)^2 = 2.25; gradient 2 * (h - 0.5) = 3 on logp_c
    lp_c = LP_C.clone().requires_grad_(True)
    loss, _ = dpo_ipo_loss(lp_c, LP_R, REF_C, REF_R, beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(2.25) and lp_c.grad.item() == pytest.approx(3.0)


def test_hinge_by_hand():
    # h = 2, beta = 0.5: beta h = 1, max(0, 1 - 1) = 0 (margin reached, no gradient)
    loss, _ = dpo_hinge_loss(LP_C, LP_R, REF_C, REF_R, beta=0.5)
    assert loss.item() == pytest.approx(0.0)
    # beta = 0.25: beta h = 0.5, max(0, 0.5) = 0.5; a reversed pair (h = -2): max(0, 1.5) = 1.5; mean 1.0
    lp_c, lp_r = torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -10.0])
    ref = torch.tensor([-11.0, -11.0])
    lp_c.requires_grad_(True)
    loss, m = dpo_hinge_loss(lp_c, lp_r, ref, ref, beta=0.25)
    assert loss.item() == pytest.approx(1.0)
    assert m["accuracy"] == 0.5 and m["rewards_chosen"] == pytest.approx(0.0)  # (0.25, -0.25) mean 0
    loss.backward()  # d/dlogp_c = -beta / B = -0.125 on both (both inside the hinge)
    torch.testing.assert_close(lp_c.grad, torch.tensor([-0.125, -0.125]))


def test_conservative_by_hand():
    # beta h = 1, eps = 0.1: 0.9 * -log sigmoid(1) + 0.1 * -log sigmoid(-1)
    #   = 0.9 * 0.31326 + 0.1 * 1.31326 = 0.28194 + 0.13133 = 0.41326 (= 0.31326 + eps * beta h)
    loss, m = dpo_conservative_loss(LP_C, LP_R, REF_C, REF_R, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.41326, abs=1e-5)
    assert m["margin"] == pytest.approx(1.0) and m["accuracy"] == 1.0
    # eps = 0 is the plain DPO loss
    plain, _ = dpo_sigmoid_loss(LP_C, LP_R, REF_C, REF_R, beta=0.5)
    zero, _ = dpo_conservative_loss(LP_C, LP_R, REF_C, REF_R, beta=0.5, label_smoothing=0.0)
    assert zero.item() == pytest.approx(plain.item(), abs=1e-7)


def test_conservative_minimum_is_at_a_finite_margin():
    # the loss in z = beta h is minimised where sigmoid(z) = 1 - eps: z* = log(0.9 / 0.1) = 2.1972;
    # there the gradient is 0, and beyond it the loss rises again
    z_star = math.log(0.9 / 0.1)
    gap = torch.tensor([z_star], requires_grad=True)  # beta = 1, refs 0, logp_r 0: h = logp_c
    loss, _ = dpo_conservative_loss(gap, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0, label_smoothing=0.1)
    loss.backward()
    assert gap.grad.item() == pytest.approx(0.0, abs=1e-6)
    further, _ = dpo_conservative_loss(
        torch.tensor([z_star + 3]), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0, label_smoothing=0.1
    )
    assert further.item() > loss.item()


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7, float("nan")])
def test_conservative_rejects_bad_epsilon(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_conservative_loss(LP_C, LP_R, REF_C, REF_R, beta=0.5, label_smoothing=eps)


def test_reference_free_by_hand():
    # refs taken as 0: h = logp_c - logp_r = -10 - (-12) = 2; beta = 0.5 -> -log sigmoid(1) = 0.3133
    # implicit rewards are beta * logp: chosen 0.5 * -10 = -5, rejected 0.5 * -12 = -6, margin 1
    loss, m = dpo_reference_free_loss(LP_C, LP_R, beta=0.5)
    assert loss.item() == pytest.approx(0.3133, abs=1e-4)
    assert m["rewards_chosen"] == pytest.approx(-5.0) and m["rewards_rejected"] == pytest.approx(-6.0)
    assert m["margin"] == pytest.approx(1.0) and m["accuracy"] == 1.0
    # it ignores a reference: any reference with equal log-probs on both responses gives the same loss
    with_ref, _ = dpo_sigmoid_loss(LP_C, LP_R, torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.5)
    assert with_ref.item() == pytest.approx(loss.item())


def test_stable_for_large_gaps():
    # h = +-400, beta = 0.5: -log sigmoid(200) ~ 0 and -log sigmoid(-200) = 200 (no inf / nan), mean 100
    lp_c, lp_r = torch.tensor([0.0, -400.0]), torch.tensor([-400.0, 0.0])
    zeros = torch.zeros(2)
    loss, _ = dpo_sigmoid_loss(lp_c, lp_r, zeros, zeros, beta=0.5)
    assert loss.item() == pytest.approx(100.0, abs=1e-4)


# --------------------------------------------------------------------------- IPO on per-token means (TRL's IPO)


def test_ipo_token_mean_by_hand():
    # chosen: logp -10 over 4 tokens, ref -12 -> log-ratio +2, per token +0.5
    # rejected: logp -15 over 2 tokens, ref -14 -> log-ratio -1, per token -0.5
    # h_bar = 0.5 - (-0.5) = 1; beta = 1: target 1/(2*1) = 0.5, loss (1 - 0.5)^2 = 0.25
    # (on the sums h = 2 - (-1) = 3 and dpo_ipo_loss gives (3 - 0.5)^2 = 6.25)
    lp_c, lp_r = torch.tensor([-10.0], requires_grad=True), torch.tensor([-15.0], requires_grad=True)
    ref_c, ref_r, n_c, n_r = torch.tensor([-12.0]), torch.tensor([-14.0]), torch.tensor([4]), torch.tensor([2])
    loss, m = dpo_ipo_token_mean_loss(lp_c, lp_r, ref_c, ref_r, n_c, n_r, beta=1.0)
    assert loss.item() == pytest.approx(0.25)
    assert dpo_ipo_loss(lp_c, lp_r, ref_c, ref_r, beta=1.0)[0].item() == pytest.approx(6.25)
    # gradient 2 (h_bar - 0.5) / n: on logp_c 2 * 0.5 / 4 = 0.25, on logp_r -2 * 0.5 / 2 = -0.5
    loss.backward()
    assert lp_c.grad.item() == pytest.approx(0.25) and lp_r.grad.item() == pytest.approx(-0.5)
    # the metrics are on the summed log-ratios, as every other variant's: rewards 1 * 2 and 1 * -1, margin 3
    assert m == {
        "loss": pytest.approx(0.25),
        "rewards_chosen": pytest.approx(2.0),
        "rewards_rejected": pytest.approx(-1.0),
        "margin": pytest.approx(3.0),
        "accuracy": 1.0,
    }


def test_ipo_token_mean_with_one_token_each_is_ipo():
    # n = 1 divides by 1: the summed form exactly; a count of 0 is taken as 1 (TRL's clamp), never a division by 0
    lp_c, lp_r = torch.tensor([-3.0, -7.0]), torch.tensor([-4.0, -2.0])
    ref_c, ref_r = torch.tensor([-3.5, -6.0]), torch.tensor([-4.5, -2.5])
    ones, zeros = torch.ones(2), torch.zeros(2)
    expected, _ = dpo_ipo_loss(lp_c, lp_r, ref_c, ref_r, beta=0.3)
    for n in (ones, zeros):
        loss, _ = dpo_ipo_token_mean_loss(lp_c, lp_r, ref_c, ref_r, n, n, beta=0.3)
        assert loss.item() == pytest.approx(expected.item())


def test_ipo_token_mean_matches_trl_on_random_tensors():
    # TRL's IPO written out from its source (trl/trainer/dpo_trainer.py), on per-token log-probs and completion masks,
    # chosen rows first; compared with the summed log-probs and token counts tether passes
    torch.manual_seed(0)
    B, T, beta = 6, 9, 0.1
    lengths = torch.randint(1, T + 1, (2 * B,))
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()  # (2B, T) completion_mask
    per_token_logps = -torch.rand(2 * B, T, dtype=torch.float64) * 3 * mask
    ref_per_token_logps = -torch.rand(2 * B, T, dtype=torch.float64) * 3 * mask

    # v0.29 and later (`compute_loss`, loss_type == "ipo"):
    #   chosen_scores = chosen_logps - ref_chosen_logps   (logps = per_token_logps.sum(dim=1))
    #   chosen_avg_score = chosen_scores / chosen_mask.sum(dim=1).clamp(min=1.0)   (rejected alike)
    #   per_sequence_loss = (chosen_avg_score - rejected_avg_score - 1 / (2 * self.beta)) ** 2;  loss = mean
    logps, ref_logps = per_token_logps.sum(1), ref_per_token_logps.sum(1)
    chosen_logps, rejected_logps = logps.chunk(2)
    ref_chosen_logps, ref_rejected_logps = ref_logps.chunk(2)
    chosen_mask, rejected_mask = mask.chunk(2)
    chosen_avg_score = (chosen_logps - ref_chosen_logps) / chosen_mask.sum(dim=1).clamp(min=1.0)
    rejected_avg_score = (rejected_logps - ref_rejected_logps) / rejected_mask.sum(dim=1).clamp(min=1.0)
    trl_new = ((chosen_avg_score - rejected_avg_score - 1 / (2 * beta)) ** 2).mean()
    # v0.7.11 to v0.28 (`concatenated_forward`: all_logps = all_logps / loss_mask.sum(-1) for policy and reference alike;
    # `dpo_loss`: logits = pi_logratios - ref_logratios, losses = (logits - 1 / (2 * self.beta)) ** 2)
    avg, ref_avg = logps / mask.sum(-1), ref_logps / mask.sum(-1)
    pi_logratios = avg[:B] - avg[B:]
    ref_logratios = ref_avg[:B] - ref_avg[B:]
    trl_old = ((pi_logratios - ref_logratios - 1 / (2 * beta)) ** 2).mean()

    n_c, n_r = lengths[:B], lengths[B:]
    loss, m = dpo_ipo_token_mean_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, n_c, n_r, beta=beta)
    assert loss.item() == pytest.approx(trl_new.item(), rel=1e-12)
    assert loss.item() == pytest.approx(trl_old.item(), rel=1e-12)
    # TRL's logged rewards from v0.29: beta * chosen_logratios (the sums)
    assert m["rewards_chosen"] == pytest.approx((beta * (chosen_logps - ref_chosen_logps)).mean().item())
    # and the lengths differ, so the per-token form is not the summed one
    assert loss.item() != pytest.approx(
        dpo_ipo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)[0].item()
    )
