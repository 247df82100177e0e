"""Benchmark: reward-model accuracy on real human preferences (HH-RLHF harmless).

Trains `configs/reward/hh_harmless.yaml` (any `key=value` overrides are passed on) and
prints the held-out accuracy on the 300 test pairs with its 95% Wilson interval, the
expected calibration error and the reward-length correlation; the same figures go to
`<output_dir>/summary.json`. Published small reward models reach about 0.6-0.7 on HH, and
people agree with each other on about 0.62-0.73 of it.

    python benchmarks/reward_hh.py [key=value ...]
"""

import json
import sys
from pathlib import Path

from tether.config import RewardConfig, load_config
from tether.stages.reward import train_reward

CONFIG = Path(__file__).resolve().parents[1] / "src" / "tether" / "configs" / "reward" / "hh_harmless.yaml"


def main(overrides: list[str]) -> dict:
    cfg = load_config(RewardConfig, CONFIG, overrides)
    s = train_reward(cfg)
    low, high = s["eval_accuracy_ci"]
    print(f"HH-RLHF harmless, {s['eval_pairs']} held-out pairs: accuracy {s['eval_accuracy']:.3f} "
          f"(95% CI {low:.3f} to {high:.3f}); ECE {s['eval_ece']:.3f}; reward-length correlation {s['eval_length_corr']:.3f}; "
          f"{s['train_pairs']} training pairs, {s['steps']} steps, {s['seconds'] / 60:.1f} min")
    print(json.dumps({k: s[k] for k in ("eval_accuracy", "eval_accuracy_ci", "eval_ece", "eval_length_corr", "eval_pairs", "seconds")}))
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
