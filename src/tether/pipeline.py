"""The whole line in one run directory: SFT -> collect -> reward -> PPO -> eval -> report.md and report.html.

Each stage reads the previous stage's outputs and writes into its own sub-folder. A stage
whose folder already holds `summary.json` is complete and is skipped, so rerunning the
same command after an interrupt resumes where it stopped (SFT, reward and PPO also resume
mid-stage from their checkpoints). Like make, a rerun with other settings or inputs runs
again, from the start, the first stage whose fingerprint (fingerprint.py: its settings and
the content of its inputs) changed and every stage after it; the others are still skipped.
A stage setting that the wiring below replaces is refused by name (`check_wiring`).

Iterative RLHF (`rounds: N`): round 1 is the line above, in the run directory itself. Each
later round k lives in `round<k>/`:

  1. collect:  fresh samples from the latest policy (round k-1's PPO model), K per prompt
  2. label:    the pairs labelled by `iterate.labeller`: the simulated annotator (collect does it),
               an AI judge (`label/`, tether judge), or people: collect queues the pairs in the
               preference store `iterate.db` and the run stops with the commands to label and to
               resume; rerun, and it goes on once enough of the round's tasks are labelled
  3. reward:   a new reward model from the SFT trunk, trained on every pair so far
               (`round<k>/preferences.jsonl`: round 1's and every later round's labels)
  4. ppo:      PPO from the latest policy (which is also its KL reference) against that reward model
  5. eval:     the new policy against the SFT model, as in round 1
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from tether.config import CollectConfig, ConfigError, JudgeConfig, RewardSourceSettings, RunConfig, reward_model_source, save_config
from tether.data.readers import read_demonstrations, write_jsonl
from tether.data.records import PreferencePair, prompt_text
from tether.eval.report import write_html_report
from tether.feedback.export import majority
from tether.feedback.store import open_store
from tether.fingerprint import recorded_changes
from tether.stages.collect import collect
from tether.stages.evaluate import evaluate
from tether.stages.judge import run_judge
from tether.stages.ppo import train_ppo
from tether.stages.reward import train_reward
from tether.stages.sft import train_sft
from tether.tracking import console, read_summary, write_summary
from tether.training import CHECKPOINT_DIR, make_output_dir

STAGES = ("sft", "collect", "reward", "ppo", "eval")


def stage_configs(cfg: RunConfig) -> dict:
    """Each stage's config with its inputs wired to the previous stages' outputs."""
    run = Path(cfg.output_dir)
    sft_model, prefs = str(run / "sft" / "model"), str(run / "collect" / "preferences.jsonl")
    rm_model, ppo_model = str(run / "reward" / "model"), str(run / "ppo" / "model")
    common = {"seed": cfg.seed, "precision": cfg.precision}
    track = {"tracker": cfg.tracker} if cfg.tracker is not None else {}
    return {
        "sft": dataclasses.replace(cfg.sft, model=cfg.model, output_dir=str(run / "sft"), **common, **track),
        "collect": dataclasses.replace(cfg.collect, model=sft_model, output_dir=str(run / "collect"), **stored(cfg.collect, run), **common),
        "reward": dataclasses.replace(
            cfg.reward,
            model=sft_model,
            data=prefs,
            output_dir=str(run / "reward"),
            normalize_data=str(run / "collect" / "samples.jsonl"),
            **common,
            **track,
        ),
        "ppo": dataclasses.replace(
            cfg.ppo, policy=sft_model, reward=wired_reward(cfg.ppo.reward, rm_model), output_dir=str(run / "ppo"), **common, **track
        ),
        "eval": dataclasses.replace(
            cfg.eval,
            policy=ppo_model,
            baseline=sft_model,
            reward_model=rm_model,
            output_dir=str(run / "eval"),
            precision=cfg.precision,
            **track,
        ),
    }


def wired_reward(given: list[RewardSourceSettings], rm_model: str) -> list[RewardSourceSettings]:
    """PPO's reward in a run: the reward stage's model, as the one `type: model` source. Given one model source (at the
    default path), its other settings are kept (std_coef for an ensemble's mean - k * std, weight); the run sets its path."""
    source = reward_model_source(given) or RewardSourceSettings(type="model", path=rm_model)
    return [dataclasses.replace(source, path=rm_model)]


def wires_path_only(given: list[RewardSourceSettings], default: list[RewardSourceSettings]) -> bool:
    """Whether ppo.reward as given leaves the wiring alone: one model source at the default path (its std_coef or weight
    the user's own)."""
    source = reward_model_source(given)
    return source is not None and source.path == default[0].path


def shown(value) -> str:
    """A setting's value in an error: a list of reward sources as YAML's flow form of their non-default keys."""
    if isinstance(value, list) and value and all(isinstance(v, RewardSourceSettings) for v in value):
        plain = RewardSourceSettings(path="x")
        items = [
            ", ".join(
                f"{f.name}: {getattr(v, f.name)}"
                for f in dataclasses.fields(v)
                if f.name in ("type", "path") or getattr(v, f.name) != getattr(plain, f.name)
            )
            for v in value
        ]
        return "[" + ", ".join("{" + item + "}" for item in items) + "]"
    return str(value)


RUN_KEYS = ("seed", "precision", "tracker", "output_dir")
"""Stage settings `tether run` takes from the run's own top-level keys of the same name."""


def check_wiring(cfg: RunConfig) -> None:
    """Refuse a stage setting that `tether run` sets itself (`stage_configs`), which would otherwise be replaced without a
    word; each is named with the value the run gives it and the top-level key to use instead. A value equal to the field's
    default is no override."""
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(RunConfig) if f.default_factory is not dataclasses.MISSING}
    refused = []
    for name, wired in stage_configs(cfg).items():
        given, default = getattr(cfg, name), defaults[name]
        for f in dataclasses.fields(given):
            value, used = getattr(given, f.name), getattr(wired, f.name)
            if value == used or value == getattr(default, f.name):
                continue
            if (name, f.name) == ("ppo", "reward") and wires_path_only(value, getattr(default, f.name)):
                continue  # the run sets the model source's path; its std_coef and weight are the user's
            if f.name in RUN_KEYS:
                instead = f"set the top-level {f.name}= instead"
            elif (name, f.name) == ("sft", "model"):
                instead = "set the top-level model= instead"
            elif (name, f.name) == ("ppo", "reward"):
                instead = (
                    f"PPO's reward is the reward stage's model; to set its std_coef or weight, give one source "
                    f"{{type: model, path: {getattr(default, f.name)[0].path}, std_coef: k}}"
                )
            else:
                instead = "it is an earlier stage's output; remove it"
            refused.append(f"{name}.{f.name}={shown(value)} (`tether run` sets it to {shown(used)}: {instead})")
    if refused:
        raise ConfigError("these stage settings are set by `tether run` itself and would be ignored: " + "; ".join(refused))


