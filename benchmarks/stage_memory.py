"""Benchmark: peak memory (RSS) of every training stage on the default model, each alone in a fresh process.

A few optimizer steps of each stage, with the shipped configs' sizes (the demo's for SFT, the
reward model and PPO; `configs/dpo/hh_harmless.yaml` for DPO; `configs/grpo/arithmetic.yaml` for
GRPO), fp32: the stage's own summary reports its peak RSS and, where the stage counts them, the
bytes of weights it holds. The reward model is trained here from the SFT start (the default
model) on 48 HH pairs, and PPO runs against it, so the benchmark needs nothing else.

    python benchmarks/stage_memory.py
"""

import json
import sys
from pathlib import Path

from launch import ROOT, run_logged

OUT = ROOT / "runs" / "bench" / "stage_memory"
TETHER = str(Path(sys.executable).with_name("tether"))
HH = "shared:hh_rlhf_harmless/train.jsonl.gz"
STAGES = {  # stage -> (command, overrides); every run: a few steps, no checkpoints
    "reward": (
        ["reward", "train"],
        [
            "model=default",
            f"data={HH}",
            "limit=48",
            "max_steps=3",
            "batch_size=12",
            "freeze_layers=20",
            "max_prompt_tokens=128",
            "max_response_tokens=48",
            "eval_fraction=0.25",
            "normalize_samples=16",
        ],
    ),
    "dpo": (["dpo", "--config", "configs/dpo/hh_harmless.yaml"], ["max_steps=3", "limit=48", "eval_fraction=0.25", "save_every=0"]),
    "ppo": (
        ["ppo"],
        [
            "steps=2",
            "batch_size=16",
            "mini_batch_size=8",
            "ppo_epochs=1",
            "generation.max_new_tokens=40",
            "generation.batch_size=16",
            "generation.max_prompt_tokens=128",
            "prompts=shared:alpaca_seed_tasks.jsonl",
            "limit=64",
            "save_every=0",
            "samples_every=0",
        ],
    ),
    "grpo": (
        ["grpo", "--config", "configs/grpo/arithmetic.yaml"],
        ["steps=2", "save_every=0", "samples_every=0", "early_stop.prompts=null"],
    ),
}


def demo_sft() -> list[str]:
    """The demo's SFT section as overrides (`tether run` wires model and data the same way), 3 steps."""
    import yaml

    demo = yaml.safe_load((ROOT / "src" / "tether" / "configs" / "demo.yaml").read_text())["sft"]
    return [
        "model=default",
        f"data={demo['data']}",
        "max_steps=3",
        f"batch_size={demo['batch_size']}",
        f"max_prompt_tokens={demo['max_prompt_tokens']}",
        f"max_response_tokens={demo['max_response_tokens']}",
        "lora.enabled=true",
        "lora.r=16",
        "lora.alpha=32",
        "save_every=0",
    ]


def main() -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    result = {}
    print("peak RSS of each stage alone, default model (SmolLM2-135M-Instruct), fp32:")
    for stage, (command, overrides) in {"sft": (["sft"], demo_sft()), **STAGES}.items():
        out = OUT / stage
        extra = [f"reward=[{{type: model, path: '{OUT / 'reward' / 'model'}'}}]"] if stage == "ppo" else []
        proc = run_logged([TETHER, *command, *overrides, *extra, f"output_dir={out}", "precision=fp32"], OUT / f"{stage}.log")
        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
        result[stage] = {
            "peak_rss_gb": summary.get("peak_rss_gb"),
            "parameter_gb": summary.get("parameter_gb"),
            "trainable_params": summary.get("trainable_params"),
            "seconds": summary.get("seconds"),
        }
        weights = f"{result[stage]['parameter_gb']:.2f} GB of weights" if result[stage]["parameter_gb"] else ""
        print(f"  {stage:<7} peak RSS {result[stage]['peak_rss_gb']:.2f} GB  {weights}")
    (ROOT / "runs" / "bench" / "stage_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
