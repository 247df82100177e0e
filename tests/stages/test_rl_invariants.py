"""Invariants of the RL plumbing: KL 0 and ratio 1 at the start, padding never changes a number."""

import pytest
import torch

from tether.config import GenerationSettings, LoraSettings
from tether.losses import kl_k1, kl_k2, kl_k3, per_token_rewards, ppo_policy_loss
from tether.models.loading import apply_lora, load_causal_lm, load_tokenizer
from tether.models.reward_model import init_reward_model, raw_rewards
from tether.rollout.generate import generate
from tether.rollout.logprobs import policy_forward

PROMPTS = ["Name two primary colors.", "Write a haiku about autumn leaves and the cold wind in October."]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def rollout(lm):
    model, tok = lm
    return generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=10), seed=0, precision="fp32")


def test_generation_layout(rollout, lm):
    _, tok = lm
    assert rollout.prompt_mask[0, 0] == 0 and rollout.prompt_mask[1].all()  # the shorter prompt is left-padded
    for row in range(2):
        n = int(rollout.lengths[row])
        assert rollout.response_mask[row, :n].all() and not rollout.response_mask[row, n:].any()
        assert (rollout.response_ids[row, n:] == tok.pad_token_id).all()
        if rollout.finished[row]:
            assert rollout.response_ids[row, n - 1] == tok.eos_token_id


def test_generation_is_seeded(lm, rollout):
    model, tok = lm
    again = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=10), seed=0, precision="fp32")
    assert torch.equal(again.response_ids, rollout.response_ids)


def test_left_padding_does_not_change_logprobs(lm, rollout):
    """Position ids follow the attention mask, so a padded row scores exactly like the unpadded one."""
    model, _ = lm
    seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
    batched = policy_forward(model, seqs, attn, P, temperature=1.0)["logp"]
    pad = int((rollout.prompt_mask[0] == 0).sum())
    alone = policy_forward(model, seqs[:1, pad:], attn[:1, pad:], P - pad, temperature=1.0)["logp"]
    mask = rollout.response_mask[0].bool()
    torch.testing.assert_close(batched[0][mask], alone[0][mask], atol=1e-5, rtol=1e-5)


def test_reward_read_at_last_real_token_whatever_the_padding(tiny_model_dir, lm):
    _, tok = lm
    rm = init_reward_model(str(tiny_model_dir), tok.pad_token_id, seed=0).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    right = torch.cat([ids, torch.full((1, 3), tok.pad_token_id)], 1)
    left = torch.cat([torch.full((1, 3), tok.pad_token_id), ids], 1)
    mask_r = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    mask_l = mask_r.flip(-1)
    with torch.no_grad():
        r = [raw_rewards(rm, x, m) for x, m in [(ids, torch.ones_like(ids)), (right, mask_r), (left, mask_l)]]
    torch.testing.assert_close(r[1], r[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(r[2], r[0], atol=1e-5, rtol=0)


def test_fresh_lora_policy_equals_reference(tiny_model_dir, rollout):
    """At the start of PPO the adapter is zero: KL is 0 under every estimator and every ratio is 1."""
    policy = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraSettings(enabled=True, r=4)).eval()
    seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
    mask = rollout.response_mask.float()
    with torch.no_grad():
        logp = policy_forward(policy, seqs, attn, P, temperature=0.7)["logp"]
        with policy.disable_adapter():
            ref_logp = policy_forward(policy, seqs, attn, P, temperature=0.7)["logp"]
    for estimator in (kl_k1, kl_k2, kl_k3):
        assert (estimator(logp, ref_logp) * mask).abs().max().item() < 1e-6
    advantages = torch.randn_like(logp)
    loss, stats = ppo_policy_loss(logp, ref_logp, advantages, mask)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats["clipfrac"] == 0.0
    rewards, kl = per_token_rewards(torch.tensor([1.0, -2.0]), logp, ref_logp, mask, beta=0.1)
    assert kl.abs().max().item() < 1e-6
    assert rewards.sum(-1).tolist() == pytest.approx([1.0, -2.0], abs=1e-6)  # only the score remains


def test_temperature_divides_logits(lm, rollout):
    model, _ = lm
    seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
    with torch.no_grad():
        out = model(input_ids=seqs, attention_mask=attn).logits
        hot = policy_forward(model, seqs, attn, P, temperature=2.0)["logp"]
    # recompute by hand for the first response token of row 1 (no padding in that row)
    expected = torch.log_softmax(out[1, P - 1] / 2.0, -1)[seqs[1, P]]
    assert hot[1, 0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_reward_sequences_end_with_eos(rollout, lm):
    """The RM reads every response as text + EOS, as in its training data, finished or not."""
    _, tok = lm
    seqs, attn = rollout.sequences_for_reward(tok.eos_token_id, tok.pad_token_id)
    assert seqs.shape[1] == rollout.sequences.shape[1] + 1
    for row in range(seqs.shape[0]):
        last = int(attn[row].nonzero().max())
        assert seqs[row, last] == tok.eos_token_id
        n_real = int(rollout.attention_mask[row].sum()) + (0 if rollout.finished[row] else 1)
        assert int(attn[row].sum()) == n_real
