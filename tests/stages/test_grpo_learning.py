"""GRPO and RLOO must solve a task with a known optimum on a tiny model; the stage's invariants."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import ConfigError, GRPOConfig, load_config
from tether.stages import grpo as grpo_stage
from tether.stages.grpo import train_grpo

FNS = Path(__file__).resolve().parent / "reward_fns.py"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)


def grpo(tiny_model_dir, prompts, out, fn, *extra):
    return train_grpo(
        load_config(
            GRPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: function, path: '{FNS}:{fn}'}}]",
                f"prompts={prompts}",
                f"output_dir={out}",
                "precision=fp32",
                "lora.enabled=false",
                "generation.max_new_tokens=8",
                "save_every=0",
                "samples_every=0",
                *extra,
            ],
        )
    )


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


LEARN = [
    "steps=16",
    "prompts_per_step=4",
    "group_size=8",
    "mini_batch_size=32",
    "micro_batch_size=32",
    "optim.lr=3e-2",
    "optim.schedule=constant",
    "beta=0.001",
]


@pytest.mark.parametrize("advantage", ["grpo", "rloo", "reinforce"])
def test_learns_to_fill_the_answer_with_e(tiny_model_dir, tiny_data, tmp_path, advantage):
    # e_count: min(#'e', 8) / 8 over 8 new tokens; a random 2-layer model scores ~0.1, the optimum is 1.0 (eight tokens
    # that each hold an 'e'). 16 iterations of 32 samples, one on-policy optimizer step each, must come close to it
    # (four seeds of each reached 0.92-1.0 after 14), with a finite KL
    grpo(tiny_model_dir, tiny_data["prompts"], tmp_path / "g", "e_count", *LEARN, f"advantage={advantage}")
    r = rows(tmp_path / "g")
    first = sum(x["rollout/reward"] for x in r[:3]) / 3
    last = sum(x["rollout/reward"] for x in r[-3:]) / 3
    assert first < 0.15 and last > 0.85, (first, last)
    trained = [x for x in r if x["rollout/samples_trained"] > 0]  # once solved, every group scores 1 and is dropped
    assert len(trained) >= 10
    assert all(x["rollout/kl"] is not None and 0 <= x["rollout/kl"] < 200 for x in trained[1:])
    assert all(x["train/clipfrac"] == 0.0 and x["train/ratio_max"] == 1.0 for x in trained)  # on-policy: ratio 1 by construction


def test_first_pass_ratio_is_one(tiny_model_dir, tiny_data, tmp_path):
    # lr 0: the policy never moves, so pi / pi_old must be 1 in every update although pi_old came from a separate
    # scoring pass over other micro-batches (3) than the update's shuffled ones (2), after the padding was trimmed
    grpo(
        tiny_model_dir,
        tiny_data["prompts"],
        tmp_path / "g",
        "letter_e",
        "steps=2",
        "mini_batch_size=8",
        "iterations=2",
        "micro_batch_size=3",
        "optim.lr=0",
        "beta=0",
        "dynamic_sampling=false",
    )
    for x in rows(tmp_path / "g"):
        assert x["train/clipfrac"] == 0.0 and x["train/ratio_max"] == pytest.approx(1.0, abs=1e-5)
        assert x["train/approx_kl"] < 1e-10
    # the same with a learning rate: the second pass (and the second minibatch) sees a moved policy
    grpo(
        tiny_model_dir,
        tiny_data["prompts"],
        tmp_path / "h",
        "letter_e",
        "steps=2",
        "mini_batch_size=8",
        "iterations=2",
        "micro_batch_size=3",
        "optim.lr=5e-2",
        "beta=0",
        "dynamic_sampling=false",
    )
    assert max(x["train/ratio_max"] for x in rows(tmp_path / "h")) > 1.01


def count_loads(monkeypatch):
    calls = []
    real, real_frozen = grpo_stage.load_causal_lm, grpo_stage.load_frozen_lm  # the policy; a frozen reference copy
    monkeypatch.setattr(grpo_stage, "load_causal_lm", lambda path: calls.append(path) or real(path))
    monkeypatch.setattr(grpo_stage, "load_frozen_lm", lambda path, offload=False: calls.append(path) or real_frozen(path, offload))
    return calls


@pytest.mark.parametrize("lora,beta,loads,kind", [(False, 0.0, 1, "none"), (False, 0.1, 2, "copy"), (True, 0.1, 1, "adapter_off")])
def test_reference_loaded_only_when_needed(tiny_model_dir, tiny_data, tmp_path, monkeypatch, lora, beta, loads, kind):
    calls = count_loads(monkeypatch)
    s = grpo(
        tiny_model_dir,
        tiny_data["prompts"],
        tmp_path / "g",
        "letter_e",
        "steps=1",
        "group_size=2",
        "mini_batch_size=8",
        f"beta={beta}",
        f"lora.enabled={str(lora).lower()}",
        "lora.r=1",
    )
    assert len(calls) == loads and s["reference"] == kind
    one_model = sum(t.numel() * t.element_size() for t in load_file(str(tiny_model_dir / "model.safetensors")).values()) / 1e9
    if lora:  # the base once, plus rank-1 adapters
        assert one_model < s["parameter_gb"] < 1.2 * one_model
    else:
        assert s["parameter_gb"] == pytest.approx(one_model * (2 if kind == "copy" else 1), rel=1e-6)
    kl = rows(tmp_path / "g")[0]["rollout/kl"]
    assert (kl is None) == (beta == 0)


@pytest.fixture
def half_fixed_prompts(tiny_data, tmp_path):
    # 12 prompts, 4 of them marked {"fixed": true}: the reward function scores every answer to those 1.0
    qs = [json.loads(x)["prompt"] for x in tiny_data["prompts"].read_text().splitlines()]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "meta": {"fixed": i % 3 == 0}}) + "\n" for i, q in enumerate(qs)))
    return path


@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_sampling_drops_groups_of_equal_rewards(tiny_model_dir, half_fixed_prompts, tmp_path, dynamic):
    # every batch holds all 12 prompts (4 fixed): dynamic sampling drops exactly those 4 groups and trains on 8 x 4 samples
    grpo(
        tiny_model_dir,
        half_fixed_prompts,
        tmp_path / "g",
        "hash_unless_fixed",
        "steps=2",
        "prompts_per_step=12",
        "group_size=4",
        "mini_batch_size=48",
        "beta=0",
        f"dynamic_sampling={str(dynamic).lower()}",
        "samples_every=1",
    )
    for x in rows(tmp_path / "g"):
        assert x["rollout/groups_equal"] == 4
        assert x["rollout/groups_dropped"] == (4 if dynamic else 0)
        assert x["rollout/samples_trained"] == (32 if dynamic else 48)
    samples = [json.loads(x) for x in (tmp_path / "g" / "samples.jsonl").read_text().splitlines()]
    fixed = [s for s in samples if s["reward"] == 1.0]
    assert len(fixed) >= 2 * 4 * 4  # the fixed groups of both steps (a letter_e score of exactly 1.0 would add to them)
    assert all(s["advantage"] is None for s in fixed) if dynamic else all(s["advantage"] == 0.0 for s in fixed)


@pytest.mark.parametrize("scale", ["batch", "group", "none"])
def test_scale_rewards_divides_by_the_batch_or_group_std(tiny_model_dir, half_fixed_prompts, tmp_path, scale):
    # the step's samples.jsonl rows give every kept sample's reward, group and advantage: recompute the advantages as
    # TRL's scale_rewards does, r - group mean divided by the std (Bessel) of the whole batch's kept rewards ('batch'),
    # of the group's ('group') or by nothing ('none'), eps 1e-4; dynamic sampling has dropped the 4 groups of 1.0s
    grpo(
        tiny_model_dir,
        half_fixed_prompts,
        tmp_path / "g",
        "hash_unless_fixed",
        "steps=1",
        "prompts_per_step=12",
        "group_size=4",
        "mini_batch_size=48",
        "beta=0",
        "samples_every=1",
        f"scale_rewards={scale}",
    )
    kept = [json.loads(x) for x in (tmp_path / "g" / "samples.jsonl").read_text().splitlines()]
    kept = [x for x in kept if x["advantage"] is not None]
    assert len(kept) == 8 * 4
    r = torch.tensor([x["reward"] for x in kept], dtype=torch.float64).view(8, 4)  # (groups, G), rows in group order
    centred = r - r.mean(1, keepdim=True)
    expected = {"batch": centred / (r.flatten().std() + 1e-4), "group": centred / (r.std(1, keepdim=True) + 1e-4), "none": centred}[scale]
    if scale == "batch":  # the rewards' spread differs between groups, so the two scalings differ here
        assert not torch.allclose(expected, centred / (r.std(1, keepdim=True) + 1e-4), rtol=1e-3)
    got = torch.tensor([x["advantage"] for x in kept], dtype=torch.float64).view(8, 4)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_all_groups_equal_means_no_update(tiny_model_dir, tiny_data, tmp_path):
    s = grpo(tiny_model_dir, tiny_data["prompts"], tmp_path / "g", "constant", "steps=2", "beta=0", "optim.lr=1e-2")
    assert s["groups_dropped"] == 2 * 4
    r = rows(tmp_path / "g")
    assert all(x["rollout/samples_trained"] == 0 and "train/loss" not in x for x in r)
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(tmp_path / "g" / "model" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reinforce_moving_average_resumes_bit_for_bit(tiny_model_dir, tiny_data, tmp_path):
    common = [
        "steps=4",
        "advantage=reinforce",
        "baseline=moving_average",
        "group_size=2",
        "mini_batch_size=4",
        "dynamic_sampling=false",
        "lora.enabled=true",
        "beta=0.01",
        "early_stop.prompts=" + str(tiny_data["prompts"]),
        "early_stop.every=2",
        "early_stop.limit=4",
        "early_stop.patience=0",
    ]
    full = grpo(tiny_model_dir, tiny_data["prompts"], tmp_path / "a", "letter_e", *common)
    assert grpo(tiny_model_dir, tiny_data["prompts"], tmp_path / "b", "letter_e", *common, "interrupt_after=2") is None
    resumed = grpo(tiny_model_dir, tiny_data["prompts"], tmp_path / "b", "letter_e", *common)
    assert resumed["held_out"] == full["held_out"] and full["held_out"]["initial_reward"] is not None
    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [x["rollout/baseline"] for x in ra] == [x["rollout/baseline"] for x in rb]
    assert [x["rollout/reward"] for x in ra] == [x["rollout/reward"] for x in rb]
    assert all(x["held_out/kl"] is not None for x in ra if "held_out/reward" in x)


def test_held_out_check_reports_each_source(tiny_model_dir, tiny_data, tmp_path):
    # two sources: the held-out reward is their weighted sum, and each source's own mean is logged beside it
    s = train_grpo(
        load_config(
            GRPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: function, path: '{FNS}:e_count'}}, {{type: function, path: '{FNS}:constant', weight: 0.5}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path / 'g'}",
                "precision=fp32",
                "generation.max_new_tokens=8",
                "save_every=0",
                "steps=2",
                "group_size=2",
                "mini_batch_size=8",
                "beta=0",
                f"early_stop.prompts={tiny_data['prompts']}",
                "early_stop.every=1",
                "early_stop.limit=6",
                "early_stop.patience=0",
            ],
        )
    )
    checks = [x for x in rows(tmp_path / "g") if "held_out/reward" in x]
    assert len(checks) == 2
    for x in checks:
        assert x["held_out/reward/function:constant"] == 1.0
        assert x["held_out/reward"] == pytest.approx(x["held_out/reward/function:e_count"] + 0.5)
        assert x["held_out/kl"] is not None  # LoRA: the reference is the adapter switched off, even with beta = 0
        assert isinstance(x["held_out/gold"], float)  # the gold scorer beside the proxy: `tether eval overopt` reads both
    initial, last = s["held_out"]["initial"], s["held_out"]["last"]
    assert initial["reward/function:constant"] == 1.0 and last["step"] == 2 and last["reward"] == checks[-1]["held_out/reward"]


def test_time_budget_stops_grpo_too(tiny_model_dir, tiny_data, tmp_path):
    s = grpo(
        tiny_model_dir,
        tiny_data["prompts"],
        tmp_path / "g",
        "letter_e",
        "steps=4",
        "group_size=2",
        "mini_batch_size=4",
        "early_stop.max_minutes=0.0001",
    )  # no held-out prompts: the budget looks one step ahead
    assert s["steps_done"] == 1 and s["stopped_early"].startswith("step 2 would end at")


def test_config_errors():
    base = [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]"]
    with pytest.raises(ConfigError, match="set reward"):
        load_config(GRPOConfig, None, [])
    with pytest.raises(ConfigError, match="group_size must be at least 2"):
        load_config(GRPOConfig, None, [*base, "group_size=1", "dynamic_sampling=false"])
    with pytest.raises(ConfigError, match="multiple of mini_batch_size"):
        load_config(GRPOConfig, None, [*base, "mini_batch_size=5"])
    with pytest.raises(ConfigError, match="needs a reference"):
        load_config(GRPOConfig, None, [*base, "beta=0", "lora.enabled=false", "early_stop.max_kl=5"])
    with pytest.raises(ConfigError, match="std_coef applies to a reward-model ensemble"):
        load_config(GRPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:letter_e', std_coef: 1}}]"])
    cfg = load_config(GRPOConfig, None, [*base, "advantage=reinforce", "group_size=1", "dynamic_sampling=false", "mini_batch_size=4"])
    assert cfg.batch_size == 4


def test_reward_model_and_reference_in_ray_actors_make_the_same_run(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path):
    # placement=ray: the model source and the full-FT reference in actors (a local Ray instance); the function source stays
    common = [
        f"policy={tiny_model_dir}",
        f"reward=[{{type: model, path: '{frozen_layer_rm}'}}, {{type: function, path: '{FNS}:e_count', weight: 0.5}}]",
        f"prompts={tiny_data['prompts']}",
        "precision=fp32",
        "generation.max_new_tokens=8",
        "save_every=0",
        "steps=2",
        "group_size=2",
        "mini_batch_size=4",
        "lora.enabled=false",
        "beta=0.05",
        "optim.lr=1e-3",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=1",
        "early_stop.limit=4",
        "early_stop.patience=0",
    ]
    remote = train_grpo(load_config(GRPOConfig, None, [*common, f"output_dir={tmp_path / 'ray'}", "placement=ray"]))
    local = train_grpo(load_config(GRPOConfig, None, [*common, f"output_dir={tmp_path / 'local'}"]))
    assert remote["reference"] == "ray_actor" and local["reference"] == "copy" and remote["parameter_gb"] < local["parameter_gb"]
    a, b = rows(tmp_path / "ray"), rows(tmp_path / "local")
    for key in (
        "rollout/reward",
        "rollout/reward/model:model",
        "rollout/kl",
        "train/loss",
        "held_out/reward",
        "held_out/reward/model:model",
        "held_out/kl",
    ):
        assert [r.get(key) for r in a] == pytest.approx([r.get(key) for r in b], abs=1e-5), key
    assert b[-1]["rollout/kl"] != 0 and len({r["rollout/reward/model:model"] for r in b}) > 1  # both models' numbers were used
    wa, wb = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("ray", "local"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)


def test_offloaded_reward_model_and_reference_make_the_same_run(tiny_model_dir, tiny_data, frozen_layer_rm, tmp_path):
    # offload_frozen: the model source and the full-FT reference in CPU memory, brought in layer by layer
    common = [
        f"policy={tiny_model_dir}",
        f"reward=[{{type: model, path: '{frozen_layer_rm}'}}]",
        f"prompts={tiny_data['prompts']}",
        "precision=fp32",
        "generation.max_new_tokens=8",
        "save_every=0",
        "steps=2",
        "group_size=2",
        "mini_batch_size=4",
        "lora.enabled=false",
        "beta=0.05",
        "optim.lr=1e-3",
    ]
    offloaded = train_grpo(load_config(GRPOConfig, None, [*common, f"output_dir={tmp_path / 'offloaded'}", "offload_frozen=true"]))
    held = train_grpo(load_config(GRPOConfig, None, [*common, f"output_dir={tmp_path / 'held'}"]))
    assert held["offloaded_gb"] == 0 and offloaded["offloaded_gb"] == pytest.approx(held["parameter_gb"] / 2)  # the reference copy
    a, b = rows(tmp_path / "offloaded"), rows(tmp_path / "held")
    assert [{k: v for k, v in r.items() if not k.startswith("time")} for r in a] == [
        {k: v for k, v in r.items() if not k.startswith("time")} for r in b
    ]
    assert b[-1]["rollout/kl"] != 0
