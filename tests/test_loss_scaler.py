"""precision=fp16: dynamic loss scaling (training.LossScaler) around tether's optimizer step, and a stage trained with it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tether.config import OptimSettings, SFTConfig, load_config
from tether.stages.sft import train_sft
from tether.training import LossScaler, clip_and_step, make_optimizer


def toy(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    params = list(model.parameters())
    optimizer, scheduler = make_optimizer(params, OptimSettings(lr=0.1, warmup_ratio=0.0, schedule="constant"), 10)
    return model, params, optimizer, scheduler


def backward(model, scale: float = 1.0):
    x = torch.arange(8.0).reshape(2, 4)
    (model(x).pow(2).mean() * scale).backward()


def test_a_scaled_step_is_the_plain_step():
    plain, p_params, p_opt, p_sched = toy()
    backward(plain)
    norm = clip_and_step(p_params, p_opt, p_sched, max_grad_norm=1.0)
    scaled, s_params, s_opt, s_sched = toy()
    scaler = LossScaler(True, init_scale=1024.0)
    backward(scaled, scaler.value)  # what scaler.scale(loss).backward() does
    assert clip_and_step(s_params, s_opt, s_sched, 1.0, scaler) == pytest.approx(norm, rel=1e-6)  # the norm of the true gradient
    for a, b in zip(p_params, s_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert scaler.value == 1024.0 and scaler.skipped == 0


def test_an_overflowed_step_is_skipped_and_the_scale_halved_then_grows_back():
    model, params, optimizer, scheduler = toy()
    scaler = LossScaler(True, init_scale=1024.0, growth_interval=2)
    before = [p.detach().clone() for p in params]
    backward(model)
    params[0].grad[0, 0] = float("inf")  # an fp16 overflow in the backward pass
    assert clip_and_step(params, optimizer, scheduler, 1.0, scaler) == float("inf")
    for a, b in zip(before, params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # nothing moved
    assert all(p.grad is None for p in params) and scheduler.last_epoch == 1  # gradients dropped; the schedule moved on
    assert (scaler.value, scaler.skipped) == (512.0, 1)
    for _ in range(2):  # growth_interval clean steps: the scale doubles
        backward(model, scaler.value)
        clip_and_step(params, optimizer, scheduler, 1.0, scaler)
    assert scaler.value == 1024.0 and not torch.equal(before[0], params[0])


def test_disabled_it_changes_nothing():
    scaler = LossScaler(False)
    loss = torch.tensor(3.0)
    assert scaler.scale(loss) is loss and scaler.value == 1.0


def sft(tiny_model_dir, tiny_data, out, *extra):
    return train_sft(
        load_config(
            SFTConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={tiny_data['demos']}",
                f"output_dir={out}",
                "max_steps=4",
                "batch_size=2",
                "eval_fraction=0.25",
                "optim.lr=1e-2",
                "lora.enabled=false",
                "save_every=0",
                *extra,
            ],
        )
    )


def test_sft_in_fp16_learns_like_fp32_and_resumes_with_its_loss_scale(tiny_model_dir, tiny_data, tmp_path):
    fp32 = sft(tiny_model_dir, tiny_data, tmp_path / "fp32", "precision=fp32")
    fp16 = sft(tiny_model_dir, tiny_data, tmp_path / "fp16", "precision=fp16")
    rows = [json.loads(x) for x in (tmp_path / "fp16" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["train/loss_scale"] for r in steps] == [2.0**16] * 4 and steps[-1]["train/steps_skipped"] == 0
    assert fp16["eval_loss"] < fp16["eval_loss_before"]
    assert fp16["eval_loss"] == pytest.approx(fp32["eval_loss"], abs=0.05)  # fp16 matmuls: close, not equal
    # interrupted after step 2 and resumed: the same run as the unbroken one (the scale came back from the checkpoint)
    assert sft(tiny_model_dir, tiny_data, tmp_path / "resumed", "precision=fp16", "interrupt_after=2") is None
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "state.pt", weights_only=False)
    assert state["loss_scaler"] == {"value": 2.0**16, "clean_steps": 2, "skipped": 0}
    sft(tiny_model_dir, tiny_data, tmp_path / "resumed", "precision=fp16")
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("fp16", "resumed"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_rl_stages_train_in_fp16_with_loss_scaling(stage, tiny_model_dir, tiny_data, tmp_path):
    from pathlib import Path

    from tether.config import GRPOConfig, PPOConfig
    from tether.stages.grpo import train_grpo
    from tether.stages.ppo import train_ppo

    fns = Path(__file__).resolve().parent / "stages" / "reward_fns.py"
    common = [
        f"policy={tiny_model_dir}",
        f"prompts={tiny_data['prompts']}",
        f"output_dir={tmp_path}",
        "precision=fp16",
        "steps=2",
        "generation.max_new_tokens=6",
        "generation.batch_size=4",
        "save_every=0",
    ]
    if stage == "ppo":
        train_ppo(
            load_config(
                PPOConfig, None, [*common, f"reward=[{{type: function, path: '{fns}:letter_e'}}]", "batch_size=4", "mini_batch_size=2"]
            )
        )
    else:
        train_grpo(
            load_config(
                GRPOConfig,
                None,
                [
                    *common,
                    f"reward=[{{type: function, path: '{fns}:letter_e'}}]",
                    "prompts_per_step=2",
                    "group_size=2",
                    "mini_batch_size=2",
                ],
            )
        )
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # the tiny model's first fp16 gradients may overflow at 2**16: that step is skipped and the scale halved
    assert len(rows) == 2 and all(r["train/loss_scale"] in (2.0**16, 2.0**15, 2.0**14) for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["steps_done"] == 2
