"""Benchmark: a reward model on real human preferences (HH-RLHF harmless), tether against TRL.

Trains the shipped `configs/reward/hh_harmless.yaml` with tether, then the same reward
model with TRL 1.16's `RewardTrainer` (benchmarks/trl_reward.py: same trunk, head init,
frozen blocks, token ids, batch, learning rate, schedule, epochs and precision). Each
side runs alone in its own process, one after the other, so neither slows the other and
each peak RSS is its own. Printed, and written to runs/bench/reward_hh.json:

- held-out accuracy on the 300 test pairs with its 95% Wilson interval, ECE and the
  reward-length correlation (published small reward models reach about 0.6-0.7 on HH;
  people agree with each other on about 0.62-0.73 of it);
- training throughput in pairs per second (the training loop only) and the ratio
  tether / TRL; wall time of the whole tether stage; peak RSS of each side.

    python benchmarks/reward_hh.py [--skip-trl] [key=value ...]     (overrides go to the tether config)
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "src" / "tether" / "configs" / "reward" / "hh_harmless.yaml"
OUT = ROOT / "runs" / "bench"


def tether_side(overrides: list[str]) -> dict:
    """Train the shipped config in this process; its summary.json has every figure."""
    from tether.config import RewardConfig, load_config
    from tether.stages.reward import train_reward

    return train_reward(load_config(RewardConfig, CONFIG, [f"output_dir={OUT / 'reward_hh_tether'}", *overrides]))


def trl_args(overrides: list[str]) -> list[str]:
    """The TRL run's command line, read off the same config so the two cannot drift apart."""
    from tether.config import RewardConfig, load_config, resolve_path

    cfg = load_config(RewardConfig, CONFIG, overrides)
    if cfg.lora.enabled or cfg.ensemble > 1 or cfg.label_smoothing or cfg.center_rewards_coefficient or cfg.grad_accum > 1:
        raise SystemExit("the TRL side mirrors plain Bradley-Terry with frozen layers; drop LoRA/ensemble/smoothing/centring/accumulation")
    return [
        "--model",
        cfg.model,
        "--train",
        str(resolve_path(cfg.data)),
        "--eval",
        str(resolve_path(cfg.eval_data)),
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        str(cfg.optim.lr),
        "--epochs",
        str(cfg.epochs),
        "--warmup-ratio",
        str(cfg.optim.warmup_ratio),
        "--freeze-layers",
        str(cfg.freeze_layers),
        "--max-prompt-tokens",
        str(cfg.max_prompt_tokens),
        "--max-response-tokens",
        str(cfg.max_response_tokens),
        "--seed",
        str(cfg.seed),
        "--output-dir",
        str(OUT / "reward_hh_trl"),
        *(["--fp32"] if cfg.precision == "fp32" else []),
        *(["--max-steps", str(cfg.max_steps)] if cfg.max_steps else []),
    ]


def run_json(cmd: list[str]) -> dict:
    """Run a side in a fresh process; its last stdout line is its JSON summary."""
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> dict:
    if argv[:1] == ["--tether-side"]:  # the child process of the tether side
        print(json.dumps(tether_side(argv[1:]), default=str))
        return {}
    skip_trl = "--skip-trl" in argv
    overrides = [a for a in argv if a != "--skip-trl"]
    result = {"tether": run_json([sys.executable, __file__, "--tether-side", *overrides])}
    if not skip_trl:
        result["trl"] = run_json([sys.executable, str(ROOT / "benchmarks" / "trl_reward.py"), *trl_args(overrides)])
    t = result["tether"]
    low, high = t["eval_accuracy_ci"]
    lines = [
        f"HH-RLHF harmless reward model, {t['eval_pairs']} held-out pairs, {t['train_pairs']} training pairs, {t['steps']} steps",
        f"  tether: accuracy {t['eval_accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}), ECE {t['eval_ece']:.3f}, "
        f"reward-length corr {t['eval_length_corr']:.2f}; {t['train_pairs_per_second']:.2f} pairs/s; "
        f"stage wall time {t['seconds'] / 60:.1f} min; peak RSS {t['peak_rss_gb']:.2f} GB",
    ]
    if "trl" in result:
        r = result["trl"]
        result["throughput_ratio"] = t["train_pairs_per_second"] / r["train_pairs_per_second"]
        result["accuracy_difference"] = t["eval_accuracy"] - r["eval_accuracy"]
        lines += [
            f"  TRL {r.get('trl_version', '1.16')} RewardTrainer: accuracy {r['eval_accuracy']:.3f}; "
            f"{r['train_pairs_per_second']:.2f} pairs/s; peak RSS {r['peak_rss_gb']:.2f} GB",
            f"  tether / TRL: throughput x{result['throughput_ratio']:.2f}, accuracy {result['accuracy_difference']:+.3f}",
        ]
    print("\n".join(lines))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reward_hh.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
