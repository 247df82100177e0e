"""Benchmark: tether's DPO against TRL 1.16's DPOTrainer, side by side, on one model and one data set.

Builds, under runs/bench/dpo_vs_trl/:
  * model/       the test suite's tiny Llama (2 layers, width 32) and tokenizer, from
                 `build_tiny_model_dir` in tests/conftest.py (or, with --model default, nothing:
                 SmolLM2-135M-Instruct from tether's cache);
  * pairs.jsonl  the first steps x batch_size usable HH-RLHF harmless training pairs, so each side
                 sees every pair exactly once.
Then runs, one after another, each alone in a fresh process:
  * tether_full        `tether dpo lora.enabled=false`: a fully trained policy and a frozen copy as the
                       live reference, TRL's default layout; tether's defaults otherwise (chosen and
                       rejected packed after one copy of the prompt, batches of similar length);
  * tether_full_plain  the same with `pack_prompts=false bucket_by_length=false`: 2B right-padded rows
                       in data order, as TRL batches them, to show what the packing and bucketing buy;
  * trl_full           benchmarks/trl_dpo.py: TRL 1.16 DPOTrainer, frozen reference copy;
  * tether_lora        `tether dpo` as shipped: LoRA policy, reference = the adapter switched off;
  * trl_lora           benchmarks/trl_dpo.py --lora: TRL with the same LoRA settings (reference = adapter off).
All: the same token ids (tether's `encode_pair`: prompt cut to --max-prompt-tokens from the left,
responses + EOS to --max-response-tokens), batch_size pairs per step, --steps optimizer steps, the
sigmoid loss with beta 0.1, AdamW at the same learning rate with cosine decay and 5% warm-up, gradient
clipping at 1, fp32, one torch thread each (--threads; on a shared 2-core machine more threads only
oversubscribe the cores).

Timing, like for like: TRL's figure times `trainer.train()` only, after the models are loaded and the data
tokenized; tether's is its training loop only (`train_seconds` in summary.json: no loading, no final eval,
no saving). Pairs per second = steps x batch_size / those seconds. Peak RSS is ru_maxrss of each whole
process, libraries included (TRL also imports datasets, accelerate and pandas). Ratios are tether / TRL:
pairs/s above 1 means tether is faster; peak RSS below 1 means tether uses less memory. The tiny model
measures the frameworks' own per-step costs more than model compute; --model default measures a real
135M model (slower: minutes per side).

    .venv/bin/python benchmarks/dpo_vs_trl.py [--model tiny|default] [--steps 50] [--batch-size 8]
        [--runs tether_full,tether_full_plain,trl_full,tether_lora,trl_lora] [--threads 1]

Writes runs/bench/dpo_vs_trl.json (runs/bench/dpo_vs_trl_default.json with --model default).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from launch import HH_TRAIN, bench_model, hh_train_pairs, run_json, run_logged  # benchmarks/launch.py

ROOT = Path(__file__).resolve().parents[1]
TETHER = Path(sys.executable).with_name("tether")
TETHER_MODES = {
    "tether_full": ["lora.enabled=false"],
    "tether_full_plain": ["lora.enabled=false", "pack_prompts=false", "bucket_by_length=false"],
    "tether_lora": ["lora.enabled=true"],
}
TRL_MODES = {"trl_full": [], "trl_lora": ["--lora"]}
BASELINE = {"tether_full": "trl_full", "tether_full_plain": "trl_full", "tether_lora": "trl_lora"}


def build_inputs(work: Path, model: str, n_pairs: int) -> tuple[str, Path]:
    """The model directory and a pairs file of the first `n_pairs` usable HH harmless training pairs."""
    from tether.data.readers import write_jsonl

    path = work / "pairs.jsonl"
    write_jsonl(path, hh_train_pairs(n_pairs))
    return bench_model(work, model), path


def run_tether(mode: str, work: Path, model_dir: str, pairs: Path, a) -> dict:
    out = work / mode
    shutil.rmtree(out, ignore_errors=True)  # a leftover checkpoint would make tether resume
    cmd = [
        str(TETHER),
        "dpo",
        f"policy={model_dir}",
        f"data={pairs}",
        f"output_dir={out}",
        f"max_steps={a.steps}",
        f"batch_size={a.batch_size}",
        "eval_fraction=0",
        "precision=fp32",
        "save_every=0",
        f"optim.lr={a.lr}",
        "optim.warmup_ratio=0.05",
        "optim.schedule=cosine",
        f"beta={a.beta}",
        f"max_prompt_tokens={a.max_prompt_tokens}",
        f"max_response_tokens={a.max_response_tokens}",
        "lora.r=16",
        "lora.alpha=32",
        *TETHER_MODES[mode],
    ]
    run_logged(cmd, work / f"{mode}.log", a.threads)
    summary = json.loads((out / "summary.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [s for s in steps if "train/loss" in s]
    return {
        "pairs_seen": summary["steps"] * a.batch_size,
        "train_seconds": summary["train_seconds"],
        "train_pairs_per_second": summary["train_pairs_per_second"],
        "peak_rss_gb": summary["peak_rss_gb"],
        "packed": summary["packed"],
        "reference": summary["reference_mode"],
        "trainable_params": summary["trainable_params"],
        "first_step_loss": train[0]["train/loss"],
        "last_step": {"margin": train[-1]["train/margin"], "accuracy": train[-1]["train/accuracy"]},
        "seconds_all_in": summary["seconds"],
        "command": " ".join(cmd),
    }


def run_trl(mode: str, work: Path, model_dir: str, pairs: Path, a) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "trl_dpo.py"),
        "--model-dir",
        model_dir,
        "--pairs",
        str(pairs),
        "--steps",
        str(a.steps),
        "--batch-size",
        str(a.batch_size),
        "--lr",
        str(a.lr),
        "--beta",
        str(a.beta),
        "--warmup-ratio",
        "0.05",
        "--max-prompt-tokens",
        str(a.max_prompt_tokens),
        "--max-response-tokens",
        str(a.max_response_tokens),
        "--lora-r",
        "16",
        "--lora-alpha",
        "32",
        "--output-dir",
        str(work / mode),
        *TRL_MODES[mode],
    ]
    return run_json(cmd, work / f"{mode}.log", a.threads)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="tether DPO vs TRL 1.16 DPOTrainer")
    ap.add_argument("--model", default="tiny", help="'tiny' (the test suite's model, built here) or 'default' (SmolLM2-135M-Instruct)")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-prompt-tokens", type=int, default=192)
    ap.add_argument("--max-response-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS/MKL_NUM_THREADS for every run (0 = torch's default)")
    ap.add_argument("--runs", default="tether_full,tether_full_plain,trl_full,tether_lora,trl_lora", help="which runs, comma-separated")
    a = ap.parse_args(argv)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = set(runs) - {*TETHER_MODES, *TRL_MODES}
    if unknown:
        ap.error(f"unknown runs: {sorted(unknown)}")

    suffix = "" if a.model == "tiny" else "_default" if a.model == "default" else "_model"
    work, result_path = ROOT / "runs" / "bench" / f"dpo_vs_trl{suffix}", ROOT / "runs" / "bench" / f"dpo_vs_trl{suffix}.json"
    work.mkdir(parents=True, exist_ok=True)
    model_dir, pairs = build_inputs(work, a.model, a.steps * a.batch_size)
    result: dict = {
        "settings": {
            "model": a.model if a.model != "tiny" else "tests/conftest.py build_tiny_model_dir",
            "steps": a.steps,
            "batch_size": a.batch_size,
            "pairs": a.steps * a.batch_size,
            "data": HH_TRAIN,
            "lr": a.lr,
            "beta": a.beta,
            "max_prompt_tokens": a.max_prompt_tokens,
            "max_response_tokens": a.max_response_tokens,
            "loss": "sigmoid",
            "precision": "fp32",
            "threads": a.threads or None,
            "lora": {"r": 16, "alpha": 32},
        }
    }
    for name in runs:
        print(f"running {name} ...", flush=True)
        result[name] = run_trl(name, work, model_dir, pairs, a) if name in TRL_MODES else run_tether(name, work, model_dir, pairs, a)

    print(
        f"\nDPO, {a.model} model: {a.steps} steps x {a.batch_size} HH harmless pairs, prompt <= {a.max_prompt_tokens}, "
        f"response <= {a.max_response_tokens} tokens, fp32, {a.threads or 'default'} thread(s)"
    )
    print(f"{'run':<18} {'pairs':>6} {'seconds':>8} {'pairs/s':>8} {'peak RSS GB':>12}")
    for name in runs:
        r = result[name]
        print(f"{name:<18} {r['pairs_seen']:>6} {r['train_seconds']:>8.2f} {r['train_pairs_per_second']:>8.2f} {r['peak_rss_gb']:>12.3f}")
    result["ratios"] = {}
    for name, base in BASELINE.items():
        if name in result and base in result:
            ratio = {
                "pairs_per_second": result[name]["train_pairs_per_second"] / result[base]["train_pairs_per_second"],
                "peak_rss": result[name]["peak_rss_gb"] / result[base]["peak_rss_gb"],
            }
            result["ratios"][f"{name} / {base}"] = ratio
            print(f"{name} / {base}: pairs/s x{ratio['pairs_per_second']:.2f}, peak RSS x{ratio['peak_rss']:.2f}")
    for name in runs:  # both sides start at policy == reference: a first loss of log 2 shows they compute the same thing
        first = result[name].get("first_step_loss")
        if first is not None and abs(first - math.log(2)) > 1e-4:
            print(f"warning: {name}'s first loss is {first:.5f}, not log 2")
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {result_path.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
