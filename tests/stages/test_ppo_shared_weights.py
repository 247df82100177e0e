"""Where PPO's models live. With one copy of the weights, sharing the reward model's frozen tensors
with the base changes no number, and the value adapter trains, checkpoints and resumes like any value
model. With placement=ray, the reward model and the reference in Ray actors change no number either, nor
does holding them in CPU memory (offload_frozen)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import PPOConfig, RewardConfig, load_config
from tether.stages.ppo import train_ppo
from tether.stages.reward import train_reward


def ppo(tiny_model_dir, tiny_data, rm, out, *extra):
    return train_ppo(
        load_config(
            PPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: model, path: '{rm}'}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={out}",
                "steps=3",
                "batch_size=4",
                "mini_batch_size=2",
                "precision=fp32",
                "save_every=0",
                "samples_every=0",
                "generation.max_new_tokens=8",
                "generation.batch_size=4",
                "optim.lr=3e-3",
                *extra,
            ],
        )
    )


def metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def drop_timing(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]


@pytest.mark.parametrize("lora", ["true", "false"])
def test_sharing_the_frozen_base_changes_no_number(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path, lora):
    # with LoRA the reward model shares the policy's frozen base; with full fine-tuning, the frozen reference
    shared = ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "shared", f"lora.enabled={lora}")
    apart = ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "apart", f"lora.enabled={lora}", "share_weights=false")
    emb = 400 * 32  # the tiny model's embeddings are frozen by freeze_layers and shared
    assert shared["reward_model_shared_params"] > emb and apart["reward_model_shared_params"] == 0
    assert shared["parameter_gb"] < apart["parameter_gb"]
    assert drop_timing(metrics(tmp_path / "shared")) == drop_timing(metrics(tmp_path / "apart"))
    a, b = (
        load_file(str(tmp_path / "shared" / "model" / "model.safetensors")),
        load_file(str(tmp_path / "apart" / "model" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(tmp_path / "shared")[-1]["rollout/kl"] != 0  # the policy did move, so the shared base was tested under training


def test_value_adapter_trains_and_resumes_bit_for_bit(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path):
    common = ["value_model=reward_adapter", "lora.r=4"]
    full = ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "a", *common)
    # policy adapter + value adapter + the value head copy are the only trainable weights
    assert 0 < full["trainable_params"] < full["total_params"] / 4
    rows = metrics(tmp_path / "a")
    assert rows[0]["train/value_loss"] > 0 and rows[-1]["rollout/kl"] != 0
    assert ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "b", *common, "interrupt_after=2") is None
    ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "b", *common)
    assert drop_timing(metrics(tmp_path / "b")) == drop_timing(rows)


@pytest.fixture(scope="module")
def lora_rm(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    """A reward model trained with LoRA from the policy's own weights (adapter kept beside the merged model)."""
    out = tmp_path_factory.mktemp("lora-rm")
    train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={tiny_data['prefs']}",
                f"output_dir={out}",
                "lora.enabled=true",
                "lora.r=4",
                "batch_size=4",
                "epochs=1",
                "precision=fp32",
                "optim.lr=1e-2",
            ],
        )
    )
    return out / "model"


def test_lora_reward_model_is_held_as_an_adapter_on_the_policy_base(tiny_model_dir, tiny_data, lora_rm, tmp_path):
    assert (lora_rm / "adapter" / "adapter_config.json").exists() and (lora_rm / "model.safetensors").exists()
    shared = ppo(tiny_model_dir, tiny_data, lora_rm, tmp_path / "shared", "steps=1")
    apart = ppo(tiny_model_dir, tiny_data, lora_rm, tmp_path / "apart", "steps=1", "share_weights=false")
    trunk = 31392  # every trunk weight of the tiny model: embeddings, 2 blocks, final norm
    assert shared["reward_model_shared_params"] == trunk
    saved = apart["parameter_gb"] - shared["parameter_gb"]
    assert saved * 1e9 >= 4 * (trunk - 2 * 4 * (32 + 64) * 7)  # a whole trunk, less at most the adapter it brings
    one, two = metrics(tmp_path / "shared")[0], metrics(tmp_path / "apart")[0]
    # the same rollout scored by base + adapter instead of the merged weights: equal up to rounding
    assert one["rollout/reward"] == pytest.approx(two["rollout/reward"], rel=1e-4, abs=1e-5)


