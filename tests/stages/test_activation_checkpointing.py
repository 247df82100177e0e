"""parallel.activation_checkpointing=true in SFT, reward and DPO: the blocks run their forward again in the backward pass
(so a step keeps one tensor per block instead of every intermediate), and the run's numbers do not change.
PPO's and GRPO's are in test_ppo_shared_weights.py and test_grpo_learning.py."""

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.llama.modeling_llama import LlamaMLP

from tether.config import DPOConfig, RewardConfig, SFTConfig, load_config
from tether.stages.dpo import run_dpo
from tether.stages.reward import train_reward
from tether.stages.sft import train_sft


def stage_args(name, tiny_model_dir, tiny_data):
    common = ["precision=fp32", "max_steps=2", "batch_size=2", "eval_fraction=0.25", "optim.lr=1e-2", "lora.enabled=false", "save_every=0"]
    return {
        "sft": (SFTConfig, train_sft, [f"model={tiny_model_dir}", f"data={tiny_data['demos']}", *common]),
        "reward": (RewardConfig, train_reward, [f"model={tiny_model_dir}", f"data={tiny_data['prefs']}", *common]),
        "dpo": (DPOConfig, run_dpo, [f"policy={tiny_model_dir}", f"data={tiny_data['prefs']}", *common]),
    }[name]


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_activation_checkpointing_recomputes_the_blocks_and_changes_no_number(stage, tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}  # MLP runs inside each block: counted in the forward pass and again in a recompute
    forward = LlamaMLP.forward  # (not the block's own forward: transformers wraps that one to checkpoint it)

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaMLP, "forward", counted)
    cls, train, args = stage_args(stage, tiny_model_dir, tiny_data)
    counts, summaries = {}, {}
    for run, extra in (("kept", []), ("recomputed", ["parallel.activation_checkpointing=true"])):
        calls["n"] = 0
        summaries[run] = train(load_config(cls, None, [*args, f"output_dir={tmp_path / run}", *extra]))
        counts[run] = calls["n"]
    assert counts["recomputed"] > counts["kept"]  # every training forward of a block ran again in the backward pass
    assert summaries["recomputed"]["eval_loss"] == pytest.approx(summaries["kept"]["eval_loss"], abs=1e-6)
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("kept", "recomputed"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
