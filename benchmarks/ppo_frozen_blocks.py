"""Benchmark: a PPO step on the default model with the lower blocks frozen, their output recorded once per rollout
(`reuse_frozen_states`, the default) against recomputed in every pass.

`configs/ppo/default.yaml` trains adapters on the top 15 of SmolLM2's 30 blocks (`freeze_layers: 15`). The lower 15
then compute the same thing for a rollout's sequences in every pass over them: the reference's, and each PPO epoch's
minibatches. With `reuse_frozen_states` they run once per rollout and the other passes start at block 15. Both runs
here use the PPO config's shape as it was until its answers were cut to 24 tokens (LoRA r16 on the top 15 blocks, 2 PPO epochs over minibatches of 8, micro-batches
of 2, prompts cut to their last 64 tokens, up to 32 new tokens, fp32) on real HH-RLHF prompts, with a reward model initialised from the default model (the
reward's value does not change the work). The runs alternate (`--repeats` of each); the figures are medians over
every step but each run's first (warm-up) of `time/update_s` (the PPO update), `time/score_s` (reference and reward
passes, and the recording) and `time/step_s`. Both runs train the same policy: a test (tests/stages/test_ppo_options.py)
holds that the switch changes no number.

    .venv/bin/python benchmarks/ppo_frozen_blocks.py [--steps 3] [--batch-size 48] [--repeats 1] [--threads 0]

Writes runs/bench/ppo_frozen_blocks.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from launch import HH_TRAIN, run_logged  # benchmarks/launch.py

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench" / "ppo_frozen_blocks"
RESULT = ROOT / "runs" / "bench" / "ppo_frozen_blocks.json"
TETHER = Path(sys.executable).with_name("tether")
RUNS = {"recorded": "reuse_frozen_states=true", "recomputed": "reuse_frozen_states=false"}


def reward_model_dir() -> tuple[str, Path]:
    """The default model's directory and a reward model initialised from it (built once)."""
    from tether.models.loading import load_tokenizer, resolve_model, save_model
    from tether.models.reward_model import RewardNormalization, init_reward_model, save_normalization

    model_dir = resolve_model("default")
    reward_dir = WORK / "reward"
    if not (reward_dir / "config.json").exists():
        tokenizer = load_tokenizer(model_dir)
        save_model(init_reward_model(model_dir, tokenizer.pad_token_id), tokenizer, reward_dir)
        save_normalization(reward_dir, RewardNormalization())
    return model_dir, reward_dir


def run(name: str, repeat: int, model_dir: str, reward_dir: Path, a) -> list[dict]:
    out = WORK / f"{name}_{repeat}"
    shutil.rmtree(out, ignore_errors=True)  # a leftover checkpoint would make tether resume
    cmd = [
        str(TETHER),
        "ppo",
        f"policy={model_dir}",
        f"reward=[{{type: model, path: '{reward_dir}'}}]",
        f"prompts={HH_TRAIN}",
        f"output_dir={out}",
        f"steps={a.steps}",
        f"batch_size={a.batch_size}",
        "mini_batch_size=8",
        "micro_batch_size=2",
        "ppo_epochs=2",
        "freeze_layers=15",
        "lora.enabled=true",
        "lora.r=16",
        "lora.alpha=32",
        "generation.max_new_tokens=32",
        "generation.max_prompt_tokens=64",
        "generation.temperature=1.0",
        "generation.top_p=1.0",
        "generation.batch_size=16",
        "precision=fp32",
        "save_every=0",
        "samples_every=0",
        RUNS[name],
    ]
    run_logged(cmd, WORK / f"{name}_{repeat}.log", a.threads)
    recorded = json.loads((out / "summary.json").read_text())["frozen_blocks_recorded"]
    if recorded != (15 if name == "recorded" else 0):
        raise SystemExit(f"{name}: the run recorded {recorded} blocks")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()][1:]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="PPO step time with the frozen lower blocks recorded once per rollout vs recomputed")
    ap.add_argument("--steps", type=int, default=3, help="rollouts per run (the first is not counted)")
    ap.add_argument("--batch-size", type=int, default=48, help="episodes per rollout (the shipped config's 48)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    ap.add_argument("--threads", type=int, default=0, help="OMP/MKL threads per run (0 = torch's default)")
    a = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    model_dir, reward_dir = reward_model_dir()
    steps: dict[str, list[dict]] = {name: [] for name in RUNS}
    for repeat in range(a.repeats):
        for name in RUNS:
            print(f"running {name} ({repeat + 1}/{a.repeats}) ...", flush=True)
            steps[name] += run(name, repeat, model_dir, reward_dir, a)
    keys = {"update": "time/update_s", "score": "time/score_s", "step": "time/step_s"}
    result = {
        "settings": {
            "steps": a.steps,
            "batch_size": a.batch_size,
            "repeats": a.repeats,
            "threads": a.threads or None,
            "model": model_dir,
            "freeze_layers": 15,
            "ppo_epochs": 2,
        }
    }
    for name in RUNS:
        result[name] = {part: statistics.median(s[key] for s in steps[name]) for part, key in keys.items()}
        result[name]["steps_counted"] = len(steps[name])
    result["ratios"] = {part: result["recorded"][part] / result["recomputed"][part] for part in keys}
    print(f"\nPPO step on the default model, top 15 of 30 blocks trained, {a.batch_size} episodes, 2 epochs (median seconds)")
    print(f"{'':<12} {'update':>8} {'score':>8} {'step':>8}")
    for name in RUNS:
        print(f"{name:<12} " + " ".join(f"{result[name][part]:>8.2f}" for part in keys))
    print("recorded / recomputed: " + ", ".join(f"{part} x{ratio:.2f}" for part, ratio in result["ratios"].items()))
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {RESULT.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
