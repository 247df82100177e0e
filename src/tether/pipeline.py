"""The whole line in one run directory: SFT -> collect -> reward -> PPO -> eval -> report.md.

Each stage reads the previous stage's outputs and writes into its own sub-folder. A stage
whose folder already holds `summary.json` is complete and is skipped, so rerunning the
same command after an interrupt resumes where it stopped (SFT, reward and PPO also resume
mid-stage from their checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tether.config import RunConfig, save_config
from tether.tracking import console, read_summary

STAGES = ("sft", "collect", "reward", "ppo", "eval")


def stage_configs(cfg: RunConfig) -> dict:
    """Each stage's config with its inputs wired to the previous stages' outputs."""
    run = Path(cfg.output_dir)
    sft_model, prefs = str(run / "sft" / "model"), str(run / "collect" / "preferences.jsonl")
    rm_model, ppo_model = str(run / "reward" / "model"), str(run / "ppo" / "model")
    common = {"seed": cfg.seed, "precision": cfg.precision}
    return {
        "sft": dataclasses.replace(cfg.sft, model=cfg.model, output_dir=str(run / "sft"), **common),
        "collect": dataclasses.replace(cfg.collect, model=sft_model, output_dir=str(run / "collect"), **common),
        "reward": dataclasses.replace(cfg.reward, model=sft_model, data=prefs, output_dir=str(run / "reward"),
                                      normalize_data=str(run / "collect" / "samples.jsonl"), **common),
        "ppo": dataclasses.replace(cfg.ppo, policy=sft_model, reward_model=rm_model, output_dir=str(run / "ppo"), **common),
        "eval": dataclasses.replace(cfg.eval, policy=ppo_model, baseline=sft_model, reward_model=rm_model,
                                    output_dir=str(run / "eval"), precision=cfg.precision),
    }


def run_pipeline(cfg: RunConfig) -> dict | None:
    from tether.eval.evaluate import evaluate
    from tether.stages.collect import collect
    from tether.stages.ppo import train_ppo
    from tether.stages.reward import train_reward
    from tether.stages.sft import train_sft

    run = Path(cfg.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    runners = {"sft": train_sft, "collect": collect, "reward": train_reward, "ppo": train_ppo, "eval": evaluate}
    summaries = {}
    for name, stage_cfg in stage_configs(cfg).items():
        done = read_summary(stage_cfg.output_dir)
        if done is not None:
            console.print(f"[dim]{name}: already complete in {stage_cfg.output_dir}, skipping[/dim]")
            summaries[name] = done
            continue
        console.rule(f"[bold]{name}")
        result = runners[name](stage_cfg)
        if result is None:
            console.print(f"{name} stopped before the end; rerun the same command to resume")
            return None
        summaries[name] = result
    report = write_report(run, cfg, summaries)
    console.print(f"report: {report}")
    return summaries


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_report(run: Path, cfg: RunConfig, s: dict) -> Path:
    """report.md: the headline numbers of every stage, read from the stages' summary.json files."""
    sft, col, rm, ppo, ev = (s[k] for k in STAGES)
    ci = ev.get("gold_win_rate_ci") or [None, None]
    kl_target = ppo.get("kl_target")
    band = (0.5 * kl_target, 1.5 * kl_target) if kl_target else None
    in_band = band is not None and band[0] <= ev["kl_policy"] <= band[1]
    lines = [
        f"# tether run: {run}",
        "",
        f"Base model: `{sft['base_model']}`. Every number below was measured by this run; "
        "the stage folders hold `metrics.jsonl`, `summary.json` and `config.yaml`.",
        "",
        "## Headline",
        "",
        f"- PPO policy vs SFT model on {ev['prompts']} held-out prompts, judged by the gold scorer: "
        f"**win rate {_fmt(ev['gold_win_rate'])}** (95% CI {_fmt(ci[0])} to {_fmt(ci[1])}; "
        f"{ev['gold_wins']} wins, {ev['gold_ties']} ties, {ev['gold_losses']} losses).",
        f"- KL(policy || SFT) = **{_fmt(ev['kl_policy'])} ± {_fmt(ev['kl_policy_se'])} nats per response**"
        + (f" (target {_fmt(kl_target, 1)}, band {_fmt(band[0], 1)} to {_fmt(band[1], 1)}: {'inside' if in_band else 'outside'})" if band else ""),
        f"- Reward model held-out accuracy against the simulated labels: **{_fmt(rm['eval_accuracy'])}** "
        f"(95% CI {_fmt((rm.get('eval_accuracy_ci') or [None])[0])} to {_fmt((rm.get('eval_accuracy_ci') or [None, None])[1])}, n = {rm['eval_pairs']}).",
        "",
        "## 1. SFT",
        "",
        f"{sft['train_examples']} demonstrations, {sft['steps']} steps; held-out loss {_fmt(sft['eval_loss_before'])} -> "
        f"**{_fmt(sft['eval_loss'])}** nats/token; {_fmt(sft['seconds'], 0)} s.",
        "",
        "## 2. Preferences",
        "",
        f"{col['prompts']} prompts x {col['samples'] // max(col['prompts'], 1)} samples -> {col['pairs']} pairs labelled by "
        f"`{col['annotator']}`; agreement with the gold ordering {_fmt(col['gold_agreement'])}; "
        f"{_fmt(100 * col['finished_fraction'], 0)}% of samples ended with EOS; {_fmt(col['seconds'], 0)} s.",
        "",
        "## 3. Reward model",
        "",
        f"{rm['train_pairs']} training pairs, {rm['steps']} steps; held-out accuracy **{_fmt(rm['eval_accuracy'])}** "
        f"(train {_fmt(rm['train_accuracy'])}), mean held-out margin {_fmt(rm['eval_mean_margin'])}; normalised on "
        f"{rm['normalization']['fitted_on']} (gain {_fmt(rm['normalization']['gain'])}, bias {_fmt(rm['normalization']['bias'])}); "
        f"{_fmt(rm['seconds'], 0)} s.",
        "",
        "## 4. PPO",
        "",
        f"{ppo['steps']} iterations, {ppo['episodes']} episodes; mean RM reward of the rollouts {_fmt(ppo['reward_first_quarter'])} "
        f"(first quarter of the run) -> {_fmt(ppo['reward_last_quarter'])} (last quarter); KL {_fmt(ppo['kl_last_quarter'])} nats; "
        f"final beta {_fmt(ppo['beta_final'], 4)}; {_fmt(ppo['seconds'], 0)} s.",
        "",
        "## 5. Evaluation (held-out prompts)",
        "",
        "| | SFT | PPO |",
        "|---|---|---|",
        f"| gold score (mean) | {_fmt(ev['gold_baseline'])} | {_fmt(ev['gold_policy'])} |",
        f"| proxy (RM) score (mean) | {_fmt(ev.get('proxy_baseline'))} | {_fmt(ev.get('proxy_policy'))} |",
        f"| KL to SFT (nats/response) | {_fmt(ev['kl_baseline'])} | {_fmt(ev['kl_policy'])} |",
        f"| response tokens (mean) | {_fmt(ev['length_baseline'], 1)} | {_fmt(ev['length_policy'], 1)} |",
        f"| finished with EOS | {_fmt(ev['finished_baseline'])} | {_fmt(ev['finished_policy'])} |",
        f"| distinct-1 | {_fmt(ev['distinct1_baseline'])} | {_fmt(ev['distinct1_policy'])} |",
        f"| distinct-2 | {_fmt(ev['distinct2_baseline'])} | {_fmt(ev['distinct2_policy'])} |",
        "",
        f"Gold win rate {_fmt(ev['gold_win_rate'])}; proxy (RM) win rate {_fmt(ev.get('proxy_win_rate'))}. "
        "A proxy win rate far above the gold one is the signature of reward over-optimisation.",
        "",
    ]
    samples = run / "eval" / "samples.jsonl"
    if samples.exists():
        rows = [json.loads(line) for line in samples.read_text().splitlines()[:3]]
        lines += ["## Samples", ""]
        for r in rows:
            prompt = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
            lines += [f"**Prompt:** {prompt}", "", f"- SFT (gold {_fmt(r['gold_baseline'], 2)}): {r['baseline']}",
                      f"- PPO (gold {_fmt(r['gold_policy'], 2)}): {r['policy']}", ""]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path
