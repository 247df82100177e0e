"""Benchmark: peak memory of PPO with the default model, one shared base against four full models.

Shared base (tether's default): the policy is the base plus a LoRA adapter, the reference is
the same weights with the adapter off, the value function is a head on the policy trunk, and
the reward model's tensors that equal the base's (the blocks and embeddings frozen while it
trained) point at the base's copy. A second shared mode puts the value function on a second
adapter over the reward model's weights (`value_model=reward_adapter`). Four separate models:
a fully fine-tuned policy (with its gradients and Adam moments), a frozen reference copy, a
fully trained value model initialised from the reward model (gradients and moments too), and
the frozen reward model, nothing shared (`share_weights=false`).

Each mode runs the same PPO step (16 episodes, 40 new tokens, minibatches of 8) alone in a
fresh process, three ways, the same for every mode: each minibatch in one pass (8 episodes'
activations held at once), as it comes (micro-batches of 2 episodes, the default), and with
activation checkpointing on as well. Its peak RSS and the bytes of weights it holds are read
from the stage summary.
The reward model must be a trained one, since how much of it can be shared depends on what
training left untouched: the shipped HH reward model (`runs/reward_hh/model`, or the one
`benchmarks/reward_hh.py` trains earlier in `make bench`).

    python benchmarks/ppo_memory.py
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench" / "ppo_memory"
COMMON = [
    "steps=1",
    "batch_size=16",
    "mini_batch_size=8",
    "ppo_epochs=1",
    "save_every=0",
    "samples_every=0",
    "generation.max_new_tokens=40",
    "generation.batch_size=16",
    "generation.max_prompt_tokens=128",
    "limit=64",
]
# the same PPO step with the whole minibatch in one pass, as it comes, and with activation checkpointing (every mode alike)
SETTINGS = {"whole_minibatch": ["micro_batch_size=8"], "as_it_comes": [], "activation_checkpointing": ["activation_checkpointing=true"]}
MODES = {
    "shared_base": ["lora.enabled=true", "value_model=policy_head"],
    "shared_base_value_adapter": ["lora.enabled=true", "value_model=reward_adapter"],
    "four_models": ["lora.enabled=false", "value_model=reward_model", "share_weights=false"],
}
TRAINED = [ROOT / "runs" / "reward_hh" / "model", ROOT / "runs" / "bench" / "reward_hh_tether" / "model"]


def reward_model_dir() -> Path:
    for path in TRAINED:
        if (path / "config.json").exists():
            return path
    raise SystemExit(
        "no trained HH reward model: run `python benchmarks/reward_hh.py --skip-trl` "
        "(or `tether reward train --config configs/reward/hh_harmless.yaml`) first"
    )


def main() -> dict:
    rm = reward_model_dir()
    result = {"reward_model": str(rm)}
    print(f"PPO step peak RSS, default model, reward model {rm}:")
    for setting, memory_flags in SETTINGS.items():
        rows = result[setting] = {}
        for mode, extra in MODES.items():
            out = OUT / setting / mode
            cmd = [
                str(Path(sys.executable).with_name("tether")),
                "ppo",
                f"reward=[{{type: model, path: '{rm}'}}]",
                f"output_dir={out}",
                *COMMON,
                *memory_flags,
                *extra,
            ]
            if subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode != 0:
                raise SystemExit(f"the {setting}/{mode} run failed: {' '.join(cmd)}")
            summary = json.loads((out / "summary.json").read_text())
            rows[mode] = {
                key: summary[key] for key in ("peak_rss_gb", "parameter_gb", "reward_model_shared_params", "trainable_params", "seconds")
            }
        for mode in MODES:
            r = rows[mode]
            r["ratio"] = r["peak_rss_gb"] / rows["four_models"]["peak_rss_gb"]
            print(
                f"  {setting:24s} {mode:26s} {r['peak_rss_gb']:.2f} GB  (weights {r['parameter_gb']:.2f} GB, "
                f"{r['reward_model_shared_params'] / 1e6:.1f}M reward-model parameters shared)  ratio {r['ratio']:.2f}  {r['seconds']:.0f} s"
            )
    for setting in SETTINGS:
        print(f"  {setting}: shared base / four separate models = {result[setting]['shared_base']['ratio']:.2f} (target <= 0.40)")
    (OUT / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
