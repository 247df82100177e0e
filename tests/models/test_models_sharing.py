"""One copy of the weights: reward-model tensors equal to the frozen base are shared, nothing else
changes; a value adapter over the reward model's tensors leaves the reward model untouched."""

import torch

from tether.config import LoraSettings
from tether.models.loading import load_causal_lm, load_tokenizer, trunk_of
from tether.models.reward_model import RewardModel, RewardNormalization, init_reward_model, raw_rewards
from tether.models.sharing import shallow_clone, share_equal_weights, unique_parameter_bytes
from tether.stages.rl_parts import RewardModelValue, reward_adapter_value


def _batch(tok):
    enc = tok(["Name two primary colors. Red and blue.", "Why is the sky blue?"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _trained_top_block(tiny_model_dir):
    """A reward model from the base whose top block and final norm moved (as with freeze_layers=1)."""
    tok = load_tokenizer(str(tiny_model_dir))
    rm = init_reward_model(str(tiny_model_dir), tok.pad_token_id, seed=0).eval().requires_grad_(False)
    with torch.no_grad():
        for p in trunk_of(rm).layers[1].parameters():
            p.add_(0.01)
    return rm, tok


def test_only_equal_tensors_are_shared_and_rewards_do_not_change(tiny_model_dir):
    base = load_causal_lm(str(tiny_model_dir)).requires_grad_(False)
    rm, tok = _trained_top_block(tiny_model_dir)
    ids, mask = _batch(tok)
    before = raw_rewards(rm, ids, mask)
    bytes_before = unique_parameter_bytes(base, rm)

    shared = share_equal_weights(rm, base)

    trunk, base_trunk = trunk_of(rm), trunk_of(base)
    expected = sum(p.numel() for name, p in base_trunk.named_parameters() if not name.startswith("layers.1."))
    assert shared == expected  # embeddings, block 0 and the final norm; not the moved block
    assert trunk.embed_tokens.weight is base_trunk.embed_tokens.weight
    assert trunk.layers[0].mlp.up_proj.weight is base_trunk.layers[0].mlp.up_proj.weight
    assert trunk.layers[1].mlp.up_proj.weight is not base_trunk.layers[1].mlp.up_proj.weight
    assert torch.equal(raw_rewards(rm, ids, mask), before)  # sharing changes no value
    assert bytes_before - unique_parameter_bytes(base, rm) == 4 * shared  # fp32: those tensors are now held once
    assert share_equal_weights(rm, base) == 0  # already shared: nothing more to do


def test_different_values_are_never_shared(tiny_model_dir, other_tiny_model_dir):
    other = load_causal_lm(str(other_tiny_model_dir))
    rm, _ = _trained_top_block(tiny_model_dir)
    # another random init: only the RMSNorm gains still at their init of ones are equal
    # (block 0's two and the final one; block 1's moved): 3 x 32 values
    assert share_equal_weights(rm, other) == 3 * 32
    assert trunk_of(rm).norm.weight is trunk_of(other).norm.weight
    assert trunk_of(rm).embed_tokens.weight is not trunk_of(other).embed_tokens.weight
    assert trunk_of(rm).layers[0].self_attn.q_proj.weight is not trunk_of(other).layers[0].self_attn.q_proj.weight


def test_value_adapter_starts_as_the_reward_model_and_trains_without_touching_it(tiny_model_dir):
    rm, tok = _trained_top_block(tiny_model_dir)
    ids, mask = _batch(tok)
    norm = RewardNormalization(gain=2.0, bias=-1.0)
    member = RewardModel(rm, tok, norm, "tiny")
    rm_values = RewardModelValue(rm, norm)
    critic = reward_adapter_value(member, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        start = rm_values(ids, mask, 3)
        # on the reward model's normalised scale: the value before the last token of an unpadded
        # row is the score the reward model gives the row without that token
        row = ids[:1, : int(mask[0].sum())]
        ones = torch.ones_like(row)
        torch.testing.assert_close(rm_values(row, ones, 3)[0, -1], member.scores(row[:, :-1], ones[:, :-1])[0])
    torch.testing.assert_close(critic(ids, mask, 3), start)  # LoRA B = 0 and the head copied: the value is the RM's score

    trainable = [p for p in critic.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for p in rm.parameters())
    assert unique_parameter_bytes(rm, critic) - unique_parameter_bytes(rm) == sum(
        4 * p.numel() for p in trainable
    )  # only the adapter is new
    opt = torch.optim.SGD(trainable, lr=0.5)
    for _ in range(2):  # two steps: LoRA's B moves on the first, its product with A on the second
        critic(ids, mask, 3).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        assert not torch.allclose(critic(ids, mask, 3), start)  # the critic learnt
        assert torch.equal(rm_values(ids, mask, 3), start)  # the reward model did not move


def test_shallow_clone_shares_every_parameter(tiny_model_dir):
    rm, _ = _trained_top_block(tiny_model_dir)
    clone = shallow_clone(rm)
    assert clone is not rm and all(a is b for a, b in zip(clone.parameters(), rm.parameters()))