def test_an_adapter_trained_on_other_weights_is_not_used(other_tiny_model_dir, lora_rm):
    from tether.models.loading import load_causal_lm
    from tether.models.reward_model import load_reward_model
    from tether.models.sharing import share_with_base

    other = load_causal_lm(str(other_tiny_model_dir)).requires_grad_(False)
    rm = load_reward_model(str(lora_rm))
    merged = rm.members[0].model
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    shared = share_with_base(rm, other, probe)
    assert rm.members[0].model is merged  # the probe disagreed, so the merged model stays
    assert shared < 31392 // 10  # at most a few equal tensors (norm gains) are shared


@pytest.mark.parametrize("value_model", ["policy_head", "reward_model"])
def test_activation_checkpointing_changes_no_number(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path, value_model):
    # recomputing block activations in the backward pass gives the same gradients, so the same run
    common = ["steps=2", f"value_model={value_model}", "lora.enabled=false"]
    ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "kept", *common, "micro_batch_size=2")
    ppo(
        tiny_model_dir,
        tiny_data,
        frozen_layer_rm,
        tmp_path / "recomputed",
        *common,
        "parallel.activation_checkpointing=true",
        "micro_batch_size=1",
    )
    kept, recomputed = drop_timing(metrics(tmp_path / "kept")), drop_timing(metrics(tmp_path / "recomputed"))
    assert [r["rollout/reward"] for r in kept] == pytest.approx([r["rollout/reward"] for r in recomputed], rel=1e-4)
    for key in ("train/policy_loss", "train/value_loss", "train/grad_norm"):
        assert [r[key] for r in kept] == pytest.approx([r[key] for r in recomputed], rel=1e-3, abs=1e-6), key
    a, b = (
        load_file(str(tmp_path / "kept" / "model" / "model.safetensors")),
        load_file(str(tmp_path / "recomputed" / "model" / "model.safetensors")),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_frozen_models_in_ray_actors_make_the_same_run(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path):
    # full fine-tuning: the reference is a frozen copy, so both it and the reward model go to actors (a local Ray instance)
    common = [
        "lora.enabled=false",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=2",
        "early_stop.limit=4",
        "early_stop.patience=0",
    ]
    remote = ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "ray", *common, "placement=ray")
    local = ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "local", *common, "share_weights=false")
    assert remote["parameter_gb"] < local["parameter_gb"] / 2  # this process holds the policy and its value head only
    rows_remote, rows_local = metrics(tmp_path / "ray"), metrics(tmp_path / "local")
    for key in ("rollout/reward", "rollout/kl", "train/policy_loss", "train/value_loss", "held_out/reward", "held_out/kl"):
        assert [r.get(key) for r in rows_remote] == pytest.approx([r.get(key) for r in rows_local], abs=1e-5), key
    assert rows_local[-1]["rollout/kl"] != 0 and rows_local[-1]["held_out/kl"] != 0  # the reference's numbers were used
    a, b = (
        load_file(str(tmp_path / "ray" / "model" / "model.safetensors")),
        load_file(str(tmp_path / "local" / "model" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)


def test_offloaded_frozen_models_make_the_same_run(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path):
    # full fine-tuning: the reference copy and the reward model held in CPU memory, brought in layer by layer
    common = [
        "lora.enabled=false",
        "share_weights=false",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=2",
        "early_stop.limit=4",
        "early_stop.patience=0",
    ]
    offloaded = ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "offloaded", *common, "offload_frozen=true")
    held = ppo(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path / "held", *common)
    assert held["offloaded_gb"] == 0 and offloaded["offloaded_gb"] > 0
    # on the device: the policy and its value head only
    assert offloaded["parameter_gb"] == pytest.approx(held["parameter_gb"] - offloaded["offloaded_gb"])
    assert drop_timing(metrics(tmp_path / "offloaded")) == drop_timing(metrics(tmp_path / "held"))
    assert metrics(tmp_path / "held")[-1]["rollout/kl"] != 0  # the reference's numbers were used
    a, b = (
        load_file(str(tmp_path / "offloaded" / "model" / "model.safetensors")),
        load_file(str(tmp_path / "held" / "model" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
