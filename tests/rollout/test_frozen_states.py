"""Passes that start above the frozen lower blocks from their recorded output (reuse_frozen_states) give the numbers
of a full pass: log-probs, the reference's log-probs and the gradients of the trained blocks."""

import pytest
import torch

from tether.config import LoraSettings
from tether.models.loading import adapter_off, apply_lora, freeze_lower_layers, load_causal_lm
from tether.rollout.logprobs import frozen_states, policy_forward, record_frozen, replays_exactly

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_policy(tiny_model_dir, n_frozen=1):
    torch.manual_seed(0)
    policy = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraSettings(enabled=True, r=4, alpha=8))
    freeze_lower_layers(policy, n_frozen)
    with torch.no_grad():  # a trained adapter above the frozen block: the policy differs from its reference
        for name, p in policy.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.normal_(0, 0.5)
    return policy.eval()


def batch(n=3, prompt=4, response=5, vocab=40):
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(3, vocab, (n, prompt + response), generator=g)
    attn = torch.ones_like(seqs)
    attn[0, :2] = 0  # a left-padded prompt
    return seqs, attn, prompt


def test_recorded_states_are_the_input_of_the_first_trained_block(tiny_model_dir):
    policy = lora_policy(tiny_model_dir)
    seqs, attn, _ = batch()
    seen = []
    hook = policy.base_model.model.model.layers[1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    policy(input_ids=seqs, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0))
    hook.remove()
    frozen = frozen_states(policy, seqs, attn, 1)
    assert frozen.first == 1 and frozen.states.shape == (3, seqs.shape[1], 32)
    torch.testing.assert_close(frozen.states, seen[0], rtol=0, atol=0)
    assert torch.equal(record_frozen(policy, seqs, attn, 1, chunk=2).states, frozen.states)  # in chunks: the same rows


def test_policy_and_reference_passes_from_recorded_states_equal_full_passes(tiny_model_dir):
    policy = lora_policy(tiny_model_dir)
    seqs, attn, P = batch()
    frozen = record_frozen(policy, seqs, attn, 1, chunk=3)
    with torch.no_grad():
        full = policy_forward(policy, seqs, attn, P, 0.7, with_entropy=True)
        replayed = policy_forward(policy, seqs, attn, P, 0.7, with_entropy=True, frozen=frozen)
        with adapter_off(policy):
            ref_full = policy_forward(policy, seqs, attn, P, 0.7)["logp"]
            ref_replayed = policy_forward(policy, seqs, attn, P, 0.7, frozen=frozen)["logp"]
    torch.testing.assert_close(replayed["logp"], full["logp"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(replayed["entropy"], full["entropy"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ref_replayed, ref_full, rtol=1e-6, atol=1e-6)
    assert (full["logp"] - ref_full).abs().max() > 1e-3  # the adapter does change the policy: not equal by being idle
    assert all(type(block).__name__ != "_Replay" for block in policy.base_model.model.model.layers)  # blocks put back


def test_gradients_from_recorded_states_equal_full_gradients(tiny_model_dir):
    policy = lora_policy(tiny_model_dir)
    seqs, attn, P = batch()
    frozen = record_frozen(policy, seqs, attn, 1, chunk=3)
    trained = [p for p in policy.parameters() if p.requires_grad]
    grads = []
    for f in (None, frozen[torch.tensor([2, 0])]):  # rows picked by index, as a minibatch does
        rows = torch.tensor([2, 0])
        policy.zero_grad()
        policy_forward(policy, seqs[rows], attn[rows], P, 1.0, frozen=f)["logp"].sum().backward()
        grads.append([p.grad.clone() for p in trained])
    assert sum(g.abs().sum() for g in grads[0]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_replay_check_finds_a_frozen_adapter_that_is_not_the_identity(tiny_model_dir):
    policy = lora_policy(tiny_model_dir)
    probe = torch.tensor([[5, 9, 12, 7, 3, 21]])
    assert replays_exactly(policy, probe, 1, with_adapter_off=True)
    with torch.no_grad():  # block 0's adapter moved: the policy's block 0 is no longer the reference's
        policy.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.normal_(0, 1.0)
    assert replays_exactly(policy, probe, 1)  # the policy's own passes still replay
    assert not replays_exactly(policy, probe, 1, with_adapter_off=True)


def test_blocks_keep_their_index_for_models_that_pick_attention_per_block():
    """Qwen2 with sliding-window attention on some blocks picks each block's mask by its index (config.layer_types)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=2,
        layer_types=["full_attention", "full_attention", "sliding_attention", "full_attention"],
    )
    model = Qwen2ForCausalLM(config).eval()
    seqs = torch.randint(3, 40, (2, 12))
    attn = torch.ones_like(seqs)
    frozen = frozen_states(model, seqs, attn, 2)
    with torch.no_grad():
        full = policy_forward(model, seqs, attn, 4, 1.0)["logp"]
        replayed = policy_forward(model, seqs, attn, 4, 1.0, frozen=frozen)["logp"]
    torch.testing.assert_close(replayed, full, rtol=1e-6, atol=1e-6)
