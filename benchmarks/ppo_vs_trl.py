"""Benchmark: tether's PPO against TRL 1.10.0's PPOTrainer, side by side, on one model.

Builds, under runs/bench/ppo_vs_trl/ (runs/bench/ppo_vs_trl_default/ with `--model default`):
  * model/     the test suite's tiny Llama (2 layers, width 32) and tokenizer, from
               `build_tiny_model_dir` in tests/conftest.py (pad <|endoftext|> != eos <|im_end|>);
               with `--model default`, the default model (SmolLM2-135M-Instruct) instead;
  * reward/    a reward model initialised from it (`init_reward_model` + `save_model` + an identity
               `RewardNormalization`), a LlamaForSequenceClassification that TRL loads as is;
  * prompts.jsonl  64 short prompts ({"prompt": ...}).
Then runs, one after another, each in a fresh process:
  * tether_lora  `tether ppo` as shipped: LoRA policy, reference = adapter off, value = a head on
                 the policy trunk, one frozen reward model;
  * tether_four  `tether ppo lora.enabled=false value_model=reward_model`: a full policy, a frozen
                 reference copy, a value model copied from the reward model, the reward model --
                 four full models, the layout TRL uses;
  * trl          benchmarks/trl_ppo.py in .venv-trl110 (TRL 1.10.0, four full models);
  * trl_lora     the same with a LoRA policy (peft, tether's adapter settings) and the reference taken from
                 the policy with its adapter off: TRL's closest layout to tether_lora (the value model
                 stays a full copy of the reward model, as TRL has no value head on the policy);
  * trl_nogc     the same as trl with `--skip-gc-collect`: TRL calls gc.collect() twice per rollout, a
                 fixed ~0.2 s each here that dominates on a tiny model; this run shows how much
                 of the gap is that (it is not TRL as shipped; the ratios are against `trl`).
All three: the same prompts, `batch_size` episodes per rollout, minibatches of `mini_batch_size`
(one optimizer step each), 1 PPO epoch, up to `response_length` new tokens at temperature 1
stopping only at EOS, fp32, lr 1e-4, a fixed KL coefficient of 0.05 (tether runs with
`kl.adaptive=false`: TRL has no adaptive controller).

Timing, like for like: TRL's figure times `trainer.train()` only, after the models are loaded;
tether's summary.json `seconds` also covers loading the models and saving the final policy, so
tether's episodes/s here is `episodes / sum(time/step_s)` over metrics.jsonl (each step: rollout,
scoring, GAE, update, metrics), and the all-in figure from summary.json is kept beside it as
`episodes_per_second_all_in`. Peak RSS is ru_maxrss of each whole process (models included) on
both sides. Ratios are tether / TRL: episodes/s above 1 means tether is faster; peak RSS below 1
means tether uses less memory.

On the tiny model the figures measure the frameworks' per-step overhead more than model compute
(`--model default` measures the compute); on a shared or busy machine they are only indicative. Every run gets one torch thread
(`--threads 1`, via OMP_NUM_THREADS): on matrices this small intra-op threads only add
synchronisation, and when the cores are busy two threads per process oversubscribe them badly
(TRL took ~13 s a rollout with torch's default 2 threads on a loaded 2-core machine, ~0.5 s with
one). Peak RSS here is mostly the imported libraries (torch, transformers; TRL adds datasets,
pandas, accelerate), not the models; benchmarks/ppo_memory.py measures model memory.

    bash benchmarks/trl_ppo_env.sh          # once: .venv-trl110 with TRL 1.10.0
    .venv/bin/python benchmarks/ppo_vs_trl.py [--model tiny|default] [--steps 10] [--batch-size 16] [--mini-batch-size 8]
        [--response-length 40] [--threads 1] [--runs tether_lora,tether_four,trl,trl_nogc]

Writes runs/bench/ppo_vs_trl.json (runs/bench/ppo_vs_trl_default.json with `--model default`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from launch import load_conftest, run_json, run_logged  # benchmarks/launch.py

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench" / "ppo_vs_trl"
RESULT = ROOT / "runs" / "bench" / "ppo_vs_trl.json"
TRL_PYTHON = ROOT / ".venv-trl110" / "bin" / "python"
TETHER = Path(sys.executable).with_name("tether")

TETHER_MODES = {
    "tether_lora": ["lora.enabled=true", "value_model=policy_head"],
    "tether_four": ["lora.enabled=false", "value_model=reward_model"],
}


def build_inputs(n_prompts: int, model: str) -> tuple[Path, Path, Path]:
    """The policy dir (the tiny model, or the default model's cached dir), a reward model dir initialised from it,
    and a prompts file (rebuilt each run)."""
    from tether.models.loading import load_tokenizer, resolve_model, save_model
    from tether.models.reward_model import RewardNormalization, init_reward_model, save_normalization

    conftest = load_conftest()
    model_dir, reward_dir, prompts = WORK / "model", WORK / "reward", WORK / "prompts.jsonl"
    for d in (model_dir, reward_dir):
        shutil.rmtree(d, ignore_errors=True)
    if model == "default":
        model_dir = Path(resolve_model("default"))
    else:
        model_dir.mkdir(parents=True)
        conftest.build_tiny_model_dir(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    save_model(init_reward_model(str(model_dir), tokenizer.pad_token_id), tokenizer, reward_dir)
    save_normalization(reward_dir, RewardNormalization())
    styles = [
        "{q}",
        "Please answer briefly: {q}",
        "{q} Keep it short.",
        "A friend asks: {q}",
        "{q} Explain it to a child.",
        "Task {i}: {q}",
    ]
    rows = [
        {"prompt": styles[i % len(styles)].format(q=conftest.INSTRUCTIONS[i % len(conftest.INSTRUCTIONS)], i=i)} for i in range(n_prompts)
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, reward_dir, prompts


def run_tether(mode: str, model_dir: Path, reward_dir: Path, prompts: Path, a) -> dict:
    out = WORK / mode
    shutil.rmtree(out, ignore_errors=True)  # a leftover checkpoint would make tether resume
    cmd = [
        str(TETHER),
        "ppo",
        f"policy={model_dir}",
        f"reward=[{{type: model, path: '{reward_dir}'}}]",
        f"prompts={prompts}",
        f"output_dir={out}",
        f"steps={a.steps}",
        f"batch_size={a.batch_size}",
        f"mini_batch_size={a.mini_batch_size}",
        "ppo_epochs=1",
        f"micro_batch_size={a.mini_batch_size}",  # TRL runs each minibatch in one pass here: the same work
        f"generation.max_new_tokens={a.response_length}",
        f"generation.batch_size={a.batch_size}",
        "generation.temperature=1.0",
        "generation.top_p=1.0",
        "precision=fp32",
        "save_every=0",
        "samples_every=0",
        "kl.adaptive=false",
        "kl.init_beta=0.05",
        "optim.lr=1e-4",
        *TETHER_MODES[mode],
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    run_logged(cmd, WORK / f"{mode}.log", a.threads)
    summary = json.loads((out / "summary.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    step_seconds = sum(s["time/step_s"] for s in steps)
    return {
        "episodes": summary["episodes"],
        "seconds": step_seconds,
        "episodes_per_second": summary["episodes"] / step_seconds,
        "peak_rss_gb": summary["peak_rss_gb"],
        "seconds_all_in": summary["seconds"],
        "episodes_per_second_all_in": summary["episodes"] / summary["seconds"],
        "rollout_seconds": sum(s["time/rollout_s"] for s in steps),
        "mean_response_length": sum(s["rollout/length"] for s in steps) / len(steps),
        "trainable_params": summary["trainable_params"],
        "command": " ".join(cmd),
    }


def run_trl(model_dir: Path, reward_dir: Path, prompts: Path, a, skip_gc: bool = False, lora: bool = False) -> dict:
    if not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON} not found: run `bash benchmarks/trl_ppo_env.sh` (or `make bench-trl-ppo-env`) first")
    cmd = [
        str(TRL_PYTHON),
        str(ROOT / "benchmarks" / "trl_ppo.py"),
        "--model-dir",
        str(model_dir),
        "--reward-dir",
        str(reward_dir),
        "--prompts",
        str(prompts),
        "--steps",
        str(a.steps),
        "--batch-size",
        str(a.batch_size),
        "--mini-batch-size",
        str(a.mini_batch_size),
        "--response-length",
        str(a.response_length),
        "--output-dir",
        str(WORK / "trl"),
        *(["--skip-gc-collect"] if skip_gc else []),
        *(["--lora"] if lora else []),
    ]
    return run_json(cmd, WORK / ("trl_nogc.log" if skip_gc else "trl_lora.log" if lora else "trl.log"), a.threads)


def main(argv=None) -> dict:
    global WORK, RESULT
    ap = argparse.ArgumentParser(description="tether PPO vs TRL 1.10.0 PPOTrainer on a tiny model (or the default model)")
    ap.add_argument("--model", choices=["tiny", "default"], default="tiny", help="the test suite's tiny model, or SmolLM2-135M-Instruct")
    ap.add_argument("--steps", type=int, default=10, help="rollouts per run")
    ap.add_argument("--batch-size", type=int, default=16, help="episodes per rollout")
    ap.add_argument("--mini-batch-size", type=int, default=8, help="episodes per optimizer step")
    ap.add_argument("--response-length", type=int, default=40, help="max new tokens")
    ap.add_argument("--prompts", type=int, default=64, help="number of prompts written")
    ap.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS/MKL_NUM_THREADS for every run (0 = torch's default, one per core)"
    )
    ap.add_argument("--runs", default="tether_lora,tether_four,trl,trl_nogc", help="which runs, comma-separated")
    a = ap.parse_args(argv)
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = set(runs) - {*TETHER_MODES, "trl", "trl_lora", "trl_nogc"}
    if unknown:
        ap.error(f"unknown runs: {sorted(unknown)}")

    if a.model == "default":
        WORK, RESULT = WORK.with_name("ppo_vs_trl_default"), RESULT.with_name("ppo_vs_trl_default.json")
    WORK.mkdir(parents=True, exist_ok=True)
    model_dir, reward_dir, prompts = build_inputs(a.prompts, a.model)
    result: dict = {
        "settings": {
            "steps": a.steps,
            "batch_size": a.batch_size,
            "mini_batch_size": a.mini_batch_size,
            "response_length": a.response_length,
            "prompts": a.prompts,
            "ppo_epochs": 1,
            "lr": 1e-4,
            "kl_coef": 0.05,
            "precision": "fp32",
            "threads": a.threads or None,
            "model": str(model_dir) if a.model == "default" else "tests/conftest.py build_tiny_model_dir",
        }
    }
    for name in runs:
        print(f"running {name} ...", flush=True)
        result[name] = (
            run_trl(model_dir, reward_dir, prompts, a, skip_gc=name == "trl_nogc", lora=name == "trl_lora")
            if name.startswith("trl")
            else run_tether(name, model_dir, reward_dir, prompts, a)
        )

    print(
        f"\nPPO, {a.model} model: {a.steps} rollouts x {a.batch_size} episodes, minibatch {a.mini_batch_size}, "
        f"{a.response_length} new tokens, fp32"
    )
    print(f"{'run':<12} {'episodes':>8} {'seconds':>8} {'episodes/s':>11} {'peak RSS GB':>12}")
    for name in runs:
        r = result[name]
        print(f"{name:<12} {r['episodes']:>8} {r['seconds']:>8.2f} {r['episodes_per_second']:>11.2f} {r['peak_rss_gb']:>12.3f}")
    for base, key, names in (
        ("trl", "ratios", TETHER_MODES),
        ("trl_lora", "ratios_vs_trl_lora", ["tether_lora"]),
        ("trl_nogc", "ratios_vs_trl_nogc", TETHER_MODES),
    ):
        if base not in result:
            continue
        result[key] = {}
        for name in names:
            if name in result:
                ratio = {
                    "episodes_per_second": result[name]["episodes_per_second"] / result[base]["episodes_per_second"],
                    "peak_rss": result[name]["peak_rss_gb"] / result[base]["peak_rss_gb"],
                }
                result[key][name] = ratio
                print(f"{name} / {base}: episodes/s x{ratio['episodes_per_second']:.2f}, peak RSS x{ratio['peak_rss']:.2f}")
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {RESULT.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
