"""PPO must solve a task with a known optimum on a tiny model, with a Python reward function."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import ConfigError, PPOConfig, load_config
from tether.rewards.functions import RewardFunctionError
from tether.stages.ppo import train_ppo

FNS = Path(__file__).resolve().parent / "reward_fns.py"


def ppo(tiny_model_dir, tiny_data, out, fn, *extra):
    return train_ppo(
        load_config(
            PPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: function, path: '{FNS}:{fn}'}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={out}",
                "precision=fp32",
                "lora.enabled=false",
                "generation.max_new_tokens=8",
                "generation.batch_size=16",
                "save_every=0",
                "samples_every=0",
                *extra,
            ],
        )
    )


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_learns_to_write_the_letter_e(tiny_model_dir, tiny_data, tmp_path):
    # a random 2-layer model writes ~5% 'e'; PPO must push that past 30% within 30 iterations, with a finite KL
    ppo(
        tiny_model_dir,
        tiny_data,
        tmp_path / "ppo",
        "letter_e",
        "steps=30",
        "batch_size=16",
        "mini_batch_size=8",
        "ppo_epochs=4",
        "micro_batch_size=8",
        "optim.lr=1e-2",
        "kl.init_beta=0.001",
        "kl.adaptive=false",
    )
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["rollout/reward"] for r in rows[:5]) / 5
    last = sum(r["rollout/reward"] for r in rows[-5:]) / 5
    assert first < 0.12 and last > 0.3, (first, last)
    assert all(r["rollout/kl"] is not None and r["rollout/kl"] < 200 for r in rows)


def test_reward_function_may_drop_samples(tiny_model_dir, tiny_data, tmp_path):
    """None from the reward function drops that episode from the update: its tokens leave the loss mask. The entropy
    bonus pulls on every token it sees, so a dropped episode that leaked into the loss would move the weights."""
    one = ["steps=1", "batch_size=4", "mini_batch_size=2", "ent_coef=0.01"]
    # every episode dropped: no gradient at all, and the policy and value head stay as they were
    s = ppo(tiny_model_dir, tiny_data, tmp_path / "none", "drop_all", *one)
    (row,) = rows(tmp_path / "none")
    assert s["steps"] == 1 and row["train/grad_norm"] == 0.0 and row["rollout/length"] == 0.0  # no token counted
    base, trained = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(tmp_path / "none" / "model" / "model.safetensors"))
    assert all(torch.equal(base[k], trained[k]) for k in base)
    assert not load_file(str(tmp_path / "none" / "value_head.safetensors"))["weight"].any()  # it starts at zero
    # half dropped: the kept half trains, and only its tokens count. The same seed samples the same first rollout
    # whatever the reward, so the run that drops nothing saw the same episodes
    ppo(tiny_model_dir, tiny_data, tmp_path / "half", "drop_odd", *one)
    ppo(tiny_model_dir, tiny_data, tmp_path / "all", "constant", *one)
    (half,), (every,) = rows(tmp_path / "half"), rows(tmp_path / "all")
    assert half["train/grad_norm"] > 0 and 0 < half["rollout/length"] < every["rollout/length"]
    # the reward statistics are over the kept episodes, each scored 1.0 (a dropped one has no score, not a score of 0)
    assert half["rollout/reward"] == 1.0 and half["rollout/reward_std"] == 0.0


def test_reward_function_errors(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(RewardFunctionError, match="returned 1 values for 4 completions"):
        ppo(tiny_model_dir, tiny_data, tmp_path / "a", "wrong_length", "steps=1", "batch_size=4", "mini_batch_size=2")
    with pytest.raises(RewardFunctionError, match="has no function named nope"):
        ppo(tiny_model_dir, tiny_data, tmp_path / "b", "nope", "steps=1", "batch_size=4", "mini_batch_size=2")
    with pytest.raises(ConfigError, match="value_model=reward_model starts from the reward model"):
        load_config(PPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]", "value_model=reward_model"])