def aside(folder: Path) -> Path:
    """Where a stage's earlier folder waits while the stage runs again (`set_aside`)."""
    return folder.with_name(f".{folder.name}.replaced")


def set_aside(folder: Path) -> None:
    """Move a stage's folder out of the way before it runs again from the start; it is removed once the new run
    completes, and `restore` brings it back if the new run fails before it has progress of its own to keep."""
    shutil.rmtree(aside(folder), ignore_errors=True)
    if folder.exists():
        os.replace(folder, aside(folder))


def restore(folder: Path) -> None:
    """After a stage failed: the folder set aside for it comes back, unless the new run holds a checkpoint (it resumes)."""
    if aside(folder).exists() and not (folder / CHECKPOINT_DIR).exists():
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(aside(folder), folder)


def stored(collect: CollectConfig, here: Path) -> dict:
    """Collect's store settings in a run: the simulated annotator's judgements go to the round's own SQLite store
    (`collect/preferences.db`, where `tether label` and `tether export` can read them), unless the config names a db."""
    return {
        "db": collect.db or str(here / "collect" / "preferences.db"),
        "store_judgements": collect.db is None or collect.store_judgements,
    }


def round_dir(run: Path, k: int) -> Path:
    """Round 1 is the run directory itself; round k >= 2 is `round<k>/` inside it."""
    return run if k == 1 else run / f"round{k}"


