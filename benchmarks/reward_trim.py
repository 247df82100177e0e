"""Benchmark: what trimming glibc's heap after every step costs the demo's reward stage, and what it saves (issue 28).

Every training stage calls `training.release_freed_memory` (glibc's malloc_trim) after each step, so that resident
memory stays flat. This reruns the demo's reward stage (its settings from configs/demo.yaml, on a finished demo run's
SFT model and pairs) three ways: trimming after every step (what tether does), after every tenth, and never; and prints
each run's median, 90th-percentile and longest step, the steps' total time and the peak resident memory.

    python benchmarks/reward_trim.py runs/demo [--steps 94]

Each way runs in its own process, one after another; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import tether.stages.reward as stage
from tether.config import RewardConfig, from_dict

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "runs" / "bench" / "reward_trim.json"


def one(run: Path, every: int, steps: int, out: Path) -> dict:
    """The demo's reward stage for `steps` steps, trimming after every `every`-th step (0: never), in this process."""
    if every != 1:
        trim, calls = stage.release_freed_memory, [0]

        def sometimes() -> None:
            calls[0] += 1
            if every and calls[0] % every == 0:
                trim()

        stage.release_freed_memory = sometimes
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    settings = {
        **demo["reward"],
        "model": str(run / "sft" / "model"),
        "data": str(run / "collect" / "preferences.jsonl"),
        "normalize_data": str(run / "collect" / "samples.jsonl"),
        "output_dir": str(out),
        "max_steps": steps,
        "save_every": 0,
        "precision": demo.get("precision", "bf16"),
    }
    stage.train_reward(from_dict(RewardConfig, settings))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if "train/loss" in r]
    step = [b - a for a, b in zip(times, times[1:])]
    return {
        "trim_every": every,
        "steps": len(times),
        "median_s": statistics.median(step),
        "p90_s": sorted(step)[int(0.9 * (len(step) - 1))],
        "max_s": max(step),
        "total_s": sum(step),
        "peak_rss_gb": max(r["sys/peak_rss_gb"] for r in rows if "sys/peak_rss_gb" in r),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished demo run (its sft/ and collect/ folders)")
    parser.add_argument("--steps", type=int, default=94, help="reward steps (the demo's whole stage: 94)")
    parser.add_argument("--every", type=int, default=None, help=argparse.SUPPRESS)  # one way, in a child process
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.every is not None:
        print(json.dumps(one(a.run.resolve(), a.every, a.steps, a.out)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for every in (1, 10, 0):
            cmd = [sys.executable, __file__, str(a.run), "--steps", str(a.steps), "--every", str(every), "--out", f"{tmp}/rm{every}"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(
                f"trim {'never' if not every else f'every {every} steps' if every > 1 else 'every step'}: "
                f"median {r['median_s']:.2f} s, p90 {r['p90_s']:.2f} s, longest {r['max_s']:.2f} s, "
                f"total {r['total_s']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
