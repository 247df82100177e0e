"""Benchmark: tether's SFT against TRL 1.16's SFTTrainer, side by side, on one model and one data set.

Builds, under runs/bench/sft_vs_trl/:
  * model/       the test suite's tiny Llama (2 layers, width 32) and tokenizer, from
                 `build_tiny_model_dir` in tests/conftest.py (or, with --model default, nothing:
                 SmolLM2-135M-Instruct from tether's cache);
  * demos.jsonl  the first steps x batch_size usable HH-RLHF harmless training pairs, the pairs the DPO
                 benchmark uses, each as a demonstration (the prompt and the chosen reply), so each side
                 sees every demonstration exactly once.
Then runs, each in a fresh process, `--repeats` times, tether and TRL alternating:
  * tether_full  `tether sft lora.enabled=false`: every weight trained (tether's default);
  * trl_full     benchmarks/trl_sft.py: TRL 1.16 SFTTrainer, the same full fine-tuning;
  * tether_lora  `tether sft lora.enabled=true`: LoRA adapters (r 16, alpha 32, every linear layer);
  * trl_lora     benchmarks/trl_sft.py --lora: TRL with the same LoRA settings.
All: the same token ids (tether's `encode_demonstration`: prompt cut to --max-prompt-tokens from the left,
response + EOS to --max-response-tokens; TRL gets them as a tokenized prompt-completion dataset), the loss
on response tokens only (mean over the batch's response tokens), batch_size demonstrations per step,
--steps optimizer steps, AdamW at the same learning rate with cosine decay and 5% warm-up, gradient
clipping at 1, right-padded batches in shuffled order, fp32, one torch thread each (--threads; on a
shared 2-core machine more threads only oversubscribe the cores).

Timing, like for like: TRL's figure times `trainer.train()` only, after the model is loaded and the data
tokenized; tether's is its training loop only: the `time` column of the last step in metrics.jsonl, which
counts from the logger's start just before the loop (with eval_fraction=0 nothing is evaluated before it), so
no loading, no final eval, no saving. Samples per second = steps x batch_size / those seconds; tokens per
second = the response tokens trained on / those seconds (each side counts its own, and they must match).
Peak RSS is ru_maxrss of each whole process, libraries included (TRL also imports datasets, accelerate and
pandas); tether's SFT summary does not record it, so tether runs in a process that prints it as it exits.
Each figure is the median over the repeats (the machine is shared; every run is kept in the JSON). Ratios
are tether / TRL: samples/s above 1 means tether is faster; peak RSS below 1 means tether uses less memory.
The tiny model measures the frameworks' own per-step costs more than model compute; --model default measures
a real 135M model (slower: minutes per side).

    .venv/bin/python benchmarks/sft_vs_trl.py [--model tiny|default] [--steps 50] [--batch-size 8]
        [--repeats 3] [--runs tether_full,trl_full,tether_lora,trl_lora] [--threads 1]

Writes runs/bench/sft_vs_trl.json (runs/bench/sft_vs_trl_default.json with --model default).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import sys
from pathlib import Path

from launch import HH_TRAIN, bench_model, hh_train_pairs, run_json, run_logged  # benchmarks/launch.py

ROOT = Path(__file__).resolve().parents[1]
# The `tether` command, in a process that prints its own peak RSS as the last line of stdout when it exits.
TETHER = [
    sys.executable,
    "-c",
    (
        "import json\nfrom tether.cli import app\nfrom tether.tracking import peak_rss_gb\n"
        "try:\n    app(prog_name='tether')\nfinally:\n    print(json.dumps({'peak_rss_gb': peak_rss_gb()}), flush=True)"
    ),
]
TETHER_MODES = {"tether_full": ["lora.enabled=false"], "tether_lora": ["lora.enabled=true"]}
TRL_MODES = {"trl_full": [], "trl_lora": ["--lora"]}
BASELINE = {"tether_full": "trl_full", "tether_lora": "trl_lora"}


def build_inputs(work: Path, model: str, n_demos: int) -> tuple[str, Path]:
    """The model directory and a file of `n_demos` demonstrations: the first usable HH harmless training pairs'
    prompts and chosen replies."""
    from tether.data.readers import write_jsonl
    from tether.data.records import Demonstration

    path = work / "demos.jsonl"
    write_jsonl(path, [Demonstration(prompt=p.prompt, response=p.chosen) for p in hh_train_pairs(n_demos)])
    return bench_model(work, model), path


def run_tether(mode: str, work: Path, model_dir: str, demos: Path, a, k: int) -> dict:
    out = work / f"{mode}_{k}"
    shutil.rmtree(out, ignore_errors=True)  # a leftover checkpoint would make tether resume
    cmd = [
        *TETHER,
        "sft",
        f"model={model_dir}",
        f"data={demos}",
        f"output_dir={out}",
        f"max_steps={a.steps}",
        f"batch_size={a.batch_size}",
        "grad_accum=1",
        "eval_fraction=0",
        "eval_every=0",
        "precision=fp32",
        "save_every=0",
        f"optim.lr={a.lr}",
        "optim.warmup_ratio=0.05",
        "optim.schedule=cosine",
        f"max_prompt_tokens={a.max_prompt_tokens}",
        f"max_response_tokens={a.max_response_tokens}",
        "lora.r=16",
        "lora.alpha=32",
        *TETHER_MODES[mode],
    ]
    proc = run_logged(cmd, work / f"{mode}_{k}.log", a.threads)
    summary = json.loads((out / "summary.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [s for s in steps if "train/loss" in s]
    seconds = train[-1]["time"]  # from the logger's start, just before the loop, to the last step's row
    samples, tokens = summary["steps"] * a.batch_size, sum(s["train/tokens"] for s in train)
    return {
        "samples_seen": samples,
        "response_tokens": tokens,
        "train_seconds": seconds,
        "train_samples_per_second": samples / seconds,
        "train_tokens_per_second": tokens / seconds,
        "peak_rss_gb": json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_gb"],
        "trainable_params": summary["trainable_params"],
        "truncated": summary["truncated"],
        "first_step_loss": train[0]["train/loss"],
        "last_step_loss": train[-1]["train/loss"],
        "seconds_with_final_eval_and_save": summary["seconds"],
        "command": "tether " + " ".join(cmd[3:]),
    }


def run_trl(mode: str, work: Path, model_dir: str, demos: Path, a, k: int) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "trl_sft.py"),
        "--model-dir",
        model_dir,
        "--demos",
        str(demos),
        "--steps",
        str(a.steps),
        "--batch-size",
        str(a.batch_size),
        "--lr",
        str(a.lr),
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
        str(work / f"{mode}_{k}"),
        *TRL_MODES[mode],
    ]
    return run_json(cmd, work / f"{mode}_{k}.log", a.threads)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="tether SFT vs TRL 1.16 SFTTrainer")
    ap.add_argument("--model", default="tiny", help="'tiny' (the test suite's model, built here) or 'default' (SmolLM2-135M-Instruct)")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per run")
    ap.add_argument("--batch-size", type=int, default=8, help="demonstrations per step")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-prompt-tokens", type=int, default=192)
    ap.add_argument("--max-response-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side (alternating); the median is reported")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS/MKL_NUM_THREADS for every run (0 = torch's default)")
    ap.add_argument("--runs", default="tether_full,trl_full,tether_lora,trl_lora", help="which runs, comma-separated")
    a = ap.parse_args(argv)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = set(runs) - {*TETHER_MODES, *TRL_MODES}
    if unknown:
        ap.error(f"unknown runs: {sorted(unknown)}")
    if set(runs) & set(TRL_MODES) and importlib.util.find_spec("trl") is None:  # fail early, before tether's runs
        raise SystemExit('TRL is not installed: `pip install -e ".[bench]"` installs TRL 1.16')

    suffix = "" if a.model == "tiny" else "_default" if a.model == "default" else "_model"
    work, result_path = ROOT / "runs" / "bench" / f"sft_vs_trl{suffix}", ROOT / "runs" / "bench" / f"sft_vs_trl{suffix}.json"
    work.mkdir(parents=True, exist_ok=True)
    model_dir, demos = build_inputs(work, a.model, a.steps * a.batch_size)
    result: dict = {
        "settings": {
            "model": a.model if a.model != "tiny" else "tests/conftest.py build_tiny_model_dir",
            "steps": a.steps,
            "batch_size": a.batch_size,
            "demonstrations": a.steps * a.batch_size,
            "data": f"{HH_TRAIN} (prompt, chosen)",
            "lr": a.lr,
            "max_prompt_tokens": a.max_prompt_tokens,
            "max_response_tokens": a.max_response_tokens,
            "loss": "response tokens only",
            "precision": "fp32",
            "repeats": a.repeats,
            "threads": a.threads or None,
            "lora": {"r": 16, "alpha": 32},
        }
    }
    trials: dict[str, list[dict]] = {name: [] for name in runs}
    for k in range(a.repeats):
        for name in runs:
            print(f"running {name} ({k + 1}/{a.repeats}) ...", flush=True)
            run = run_trl if name in TRL_MODES else run_tether
            trials[name].append(run(name, work, model_dir, demos, a, k))
    for name in runs:
        rates = [t["train_samples_per_second"] for t in trials[name]]
        result[name] = {
            "samples_seen": trials[name][0]["samples_seen"],
            "response_tokens": trials[name][0]["response_tokens"],
            "train_seconds": statistics.median(t["train_seconds"] for t in trials[name]),
            "train_samples_per_second": statistics.median(rates),
            "train_samples_per_second_runs": rates,
            "train_tokens_per_second": statistics.median(t["train_tokens_per_second"] for t in trials[name]),
            "peak_rss_gb": statistics.median(t["peak_rss_gb"] for t in trials[name]),
            "peak_rss_gb_runs": [t["peak_rss_gb"] for t in trials[name]],
            "trials": trials[name],
        }

    print(
        f"\nSFT, {a.model} model: {a.steps} steps x {a.batch_size} HH harmless demonstrations, prompt <= {a.max_prompt_tokens}, "
        f"response <= {a.max_response_tokens} tokens, fp32, {a.threads or 'default'} thread(s), median of {a.repeats}"
    )
    print(
        f"{'run':<12} {'samples':>7} {'resp. tokens':>12} {'seconds':>8} {'samples/s':>10} {'(runs)':>20} {'tokens/s':>9} {'peak RSS GB':>12}"
    )
    for name in runs:
        r = result[name]
        runs_text = " ".join(f"{x:.1f}" for x in r["train_samples_per_second_runs"])
        print(
            f"{name:<12} {r['samples_seen']:>7} {r['response_tokens']:>12} {r['train_seconds']:>8.2f} {r['train_samples_per_second']:>10.2f} "
            f"{runs_text:>20} {r['train_tokens_per_second']:>9.0f} {r['peak_rss_gb']:>12.3f}"
        )
    result["ratios"] = {}
    for name, base in BASELINE.items():
        if name in result and base in result:
            ratio = {
                "samples_per_second": result[name]["train_samples_per_second"] / result[base]["train_samples_per_second"],
                "tokens_per_second": result[name]["train_tokens_per_second"] / result[base]["train_tokens_per_second"],
                "peak_rss": result[name]["peak_rss_gb"] / result[base]["peak_rss_gb"],
            }
            result["ratios"][f"{name} / {base}"] = ratio
            print(
                f"{name} / {base}: samples/s x{ratio['samples_per_second']:.2f}, tokens/s x{ratio['tokens_per_second']:.2f}, "
                f"peak RSS x{ratio['peak_rss']:.2f}"
            )
            if result[name]["response_tokens"] != result[base]["response_tokens"]:  # the same data must mean the same loss tokens
                print(
                    f"warning: {name} trained on {result[name]['response_tokens']} response tokens, {base} on {result[base]['response_tokens']}"
                )
    for name in runs:
        if name in TRL_MODES and any(t["tokens_fed"] != t["dataset_tokens"] for t in trials[name]):
            print(f"warning: {name} was fed a different number of tokens than its data set holds (not one pass over it)")
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {result_path.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