def labels_of_round(cfg: RunConfig, k: int) -> Path:
    """The preference pairs round k added: collect's own (simulated annotator) or the label step's (judge, people)."""
    here = round_dir(Path(cfg.output_dir), k)
    if k == 1 or cfg.iterate.labeller == "simulated":
        return here / "collect" / "preferences.jsonl"
    return here / "label" / "preferences.jsonl"


def round_configs(cfg: RunConfig, k: int) -> dict:
    """Round k >= 2: collect from the latest policy, (label,) reward on all pairs so far, PPO from the latest policy, eval."""
    run = Path(cfg.output_dir)
    here, latest = round_dir(run, k), str(round_dir(run, k - 1) / "ppo" / "model")
    sft_model, rm_model = str(run / "sft" / "model"), str(here / "reward" / "model")
    previous_rm = str(round_dir(run, k - 1) / "reward" / "model")
    it = cfg.iterate
    common = {"seed": cfg.seed + k - 1, "precision": cfg.precision}  # fresh samples and prompt order every round
    track = {"tracker": cfg.tracker} if cfg.tracker is not None else {}
    people = it.labeller == "people"
    stages = {
        "collect": dataclasses.replace(
            cfg.collect,
            model=latest,
            output_dir=str(here / "collect"),
            annotator=dataclasses.replace(cfg.collect.annotator, seed=cfg.collect.annotator.seed + k - 1),
            **(
                {"db": it.db, "store_judgements": False, "annotators_per_task": it.annotators_per_task}
                if people
                else stored(cfg.collect, here)
            ),
            **common,
        ),
    }
    if it.labeller == "judge":
        stages["label"] = JudgeConfig(
            model=it.judge_model,
            data=str(here / "collect" / "samples.jsonl"),
            output_dir=str(here / "label"),
            constitution=it.constitution,
            **common,
        )
    elif people:
        stages["label"] = None  # read back from the store by label_from_people
    stages.update(
        {
            "reward": dataclasses.replace(
                cfg.reward,
                model=sft_model if it.reward_from == "sft" else previous_rm,
                data=str(here / "preferences.jsonl"),
                output_dir=str(here / "reward"),
                normalize_data=str(here / "collect" / "samples.jsonl"),
                **common,
                **track,
            ),
            "ppo": dataclasses.replace(
                cfg.ppo, policy=latest, reward=wired_reward(cfg.ppo.reward, rm_model), output_dir=str(here / "ppo"), **common, **track
            ),
            "eval": dataclasses.replace(
                cfg.eval,
                policy=str(here / "ppo" / "model"),
                baseline=sft_model,
                reward_model=rm_model,
                output_dir=str(here / "eval"),
                precision=cfg.precision,
                **track,
            ),
        }
    )
    return stages


