"""Data parallelism with 2 processes on the CPU (gloo), as `tether <stage> --num-processes 2` runs it.

SFT, reward and DPO: 2 processes with grad_accum 1 make exactly the update 1 process makes with
grad_accum 2 (the same window, the gradients summed). PPO and GRPO sample different episodes in
each process, so they are checked for what must hold: they run, resume, stay in step (the stage
raises if the processes' weights differ) and write one set of outputs.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import DPOConfig, RewardConfig, SFTConfig, load_config
from tether.stages.dpo import run_dpo
from tether.stages.reward import train_reward
from tether.stages.sft import train_sft
from tether.training import index_stream

HERE = Path(__file__).resolve().parent
FNS = HERE / "stages" / "reward_fns.py"
pytestmark = pytest.mark.usefixtures("one_thread")


def launch(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Equal weights, up to float rounding (the sums are added in another order; sharded ones also rescaled: 1e-5)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# accelerate launch --use_deepspeed --zero_stage 2 --offload_optimizer_device cpu sets these in each process (tether runs it with FSDP2)
DEEPSPEED_ZERO2_OFFLOAD = {
    "ACCELERATE_USE_DEEPSPEED": "true",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
}


@pytest.mark.parametrize(
    "fsdp, env, sharding",
    [
        ([], None, None),
        (["parallel.fsdp=true"], None, {"zero_stage": 3, "offload_trainable": False}),
        (["parallel.fsdp=true", "parallel.zero_stage=2"], None, {"zero_stage": 2, "offload_trainable": False}),
        ([], DEEPSPEED_ZERO2_OFFLOAD, {"zero_stage": 2, "offload_trainable": True}),
    ],
    ids=["replicated", "zero3", "zero2", "deepspeed_zero2_offload_launch"],
)
def test_sft_two_processes_make_the_update_of_one_with_double_accumulation(tiny_model_dir, tiny_data, tmp_path, fsdp, env, sharding):
    common = [
        f"model={tiny_model_dir}",
        f"data={tiny_data['demos']}",
        "precision=fp32",
        "optim.lr=1e-2",
        "optim.warmup_ratio=0.0",
        "max_steps=3",
        "batch_size=2",
        "eval_fraction=0.25",
        "lora.enabled=false",
    ]
    train_sft(load_config(SFTConfig, None, [*common, f"output_dir={tmp_path / 'one'}", "grad_accum=2"]))
    result = launch("-m", "tether", "sft", "--num-processes", "2", *common, f"output_dir={tmp_path / 'two'}", *fsdp, env=env)
    assert json.loads(result.stdout)["stage"] == "sft"  # one summary, from the main process
    assert summary(tmp_path / "two")["sharding"] == sharding and summary(tmp_path / "two")["processes"] == 2
    if env:
        assert (
            "asked for DeepSpeed ZeRO stage 2 with CPU offload; tether runs it with FSDP2 as parallel.fsdp=true parallel.zero_stage=2 parallel.offload_trainable=true"
            in " ".join(result.stderr.split())
        )
    assert_same_weights(tmp_path / "one", tmp_path / "two", atol=1e-5 if sharding else 1e-6)
    assert weights(tmp_path / "two").keys() and summary(tmp_path / "two")["eval_loss"] == pytest.approx(
        summary(tmp_path / "one")["eval_loss"], abs=1e-6
    )
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r.get("train/loss") for r in two] == pytest.approx([r.get("train/loss") for r in one], abs=1e-6)  # reduced over both
    # Adam's steps hardly change with a gradient off by a constant factor (the processes' gradients averaged, not summed):
    # the pre-clip norm shows it directly
    norms = [[r["train/grad_norm"] for r in rows if "train/grad_norm" in r] for rows in (one, two)]
    assert len(norms[0]) == 3 and norms[1] == pytest.approx(norms[0], rel=1e-4)
    assert [r.get("train/tokens") for r in two] == [r.get("train/tokens") for r in one]


@pytest.fixture(scope="module")
def worker_runs(tiny_model_dir, tiny_data, tmp_path_factory):
    """One 2-process launch runs reward, DPO, PPO (interrupted, then resumed) and GRPO; returns its folder."""
    root = tmp_path_factory.mktemp("distributed")
    qs = [json.loads(x)["prompt"] for x in tiny_data["prompts"].read_text().splitlines()]
    fixed = root / "half_fixed.jsonl"  # a third of the prompts get equal rewards: some groups are dropped in one process only
    fixed.write_text("".join(json.dumps({"prompt": q, "meta": {"fixed": i % 3 == 0}}) + "\n" for i, q in enumerate(qs)))
    gen = ["generation.max_new_tokens=6", "generation.batch_size=4"]
    ppo_common = [
        f"policy={tiny_model_dir}",
        f"reward=[{{type: model, path: '{root / 'reward' / 'model'}'}}]",
        f"prompts={tiny_data['prompts']}",
        "steps=4",
        "batch_size=4",
        "mini_batch_size=2",
        "save_every=0",
        *gen,
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=2",
        "early_stop.patience=0",
        "samples_every=1",
    ]
    ppo = [*ppo_common, f"output_dir={root / 'ppo'}"]
    ppo_full = [*ppo_common, "lora.enabled=false", "precision=fp32", "optim.lr=1e-3", "early_stop.max_kl=1e9"]
    grpo = [
        f"policy={tiny_model_dir}",
        f"reward=[{{type: function, path: '{FNS}:hash_unless_fixed'}}]",
        f"prompts={fixed}",
        "precision=fp32",
        "lora.enabled=false",
        "steps=4",
        "prompts_per_step=1",
        "group_size=4",
        "mini_batch_size=2",
        "micro_batch_size=1",
        "beta=0.01",
        "save_every=0",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=2",
        "early_stop.patience=0",
        *gen,
    ]
    stages = {
        "reward": [*reward_common(tiny_model_dir, tiny_data), f"output_dir={root / 'reward'}"],
        "reward_fsdp": [
            *reward_common(tiny_model_dir, tiny_data),
            *FSDP,
            "max_tokens_per_forward=50",
            f"output_dir={root / 'reward_fsdp'}",
        ],
        "dpo": [*dpo_common(tiny_model_dir, tiny_data), f"output_dir={root / 'dpo'}"],
        "dpo_fsdp_interrupted": [*dpo_common(tiny_model_dir, tiny_data), *FSDP, f"output_dir={root / 'dpo_fsdp'}", "interrupt_after=2"],
        "dpo_fsdp": [*dpo_common(tiny_model_dir, tiny_data), *FSDP, f"output_dir={root / 'dpo_fsdp'}"],
        "ppo_interrupted": [*ppo, "interrupt_after=2"],
        "ppo": ppo,
        "ppo_full": [*ppo_full, f"output_dir={root / 'ppo_full'}"],
        "ppo_fsdp_interrupted": [*ppo_full, *FSDP, f"output_dir={root / 'ppo_fsdp'}", "interrupt_after=2"],
        "ppo_fsdp": [*ppo_full, *FSDP, f"output_dir={root / 'ppo_fsdp'}"],
        "ppo_fsdpzero2": [*ppo_full, *FSDP, "parallel.zero_stage=2", f"output_dir={root / 'ppo_zero2'}"],
        "ppo_fsdpoffload": [*ppo_full, *FSDP, "parallel.offload_trainable=true", f"output_dir={root / 'ppo_offload'}"],
        "grpo": [*grpo, f"output_dir={root / 'grpo'}"],
        "grpo_fsdp_interrupted": [*grpo, *FSDP, f"output_dir={root / 'grpo_fsdp'}", "interrupt_after=2"],
        "grpo_fsdp": [*grpo, *FSDP, f"output_dir={root / 'grpo_fsdp'}"],
    }
    launch("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE / "distributed_worker.py"), json.dumps(stages))
    return root


FSDP = ["parallel.fsdp=true", "lora.enabled=false", "save_every=0"]


def reward_common(tiny_model_dir, tiny_data):
    return [
        f"model={tiny_model_dir}",
        f"data={tiny_data['prefs']}",
        "precision=fp32",
        "max_steps=3",
        "batch_size=2",
        "eval_fraction=0.25",
        "optim.lr=1e-2",
    ]


def dpo_common(tiny_model_dir, tiny_data):
    return [
        f"policy={tiny_model_dir}",
        f"data={tiny_data['prefs']}",
        "precision=fp32",
        "max_steps=3",
        "batch_size=2",
        "eval_fraction=0.25",
        "optim.lr=1e-2",
        "precompute_reference=true",
    ]


def test_reward_two_processes_make_the_update_of_one_with_double_accumulation(worker_runs, tiny_model_dir, tiny_data, tmp_path):
    train_reward(load_config(RewardConfig, None, [*reward_common(tiny_model_dir, tiny_data), f"output_dir={tmp_path}", "grad_accum=2"]))
    assert_same_weights(tmp_path, worker_runs / "reward")
    assert summary(worker_runs / "reward")["eval_loss"] == pytest.approx(summary(tmp_path)["eval_loss"], abs=1e-6)
    assert [r.get("train/loss") for r in metrics(worker_runs / "reward")] == pytest.approx(
        [r.get("train/loss") for r in metrics(tmp_path)], abs=1e-6
    )


def test_reward_sharded_two_processes_make_the_update_of_one_with_double_accumulation(worker_runs, tiny_model_dir, tiny_data, tmp_path):
    # FSDP, and micro-batches cut by a token budget: at step 3 the two windows are cut into 2 and 1 pieces, so one
    # process has a piece fewer and runs an extra pass that adds nothing (a sharded block needs both to run it)
    train_reward(
        load_config(
            RewardConfig,
            None,
            [
                *reward_common(tiny_model_dir, tiny_data),
                "lora.enabled=false",
                "max_tokens_per_forward=50",
                f"output_dir={tmp_path}",
                "grad_accum=2",
            ],
        )
    )
    assert_same_weights(tmp_path, worker_runs / "reward_fsdp", atol=1e-5)
    assert summary(worker_runs / "reward_fsdp")["eval_loss"] == pytest.approx(summary(tmp_path)["eval_loss"], abs=1e-6)


def test_dpo_two_processes_make_the_update_of_one_with_double_accumulation(worker_runs, tiny_model_dir, tiny_data, tmp_path):
    run_dpo(load_config(DPOConfig, None, [*dpo_common(tiny_model_dir, tiny_data), f"output_dir={tmp_path}", "grad_accum=2"]))
    assert_same_weights(tmp_path, worker_runs / "dpo")
    one, two = summary(tmp_path), summary(worker_runs / "dpo")
    for key in ("eval_loss", "eval_accuracy", "eval_margin"):  # the held-out evaluation, split between the processes
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_dpo_sharded_two_processes_interrupted_and_resumed_make_the_same_updates(worker_runs, tiny_model_dir, tiny_data, tmp_path):
    # FSDP: each block's weights, gradients and Adam moments split in two; the checkpoint holds them whole
    run_dpo(
        load_config(
            DPOConfig, None, [*dpo_common(tiny_model_dir, tiny_data), "lora.enabled=false", f"output_dir={tmp_path}", "grad_accum=2"]
        )
    )
    assert_same_weights(tmp_path, worker_runs / "dpo_fsdp", atol=1e-5)
    assert summary(worker_runs / "dpo_fsdp")["eval_loss"] == pytest.approx(summary(tmp_path)["eval_loss"], abs=1e-6)


def test_ppo_two_processes_run_resume_and_write_one_set_of_outputs(worker_runs):
    run = worker_runs / "ppo"
    s = summary(run)
    assert s["processes"] == 2 and s["episodes"] == 4 * 4 * 2 and s["steps_done"] == 4
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the resumed run continued the file, once
    assert all(math.isfinite(r["rollout/kl"]) and 0 <= r["train/clipfrac"] <= 1 for r in rows)
    assert {r["step"] for r in rows if "held_out/reward" in r} == {2, 4}
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert {x["step"] for x in samples} == {1, 2, 3, 4} and len(samples) == 4 * 4  # the main process's own episodes, once a step


@pytest.mark.parametrize("run", ["ppo_fsdp", "ppo_zero2", "ppo_offload"])
def test_ppo_sharded_makes_the_updates_of_unsharded_and_resumes(worker_runs, run):
    # FSDP: the policy's blocks split in two, gathered whole for each rollout and held-out check (whose lengths differ
    # between the processes); ppo_fsdp is interrupted after step 2 and resumed; ppo_zero2 keeps a block's gathered weights
    # from its forward to its backward (zero_stage=2); ppo_offload keeps the shards, gradients and Adam moments in CPU memory
    # and steps them there (offload_trainable; on this CPU-only machine the blocks compute where they are). Same draws, same
    # updates as without sharding.
    assert_same_weights(worker_runs / "ppo_full", worker_runs / run, atol=1e-5)
    plain, sharded = metrics(worker_runs / "ppo_full"), metrics(worker_runs / run)
    assert [r["step"] for r in sharded] == [1, 2, 3, 4]
    for key in ("rollout/reward", "rollout/kl", "train/policy_loss", "held_out/reward"):
        assert [r.get(key) for r in sharded] == pytest.approx([r.get(key) for r in plain], abs=1e-4), key
    assert summary(worker_runs / run)["held_out"]["best_step"] == summary(worker_runs / "ppo_full")["held_out"]["best_step"]
    assert summary(worker_runs / run)["sharded"] and not summary(worker_runs / "ppo_full")["sharded"]
    assert summary(worker_runs / run)["sharding"] == {
        "zero_stage": 2 if run == "ppo_zero2" else 3,
        "offload_trainable": run == "ppo_offload",
    }


def test_grpo_two_processes_stay_in_step_when_one_drops_every_group(worker_runs):
    run = worker_runs / "grpo"
    s = summary(run)
    assert s["processes"] == 2 and s["samples"] == 4 * 4 * 2 and s["steps_done"] == 4
    assert (run / "model" / "model.safetensors").exists()
    # the prompts each process drew (process p takes every 2nd of a step's window, from p): at steps 1 and 2 the second
    # process drew a fixed prompt, dropped its only group and kept nothing, while the first trained; the stage
    # finished and its weights agree (it checks), so the empty process took part in every update
    stream = index_stream(12, 0, 8)
    fixed = [(stream[2 * k] % 3 == 0, stream[2 * k + 1] % 3 == 0) for k in range(4)]
    assert fixed[:2] == [(False, True), (False, True)]
    assert [r["rollout/samples_trained"] for r in metrics(run)][:2] == [4, 4]  # the main process's own samples


def test_grpo_sharded_makes_the_updates_of_unsharded_when_one_process_keeps_nothing(worker_runs):
    # FSDP: at steps 1 and 2 the second process kept no sample, so it ran empty passes (a row with no weight) to match
    # the first process's sharded forward and backward passes; interrupted after step 2 and resumed
    assert_same_weights(worker_runs / "grpo", worker_runs / "grpo_fsdp", atol=1e-5)
    plain, sharded = metrics(worker_runs / "grpo"), metrics(worker_runs / "grpo_fsdp")
    assert [r["step"] for r in sharded] == [1, 2, 3, 4]
    for key in ("rollout/reward", "rollout/kl", "train/loss", "train/grad_norm", "held_out/reward", "held_out/kl"):
        assert [r.get(key) for r in sharded] == pytest.approx([r.get(key) for r in plain], abs=1e-4), key
    assert any(r.get("train/loss") for r in plain)  # the policy trained
    assert summary(worker_runs / "grpo_fsdp")["sharded"] and not summary(worker_runs / "grpo")["sharded"]


def test_grpo_batch_std_is_taken_over_both_processes(tiny_model_dir, tiny_data, tmp_path):
    # scale_rewards=batch: one std over every process's kept rewards. The prompts each process draws are those of
    # test_grpo_two_processes_stay_in_step_when_one_drops_every_group: at steps 1 and 2 the second process keeps nothing
    # (it still joins the gather), so the main process's batch std is its own group's std; at steps 3 and 4 both keep
    # a group, and the main process's advantages are divided by a std that the other process's rewards changed
    qs = [json.loads(x)["prompt"] for x in tiny_data["prompts"].read_text().splitlines()]
    fixed = tmp_path / "half_fixed.jsonl"
    fixed.write_text("".join(json.dumps({"prompt": q, "meta": {"fixed": i % 3 == 0}}) + "\n" for i, q in enumerate(qs)))
    grpo = [
        f"policy={tiny_model_dir}",
        f"reward=[{{type: function, path: '{FNS}:hash_unless_fixed'}}]",
        f"prompts={fixed}",
        "precision=fp32",
        "lora.enabled=false",
        "steps=4",
        "prompts_per_step=1",
        "group_size=4",
        "mini_batch_size=2",
        "micro_batch_size=1",
        "beta=0",
        "save_every=0",
        "samples_every=1",
        "scale_rewards=batch",
        "generation.max_new_tokens=6",
        f"output_dir={tmp_path / 'grpo'}",
    ]
    launch(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE / "distributed_worker.py"), json.dumps({"grpo": grpo})
    )
    assert summary(tmp_path / "grpo")["steps_done"] == 4
    samples = [json.loads(x) for x in (tmp_path / "grpo" / "samples.jsonl").read_text().splitlines()]
    for step in (1, 2, 3, 4):
        r = torch.tensor([x["reward"] for x in samples if x["step"] == step], dtype=torch.float64)  # the main process's group
        adv = torch.tensor([x["advantage"] for x in samples if x["step"] == step], dtype=torch.float64)
        centred = r - r.mean()
        batch_std = centred[centred.abs() > 1e-9] / adv[centred.abs() > 1e-9] - 1e-4  # the std each was divided by
        assert batch_std.numel() and torch.allclose(batch_std, batch_std[0].expand_as(batch_std), rtol=1e-4), step  # one std for all
        own = r.std().item()
        assert (batch_std[0].item() == pytest.approx(own, rel=1e-4)) == (step <= 2), (step, batch_std[0].item(), own)
