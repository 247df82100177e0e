"""Activation checkpointing through a LoRA wrapper: blocks really are recomputed in the backward pass."""

import torch

from tether.config import LoraSettings
from tether.models.loading import apply_lora, enable_activation_checkpointing, load_causal_lm


def _block_calls(model, train: bool) -> int:
    calls = []
    mlp = model.get_base_model().model.layers[0].mlp  # runs inside the checkpointed block forward
    forward = mlp.forward
    mlp.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]  # counted even in the recompute (hooks are not)
    model.train(train)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model(input_ids=ids, use_cache=False).logits.sum().backward()
    del mlp.forward
    return len(calls)


def test_blocks_are_recomputed_in_the_backward_pass_only_when_on_and_training(tiny_model_dir):
    model = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraSettings(enabled=True, r=4))
    assert _block_calls(model, train=True) == 1
    enable_activation_checkpointing(model)
    assert _block_calls(model, train=True) == 2  # once forward, once recomputed for the backward
    assert _block_calls(model, train=False) == 1  # eval mode (scoring, generation): no recomputation


def test_an_offloaded_frozen_model_holds_no_weights_on_the_device_and_gives_the_same_outputs(tiny_model_dir, tiny_data, tmp_path):
    from tether.config import RewardConfig, load_config
    from tether.models.loading import is_offloaded, load_frozen_lm
    from tether.models.reward_model import load_reward_model
    from tether.models.sharing import unique_parameter_bytes
    from tether.stages.reward import train_reward

    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    plain, offloaded = load_frozen_lm(str(tiny_model_dir)), load_frozen_lm(str(tiny_model_dir), offload=True)
    assert not is_offloaded(plain) and is_offloaded(offloaded)
    # every parameter is a placeholder: the weights live in the hooks' CPU copy, brought in layer by layer
    assert unique_parameter_bytes(offloaded) == 0
    assert unique_parameter_bytes(offloaded, offloaded=True) == unique_parameter_bytes(plain) > 0
    with torch.no_grad():
        torch.testing.assert_close(
            offloaded(input_ids=ids, attention_mask=mask).logits, plain(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0
        )

    out = tmp_path / "rm"
    train_reward(
        load_config(
            RewardConfig,
            None,
            [f"model={tiny_model_dir}", f"data={tiny_data['prefs']}", f"output_dir={out}", "batch_size=4", "epochs=1", "precision=fp32"],
        )
    )
    rm, rm_off = load_reward_model(str(out / "model")), load_reward_model(str(out / "model"), offload=True)
    assert is_offloaded(rm_off.members[0].model) and not is_offloaded(rm.members[0].model)
    torch.testing.assert_close(rm_off.scores(ids, mask), rm.scores(ids, mask), rtol=0, atol=0)