def label_from_people(cfg: RunConfig, k: int) -> dict | None:
    """Round k's pairs as people labelled them in the store; None (with the commands to run) while too few are labelled.

    A task counts once it has `iterate.annotators_per_task` non-skip judgements from people
    (human or simulated annotators; an AI judge's votes are left out); their majority is the
    label and ties are left out. Writes `label/preferences.jsonl` and `label/summary.json`.
    """
    it, here = cfg.iterate, round_dir(Path(cfg.output_dir), k)
    answers: dict[str, set[str]] = {}
    for d in read_demonstrations(str(here / "collect" / "samples.jsonl")):
        answers.setdefault(prompt_text(d.prompt), set()).add(d.response)
    with open_store(it.db) as store:
        tasks = [t for t in store.tasks() if not t.is_golden and {t.response_a, t.response_b} <= answers.get(prompt_text(t.prompt), set())]
        ids = {t.id for t in tasks}
        votes: dict[int, list[str]] = {}
        for v in store.votes():
            if v.task_id in ids and v.kind != "judge" and v.choice != "skip":
                votes.setdefault(v.task_id, []).append(v.choice)
    labelled = [t for t in tasks if len(votes.get(t.id, [])) >= it.annotators_per_task]
    if not tasks or len(labelled) < it.min_labelled * len(tasks):
        console.print(
            f"round {k}: {len(labelled)} of {len(tasks)} comparison tasks in {it.db} have {it.annotators_per_task} judgement(s) "
            f"(needed: {it.min_labelled:.0%}). Label them with\n"
            f"  tether label add-annotator NAME --db {it.db}   (once per person; prints their token)\n"
            f"  tether label serve --db {it.db}                (or: tether label simulate --db {it.db})\n"
            f"then resume with: tether run --config {Path(cfg.output_dir) / 'config.yaml'}",
            highlight=False,
            soft_wrap=True,
        )
        return None
    pairs = []
    for t in labelled:
        label = majority(votes[t.id])
        if label == "tie":
            continue
        chosen, rejected = (t.response_a, t.response_b) if label == "A" else (t.response_b, t.response_a)
        pairs.append(PreferencePair(t.prompt, chosen, rejected, meta={"annotator": "people", "task_id": t.id, "votes": len(votes[t.id])}))
    out = here / "label"
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "preferences.jsonl", pairs)
    summary = {
        "stage": "label",
        "labeller": "people",
        "db": it.db,
        "tasks": len(tasks),
        "labelled": len(labelled),
        "pairs": len(pairs),
        "ties": len(labelled) - len(pairs),
        "preferences": str(out / "preferences.jsonl"),
        "seconds": 0.0,
    }
    write_summary(out, summary)
    return summary


def merge_preferences(cfg: RunConfig, k: int) -> int:
    """Every pair of rounds 1..k into `round<k>/preferences.jsonl` (the reward model's data); returns the count."""
    lines = [line for j in range(1, k + 1) for line in labels_of_round(cfg, j).read_text().splitlines() if line.strip()]
    path = round_dir(Path(cfg.output_dir), k) / "preferences.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
    return len(lines)


