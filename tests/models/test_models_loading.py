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
