"""The table `make bench` ends with: every ratio the benchmarks measured in this run, read from their JSON files.

Throughput ratios are tether / peer (above 1: tether is faster); memory ratios are tether / peer (below 1: tether
uses less). The targets: throughput at least 1.5x and memory at most 1x the peer's; PPO's shared base at most 0.40
of four separate models. A benchmark that did not run (or failed) is listed as missing. Writes runs/bench/summary.json.

    .venv/bin/python benchmarks/summary.py
"""

from __future__ import annotations

import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "runs" / "bench"


def load(name: str) -> dict | None:
    path = BENCH / name
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[dict]:
    out: list[dict] = []

    def add(benchmark, comparison, throughput=None, memory=None, target="throughput >= 1.5, memory <= 1"):
        out.append(
            {"benchmark": benchmark, "comparison": comparison, "throughput_ratio": throughput, "memory_ratio": memory, "target": target}
        )

    if (r := load("reward_hh.json")) is not None and "throughput_ratio" in r:
        memory = r["tether"].get("peak_rss_gb", 0) / r["trl"]["peak_rss_gb"] if r.get("trl", {}).get("peak_rss_gb") else None
        add("reward model (HH, default model)", f"tether / TRL RewardTrainer ({r['tether']['steps']} steps)", r["throughput_ratio"], memory)
    if (r := load("ppo_vs_trl.json")) is not None:
        for name, ratio in r.get("ratios", {}).items():
            add("PPO (tiny model)", f"{name} / TRL 1.10 PPOTrainer", ratio["episodes_per_second"], ratio["peak_rss"])
        for name, ratio in r.get("ratios_vs_trl_nogc", {}).items():  # the fairer yardstick: TRL without its gc.collect() calls
            add("PPO (tiny model)", f"{name} / the same without gc.collect()", ratio["episodes_per_second"], ratio["peak_rss"])
    if (r := load("ppo_vs_trl_default.json")) is not None:
        for name, ratio in r.get("ratios", {}).items():
            add("PPO (default model)", f"{name} / TRL 1.10 PPOTrainer", ratio["episodes_per_second"], ratio["peak_rss"])
        for name, ratio in r.get("ratios_vs_trl_lora", {}).items():
            add("PPO (default model)", f"{name} / TRL 1.10 PPOTrainer with LoRA", ratio["episodes_per_second"], ratio["peak_rss"])
    if (r := load("grpo_vs_trl.json")) is not None:
        peers = {"tether_grpo": "TRL GRPOTrainer", "tether_rloo": "TRL RLOOTrainer"}
        for name, ratio in r.get("ratios", {}).items():
            add("GRPO / RLOO (tiny model)", f"{name} / {peers.get(name, 'TRL')}", ratio["samples_per_second"], ratio["peak_rss"])
    if (r := load("sft_vs_trl.json")) is not None:
        for name, ratio in r.get("ratios", {}).items():
            add("SFT (tiny model)", name, ratio["samples_per_second"], ratio["peak_rss"])
    if (r := load("dpo_vs_trl.json")) is not None:
        for name, ratio in r.get("ratios", {}).items():
            add("DPO (tiny model)", name, ratio["pairs_per_second"], ratio["peak_rss"])
    if (r := load("rollout_and_flops.json")) is not None:
        add("generation", "tether sampler / model.generate", r["generation_ratio"], target="throughput >= 1.5")
        if "grouped" in r:
            add("generation, prompts x 4 samples", "tether sampler / model.generate", r["grouped"]["ratio"], target="throughput >= 1.5")
        if "decode_floor" in r:
            add(
                "generation bound",
                "HF decode step / its linear layers alone",
                r["decode_floor"]["ratio_bound"],
                target="(any sampler's ceiling)",
            )
        fraction = r["training_step"].get("fraction_of_peak")
        add(
            "SFT step FLOP/s",
            f"{fraction:.0%} of the measured fp32 matmul peak"
            if fraction is not None
            else "not reported: the peak was measured badly (above 100%)",
            target="(reported)",
        )
    if (r := load("ppo_frozen_blocks.json")) is not None:  # step-time ratio as a speed: above 1, recording is faster
        add("PPO step, top 15 of 30 blocks trained", "frozen blocks recorded / recomputed", 1 / r["ratios"]["step"], target="(reported)")
    if (r := load("ppo_memory/result.json")) is not None:
        for setting, modes in r.items():
            if isinstance(modes, dict) and "shared_base" in modes:
                add(
                    f"PPO memory, {setting}",
                    "shared base / four full models",
                    memory=modes["shared_base"]["ratio"],
                    target="memory <= 0.40",
                )
    return out


def main() -> list[dict]:
    table = rows()
    print(f"\n{'benchmark':<34} {'comparison':<52} {'speed':>7} {'memory':>7}  target")
    for row in table:
        fmt = lambda x: f"x{x:.2f}" if isinstance(x, (int, float)) else "-"  # noqa: E731
        print(
            f"{row['benchmark']:<34} {row['comparison']:<52} {fmt(row['throughput_ratio']):>7} {fmt(row['memory_ratio']):>7}  {row['target']}"
        )
    missing = [
        n
        for n in (
            "reward_hh.json",
            "ppo_vs_trl.json",
            "ppo_vs_trl_default.json",
            "grpo_vs_trl.json",
            "sft_vs_trl.json",
            "dpo_vs_trl.json",
            "rollout_and_flops.json",
            "ppo_frozen_blocks.json",
            "ppo_memory/result.json",
        )
        if not (BENCH / n).exists()
    ]
    if missing:
        print("missing (not run, or failed): " + ", ".join(missing))
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "summary.json").write_text(json.dumps({"rows": table, "missing": missing}, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()