def run_pipeline(cfg: RunConfig) -> dict | None:
    check_wiring(cfg)
    run = make_output_dir(cfg.output_dir)  # a file or a read-only folder is refused before any model loads
    save_config(cfg, run / "config.yaml")
    runners = {
        "sft": train_sft,
        "collect": collect,
        "reward": train_reward,
        "ppo": train_ppo,
        "eval": evaluate,
        "label": run_judge if cfg.iterate.labeller == "judge" else None,
    }
    plan = [
        (k, name, stage_cfg)
        for k in range(1, cfg.rounds + 1)
        for name, stage_cfg in (stage_configs(cfg) if k == 1 else round_configs(cfg, k)).items()
    ]
    summaries: dict = {"rounds": [{} for _ in range(2, cfg.rounds + 1)]}
    rerun = False  # once a stage runs, every stage after it runs again too: its inputs are new
    for i, (k, name, stage_cfg) in enumerate(plan):
        where = f"round {k}: {name}" if k > 1 else name
        here = summaries if k == 1 else summaries["rounds"][k - 2]
        folder = Path(stage_cfg.output_dir) if stage_cfg is not None else round_dir(run, k) / "label"  # None: labelled by people
        changed = None if rerun or stage_cfg is None else recorded_changes(stage_cfg)
        if changed:
            after = len(plan) - i - 1
            console.print(
                f"{where}: {'; '.join(changed)}; rerunning {name} and the {after} stage{'' if after == 1 else 's'} after it",
                highlight=False,
                soft_wrap=True,
            )
        if (rerun or changed) and stage_cfg is None:
            shutil.rmtree(folder, ignore_errors=True)  # people's labels of earlier pairs: read again from the store
        elif rerun or changed:
            set_aside(folder)  # the stage runs again from the start: no old checkpoint, samples or metrics
        elif (done := read_summary(folder)) is not None:
            console.print(f"[dim]{where}: already complete in {folder}, skipping[/dim]")
            here[name] = done
            continue
        if stage_cfg is None:
            if (result := label_from_people(cfg, k)) is None:
                return None
        else:
            if k > 1 and name == "reward":
                console.print(f"round {k}: the reward model trains on {merge_preferences(cfg, k)} pairs from rounds 1 to {k}")
            console.rule(f"[bold]{where}")
            try:
                result = runners[name](stage_cfg)
            except BaseException:
                restore(folder)
                raise
            if result is None:
                console.print(f"{where} stopped before the end; rerun the same command to resume")
                return None
            shutil.rmtree(aside(folder), ignore_errors=True)  # the new results are complete: the old ones go
        here[name] = result
        rerun = True
    report = write_report(run, cfg, summaries)
    html = write_html_report(run)
    console.print(f"report: {report} and {html}")
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
        + (
            f" (target {_fmt(kl_target, 1)}, band {_fmt(band[0], 1)} to {_fmt(band[1], 1)}: {'inside' if in_band else 'outside'})"
            if band
            else ""
        ),
        f"- Reward model held-out accuracy against the simulated labels: **{_fmt(rm['eval_accuracy'])}** "
        f"(95% CI {_fmt((rm.get('eval_accuracy_ci') or [None])[0])} to {_fmt((rm.get('eval_accuracy_ci') or [None, None])[1])}, n = {rm['eval_pairs']}).",
        "- Time: "
        + f"**{_fmt(sum(float(s[k].get('seconds') or 0.0) for k in STAGES) / 60, 1)} min** in the stages "
        + "("
        + ", ".join(f"{k} {_fmt(float(s[k].get('seconds') or 0.0), 0)} s" for k in STAGES)
        + "; loading the default model and starting each stage come on top).",
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
    rounds = [{"collect": col, "reward": rm, "ppo": ppo, "eval": ev}] + list(s.get("rounds") or [])
    if len(rounds) > 1:
        lines += [
            "## Rounds (iterative RLHF)",
            "",
            "Each round's policy against the SFT model on the same held-out prompts; the reward model of round k is trained "
            "on every pair of rounds 1 to k.",
            "",
            "| round | new pairs | reward-model pairs | RM held-out accuracy | PPO reward (last quarter) | gold win rate vs SFT (95% CI) "
            "| KL to SFT (nats) | proxy win rate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, r in enumerate(rounds, 1):
            new = (r.get("label") or r["collect"])["pairs"]
            ci = r["eval"].get("gold_win_rate_ci") or [None, None]
            lines.append(
                f"| {k} | {new} | {r['reward']['train_pairs'] + r['reward']['eval_pairs']} | {_fmt(r['reward']['eval_accuracy'])} "
                f"| {_fmt(r['ppo']['reward_last_quarter'])} | {_fmt(r['eval']['gold_win_rate'])} ({_fmt(ci[0])} to {_fmt(ci[1])}) "
                f"| {_fmt(r['eval']['kl_policy'])} | {_fmt(r['eval'].get('proxy_win_rate'))} |"
            )
        lines.append("")
    samples = run / "eval" / "samples.jsonl"
    if samples.exists():
        rows = [json.loads(line) for line in samples.read_text().splitlines()[:3]]
        lines += ["## Samples", ""]
        for r in rows:
            prompt = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
            lines += [
                f"**Prompt:** {prompt}",
                "",
                f"- SFT (gold {_fmt(r['gold_baseline'], 2)}): {r['baseline']}",
                f"- PPO (gold {_fmt(r['gold_policy'], 2)}): {r['policy']}",
                "",
            ]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path
