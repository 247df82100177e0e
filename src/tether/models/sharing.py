"""One copy of the weights for several frozen models.

PPO holds four models: policy, reference, value and reward. With LoRA the reference is the
policy with its adapter off, so those two already share every base tensor. The reward model
usually starts from the same SFT weights, and with `freeze_layers` (or frozen embeddings)
a large part of it never moved in training: those tensors are equal, value for value, to the
base's. `share_equal_weights` finds them and points the reward model at the base's tensors,
so they are held once. A reward model trained with LoRA keeps its adapter unmerged beside
the merged weights; `as_adapter_on` rebuilds it as the base's tensors plus that adapter and
its head, a third adapter on the one base. The value adapter (`value_model=reward_adapter`) is a second module
tree over the reward model's tensors (`shallow_clone`) with its own LoRA adapter and head.

Sharing is only sound while the shared tensors stay frozen in both models: with LoRA the
base weights never receive gradients; with full fine-tuning the policy trains, so PPO shares
with the frozen reference instead.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from tether.models.loading import trunk_of
from tether.models.reward_model import ADAPTER_DIR, raw_rewards


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


@torch.no_grad()
def as_adapter_on(model: torch.nn.Module, base: torch.nn.Module, adapter_dir: str | Path, probe: torch.Tensor) -> torch.nn.Module | None:
    """A LoRA-trained reward model rebuilt as `base`'s trunk tensors + its own adapter and head,
    so it costs an adapter, not a model. `model` is the merged reward model loaded from the
    same folder; the rebuilt one must score the token ids `probe` (B, T) as `model` does, else
    the adapter was trained on other base weights and None is returned (keep `model`)."""
    from peft import PeftModel

    rebuilt = shallow_clone(model)
    trunk, source = trunk_of(rebuilt), dict(trunk_of(base).named_parameters())
    for name, param in list(trunk.named_parameters()):
        other = source.get(name)
        if other is None or other.shape != param.shape or other.dtype != param.dtype:
            return None
        module, attr = _owner(trunk, name)
        setattr(module, attr, other)
    rebuilt = PeftModel.from_pretrained(rebuilt, str(adapter_dir)).eval().requires_grad_(False)  # frozen adapter
    mask = torch.ones_like(probe)
    same = torch.allclose(raw_rewards(rebuilt, probe, mask), raw_rewards(model, probe, mask), rtol=1e-4, atol=1e-4)
    return rebuilt if same else None


def share_with_base(reward_model, base: torch.nn.Module, probe: torch.Tensor, use_adapters: bool = True) -> int:
    """Hold each member of a loaded reward model (or ensemble) on `base`'s frozen weights where it
    can: as an adapter on `base` when it was trained with LoRA on these weights, else by sharing
    its tensors that equal `base`'s. Returns the number of reward-model parameters now shared."""
    shared = 0
    for member in reward_model.members:
        adapter = Path(member.path) / ADAPTER_DIR
        rebuilt = as_adapter_on(member.model, base, adapter, probe) if use_adapters and adapter.is_dir() else None
        if rebuilt is not None:
            member.model = rebuilt  # the merged copy is dropped
            shared += sum(p.numel() for p in trunk_of(base).parameters())
        else:
            shared += share_equal_weights(member.model, base)
    return shared


def shallow_clone(model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree whose parameters are `model`'s own tensors (nothing is copied but the
    small buffers), so an adapter can be put on the clone without touching `model`."""
    memo = {id(p): p for p in model.parameters()}
    return copy.deepcopy(model, memo)


def unique_parameter_bytes(*models: torch.nn.Module, offloaded: bool = False) -> int:
    """Bytes of parameter storage held by these models together on their device, each tensor counted once; with
    `offloaded`, the bytes of the weights held in CPU memory instead (offload_to_cpu leaves `meta` placeholders)."""
    if offloaded:
        return sum(getattr(sub, "offloaded_bytes", 0) for m in models for sub in m.modules())
    seen, total = set(), 0
    for m in models:
        for p in m.parameters():
            if not p.is_meta and p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total
