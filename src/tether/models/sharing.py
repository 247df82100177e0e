"""One copy of the weights for several frozen models.

PPO holds four models: policy, reference, value and reward. With LoRA the reference is the
policy with its adapter off, so those two already share every base tensor. The reward model
usually starts from the same SFT weights, and with `freeze_layers` (or frozen embeddings)
a large part of it never moved in training: those tensors are equal, value for value, to the
base's. `share_equal_weights` finds them and points the reward model at the base's tensors,
so they are held once. The value adapter (`value_model=reward_adapter`) is a second module
tree over the reward model's tensors (`shallow_clone`) with its own LoRA adapter and head.

Sharing is only sound while the shared tensors stay frozen in both models: with LoRA the
base weights never receive gradients; with full fine-tuning the policy trains, so PPO shares
with the frozen reference instead.
"""

from __future__ import annotations

import copy

import torch

from tether.models.reward_model import trunk_of


def _owner(root: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """The module holding parameter `name` ('layers.0.mlp.up_proj.weight') and the attribute name."""
    path, _, attr = name.rpartition(".")
    return (root.get_submodule(path) if path else root), attr


@torch.no_grad()
def share_equal_weights(model: torch.nn.Module, base: torch.nn.Module) -> int:
    """Make every trunk parameter of `model` that equals `base`'s parameter of the same name
    (same shape, dtype, device and values) the very same tensor as `base`'s; returns the number
    of elements now shared.

    `model` and `base` may be different heads on one architecture (a sequence classifier and a
    causal LM): names are compared below each one's trunk (`model.layers.0...` -> `layers.0...`).
    Both must be frozen where they share; nothing here copies or changes a value.
    """
    target, source = trunk_of(model), dict(trunk_of(base).named_parameters())
    shared = 0
    for name, param in list(target.named_parameters()):
        other = source.get(name)
        if other is None or other is param or other.shape != param.shape or other.dtype != param.dtype or other.device != param.device:
            continue
        if torch.equal(other, param):
            module, attr = _owner(target, name)
            setattr(module, attr, other)
            shared += param.numel()
    return shared


def shallow_clone(model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree whose parameters are `model`'s own tensors (nothing is copied but the
    small buffers), so an adapter can be put on the clone without touching `model`."""
    memo = {id(p): p for p in model.parameters()}
    return copy.deepcopy(model, memo)


def unique_parameter_bytes(*models: torch.nn.Module) -> int:
    """Bytes of parameter storage held by these models together, each tensor counted once."""
    seen, total = set(), 0
    for m in models:
        for p in m.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total
