"""Benchmark: peak memory of PPO with the default model, one shared base against four full models.

Shared base (tether's default): the policy is the base plus a LoRA adapter, the reference is
the same weights with the adapter off, the value function is a head on the policy trunk; the
reward model is loaded once, frozen. Four separate models: a fully fine-tuned policy (with its
gradients and Adam moments), a frozen reference copy, a fully trained value model initialised
from the reward model (gradients and moments too), and the frozen reward model.

Each mode runs the same PPO step (16 episodes, 40 new tokens, minibatches of 8) alone in a
fresh process; its peak RSS is read from the stage summary. The reward model is the shipped HH
reward model when it has been trained (runs/reward_hh/model), else a freshly initialised one:
memory does not depend on what the head has learnt.

    python benchmarks/ppo_memory.py
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench" / "ppo_memory"
COMMON = ["steps=1", "batch_size=16", "mini_batch_size=8", "ppo_epochs=1", "save_every=0", "samples_every=0",
          "generation.max_new_tokens=40", "generation.batch_size=16", "generation.max_prompt_tokens=128", "limit=64"]
MODES = {
    "shared_base": ["lora.enabled=true", "value_model=policy_head"],
    "four_models": ["lora.enabled=false", "value_model=reward_model"],
}


def reward_model_dir() -> Path:
    trained = ROOT / "runs" / "reward_hh" / "model"
    if (trained / "config.json").exists():
        return trained
    fresh = OUT / "reward_model"
    if not (fresh / "config.json").exists():
        from tether.models.loading import load_tokenizer, resolve_model, save_model
        from tether.models.reward_model import RewardNormalization, init_reward_model, save_normalization

        trunk = resolve_model("default")
        tokenizer = load_tokenizer(trunk)
        save_model(init_reward_model(trunk, tokenizer.pad_token_id), tokenizer, fresh)
        save_normalization(fresh, RewardNormalization())
    return fresh


def main() -> dict:
    rm = reward_model_dir()
    result = {"reward_model": str(rm)}
    for mode, extra in MODES.items():
        out = OUT / mode
        cmd = [str(Path(sys.executable).with_name("tether")), "ppo", f"reward_model={rm}", f"output_dir={out}", *COMMON, *extra]
        if subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode != 0:
            raise SystemExit(f"the {mode} run failed: {' '.join(cmd)}")
        summary = json.loads((out / "summary.json").read_text())
        result[mode] = {"peak_rss_gb": summary["peak_rss_gb"], "trainable_params": summary["trainable_params"],
                        "seconds": summary["seconds"]}
    result["ratio"] = result["shared_base"]["peak_rss_gb"] / result["four_models"]["peak_rss_gb"]
    print(f"PPO step peak RSS, default model: shared base {result['shared_base']['peak_rss_gb']:.2f} GB, "
          f"four separate models {result['four_models']['peak_rss_gb']:.2f} GB: ratio {result['ratio']:.2f} (target <= 0.40)")
    (OUT / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
