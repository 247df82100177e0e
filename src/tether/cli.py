"""The `tether` command: one small function per subcommand.

Every training or evaluation command takes `--config FILE.yaml` plus `key=value`
overrides (dotted keys for sections: `lora.enabled=true`, `generation.max_new_tokens=32`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from tether import config as C

app = typer.Typer(add_completion=False, no_args_is_help=True, help="tether: RLHF end to end (SFT, preferences, reward model, PPO).")
reward_app = typer.Typer(no_args_is_help=True, help="Reward models: train and evaluate.")
app.add_typer(reward_app, name="reward")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file.")
OverridesArg = typer.Argument(None, help="key=value overrides, e.g. lr=1e-4 lora.enabled=true")
ProcessesOpt = typer.Option(1, "--num-processes", min=1, help="Data-parallel processes on this machine (gloo on CPU, one GPU each "
                            "with GPUs); batch_size and grad_accum are per process.")


def _user_errors() -> tuple[type[BaseException], ...]:
    from tether.data.readers import DataError
    from tether.feedback.store import StoreError
    from tether.models.loading import ModelError
    from tether.rewards.functions import RewardFunctionError

    return (C.ConfigError, DataError, ModelError, RewardFunctionError, StoreError, FileNotFoundError)


def _run(fn: Callable, *args):
    """Call a stage; a user error becomes one red sentence and exit code 2, not a traceback."""
    try:
        return fn(*args)
    except _user_errors() as e:
        from rich.markup import escape

        from tether.tracking import console

        console.print(f"[bold red]error:[/bold red] {escape(str(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2)


def _load(cls, config: Optional[Path], overrides: Optional[List[str]]):
    return _run(C.load_config, cls, config, overrides or [])


def _print_summary(summary: dict | None) -> None:
    if summary is not None and int(os.environ.get("RANK", "0")) == 0:  # one process speaks for all
        print(json.dumps(summary, indent=2))


def _train(fn: Callable, cfg, num_processes: int) -> None:
    """Run a training stage here, or (`--num-processes N`, N > 1) in N data-parallel processes started by
    `torch.distributed.run`, each running this same command; the config was checked once, before they start."""
    if num_processes > 1 and "WORLD_SIZE" not in os.environ:
        args, skip = [], False
        for a in sys.argv[1:]:
            if skip:
                skip = False
            elif a == "--num-processes":
                skip = True
            elif not a.startswith("--num-processes="):
                args.append(a)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}", "-m", "tether", *args]
        raise typer.Exit(subprocess.run(cmd).returncode)
    from tether.distributed import apply_launcher

    _run(apply_launcher, cfg)  # `accelerate launch`: its ZeRO stage (run by tether with FSDP2) and its mixed precision
    _print_summary(_run(fn, cfg))


@app.command()
def sft(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, num_processes: int = ProcessesOpt):
    """Supervised fine-tuning on (prompt, response) demonstrations."""
    from tether.stages.sft import train_sft

    _train(train_sft, _load(C.SFTConfig, config, overrides), num_processes)


@app.command()
def collect(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
    """Sample K responses per prompt and label the pairs (simulated annotator)."""
    from tether.stages.collect import collect as run_collect

    _print_summary(_run(run_collect, _load(C.CollectConfig, config, overrides)))


@reward_app.command("train")
def reward_train(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, num_processes: int = ProcessesOpt):
    """Train a reward model with the Bradley-Terry loss."""
    from tether.stages.reward import train_reward

    _train(train_reward, _load(C.RewardConfig, config, overrides), num_processes)


@reward_app.command("eval")
def reward_eval(
    model: str = typer.Option(..., "--model", help="Reward model directory."),
    data: str = typer.Option(..., "--data", help="Preference pairs (JSONL/JSONL.gz)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N pairs."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the JSON object to this file."),
    plot: bool = typer.Option(False, "--plot", help="Write a reliability diagram PNG beside --out (or reliability.png)."),
    max_prompt_tokens: int = typer.Option(192, help="Prompt tokens kept (cut from the left)."),
    max_response_tokens: int = typer.Option(128, help="Response tokens kept."),
    precision: str = typer.Option("bf16", help="bf16, fp16 or fp32."),
):
    """Judge a reward model on preference pairs; prints one JSON object (accuracy, n, ece, mean_margin, length_corr)."""

    def go():
        from tether.data.readers import read_preferences
        from tether.eval.calibration import reliability_diagram
        from tether.models.reward_model import load_reward_model
        from tether.stages.reward import CachedScorer, pair_metrics

        rm = load_reward_model(model)
        pairs = read_preferences(C.resolve_path(data), limit=limit)
        scorers = CachedScorer.for_members(rm, max_prompt_tokens, max_response_tokens, precision)
        metrics = pair_metrics(scorers, pairs, with_bins=True)
        bins = metrics.pop("bins", None)
        if plot and bins is not None:
            png = out.with_suffix(".png") if out else Path("reliability.png")
            reliability_diagram({"ece": metrics["ece"], "bins": bins}, png, title=f"{Path(model).name} on {Path(data).name}")
            metrics["plot"] = str(png)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics

    print(json.dumps(_run(go)))


@reward_app.command("score")
def reward_score(
    model: str = typer.Option(..., "--model", help="Reward model directory."),
    data: str = typer.Option(..., "--data", help="Prompt/response JSONL (any demonstration format)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output JSONL (default: DATA with .scored.jsonl)."),
    column: str = typer.Option("reward", help="Name of the score column."),
    max_prompt_tokens: int = typer.Option(192, help="Prompt tokens kept (cut from the left)."),
    max_response_tokens: int = typer.Option(128, help="Response tokens kept."),
    precision: str = typer.Option("bf16", help="bf16, fp16 or fp32."),
):
    """Score every (prompt, response) row with a reward model and write the score back as a column."""

    def go():
        import torch

        from tether.data.readers import read_demonstrations, write_jsonl
        from tether.models.reward_model import load_reward_model
        from tether.stages.reward import CachedScorer

        rm = load_reward_model(model)
        rows = read_demonstrations(C.resolve_path(data))
        prompts, responses = [r.prompt for r in rows], [r.response for r in rows]
        members = torch.stack([s(prompts, responses) for s in CachedScorer.for_members(rm, max_prompt_tokens, max_response_tokens, precision)])
        scores = members.mean(0).tolist()
        spread = members.std(0, correction=0).tolist()
        target = out or Path(str(C.resolve_path(data)).removesuffix(".gz").removesuffix(".jsonl") + ".scored.jsonl")
        extra = (lambda i: {f"{column}_std": spread[i]}) if len(members) > 1 else (lambda i: {})  # noqa: E731
        write_jsonl(target, [{**r.to_dict(), column: s, **extra(i)} for i, (r, s) in enumerate(zip(rows, scores))])
        return {"scored": len(rows), "out": str(target), "mean": sum(scores) / max(len(scores), 1)}

    print(json.dumps(_run(go)))


@app.command()
def ppo(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, num_processes: int = ProcessesOpt):
    """PPO against a reward model under a KL penalty to the reference."""
    from tether.stages.ppo import train_ppo

    _train(train_ppo, _load(C.PPOConfig, config, overrides), num_processes)


@app.command()
def grpo(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, num_processes: int = ProcessesOpt):
    """GRPO, RLOO or REINFORCE with a baseline (advantage=grpo|rloo|reinforce): G samples per prompt, no value model."""
    from tether.stages.grpo import train_grpo

    _train(train_grpo, _load(C.GRPOConfig, config, overrides), num_processes)


@app.command()
def dpo(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, num_processes: int = ProcessesOpt):
    """Direct preference optimisation on preference pairs (DPO, IPO, hinge, conservative); online rounds with online=true."""
    from tether.stages.dpo import run_dpo

    _train(run_dpo, _load(C.DPOConfig, config, overrides), num_processes)


@app.command("eval")
def evaluate(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
    """Compare a policy with a baseline on held-out prompts (win rates by judge, KL, proxy and gold reward, lengths, diversity, hacks).

    Also: `tether eval overopt RUN_DIR [form=rl|bon] [out=PNG]` fits Gao et al.'s over-optimisation curve to the run's
    held-out checks; `tether eval frontier RUN_DIR... [out=PNG] [metric=gold|proxy]` plots reward against KL for several runs.
    """
    if overrides and overrides[0] in ("overopt", "frontier"):
        from tether.eval.overopt import command

        _print_summary(_run(command, list(overrides)))
        return
    from tether.eval.evaluate import evaluate as run_eval

    summary = _run(run_eval, _load(C.EvalConfig, config, overrides))
    if summary is None:  # judge=people: the pairs are queued; the message said how to label them
        raise typer.Exit(1)
    _print_summary(summary)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A `tether run` directory.")):
    """Rebuild RUN_DIR/report.html (self-contained: plots inline, no external resources) from the run's files."""
    from tether.eval.report import write_html_report

    print(_run(write_html_report, run_dir))


@app.command()
def generate(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
    """Sample responses for a prompts file and write them as JSONL."""

    def go(cfg: C.GenerateConfig):
        from tether.data.readers import read_prompts, write_jsonl
        from tether.models.loading import resolve_model
        from tether.rollout.generate import load_sampler, sample_responses

        path = resolve_model(cfg.model)
        tokenizer, model = load_sampler(path, cfg)
        records = read_prompts(C.resolve_path(cfg.prompts), limit=cfg.limit)
        samples = sample_responses(model, tokenizer, [r.prompt for r in records], cfg.generation, cfg.seed, cfg.precision)
        rows = [{"prompt": r.prompt, **s} for r, s in zip(records, samples)]
        write_jsonl(cfg.output, rows)
        for row in rows:
            print(json.dumps(row))

    _run(go, _load(C.GenerateConfig, config, overrides))


@app.command()
def judge(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
    """Label candidate pairs with an LLM judge (RLAIF): the letter's next-token probability, both orders averaged."""
    from tether.feedback.judge import run_judge

    _print_summary(_run(run_judge, _load(C.JudgeConfig, config, overrides)))


@app.command()
def revise(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
    """Constitutional AI: answer, critique by a sampled principle, revise; (original, revision) become (rejected, chosen)."""
    from tether.feedback.constitution import run_revise

    _print_summary(_run(run_revise, _load(C.ReviseConfig, config, overrides)))


@app.command()
def bon(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
    """Best-of-N: sample N responses per prompt, keep the reward source's best; reports the gain and the KL bound."""
    from tether.stages.bon import best_of_n

    _print_summary(_run(best_of_n, _load(C.BoNConfig, config, overrides)))


@app.command()
def rs(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
    """Rejection-sampling fine-tuning (Llama 2): in rounds, keep the best of N per prompt and SFT the policy on it."""
    from tether.stages.bon import rejection_sampling

    _print_summary(_run(rejection_sampling, _load(C.RSConfig, config, overrides)))


# --------------------------------------------------------------------------- tether label: the preference store

label_app = typer.Typer(no_args_is_help=True, help="People label pairs: annotators, import, export, agreement statistics, a simulated panel.")
app.add_typer(label_app, name="label")
DbOpt = typer.Option(..., "--db", help="Preference store: a SQLite file (created if missing) or a postgresql:// URL.")


def _store(db: str):
    from tether.feedback.store import open_store

    return open_store(db)


@label_app.command("add-annotator")
def label_add_annotator(name: str = typer.Argument(..., help="The annotator's name."), db: str = DbOpt,
                        admin: bool = typer.Option(False, "--admin", help="May open the admin pages."),
                        kind: str = typer.Option("human", help="human, judge or simulated.")):
    """Register an annotator and print their token: it is shown this once (only its SHA-256 is stored)."""

    def go():
        with _store(db) as store:
            return store.add_annotator(name, kind, admin=admin)

    token = _run(go)
    print(token)
    typer.echo(f"the token of {name}: give it to them now, it cannot be shown again", err=True)


@label_app.command("import")
def label_import(file: str = typer.Argument(..., help="Pairs (prompt, chosen, rejected) or samples (prompt, response), JSONL."),
                 db: str = DbOpt,
                 annotators_per_task: int = typer.Option(3, help="Distinct annotators each task asks for."),
                 golden: bool = typer.Option(False, "--golden", help="The pairs are a golden set: 'chosen' is the known answer.")):
    """Load candidate pairs, or samples (every two answers to a prompt become a pair), as comparison tasks."""

    def go():
        from tether.feedback.importing import import_file

        with _store(db) as store:
            return import_file(store, C.resolve_path(file), required=annotators_per_task, golden=golden)

    _print_summary(_run(go))


@label_app.command("guidelines")
def label_guidelines(file: Path = typer.Argument(..., help="Text or Markdown file with the annotation guidelines."), db: str = DbOpt):
    """Put a new version of the annotation guidelines in force (every later judgement records it)."""

    def go():
        with _store(db) as store:
            return {"guidelines_version": store.add_guidelines(file.read_text())}

    _print_summary(_run(go))


@label_app.command("export")
def label_export(db: str = DbOpt, out: Path = typer.Option(..., "--out", help="Preference pairs JSONL for `tether reward train`."),
                 aggregate: str = typer.Option("majority", help="majority (one pair per task) or per_annotator (one per judgement)."),
                 ties: str = typer.Option("drop", help="drop, or keep as pairs with meta.tie = true."),
                 include_golden: bool = typer.Option(False, "--include-golden", help="Also export golden tasks (majority: their known answer).")):
    """Write the judgements as preference pairs (left/right order undone, skips left out)."""

    def go():
        from tether.feedback.export import export_preferences

        with _store(db) as store:
            return export_preferences(store, out, aggregate, ties, include_golden)

    _print_summary(_run(go))


@label_app.command("stats")
def label_stats(db: str = DbOpt, as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
                golden_threshold: float = typer.Option(0.7, help="Flag annotators whose golden-set accuracy is below this.")):
    """Agreement (per pair, Cohen's kappa, Krippendorff's alpha), throughput, position bias and golden-set accuracy."""

    def go():
        from tether.feedback.agreement import stats

        with _store(db) as store:
            return stats(store, golden_threshold)

    out = _run(go)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        from rich.console import Console

        from tether.feedback.agreement import stats_tables

        Console().print(*stats_tables(out))


@label_app.command("simulate")
def label_simulate(db: str = DbOpt,
                   agreement: List[float] = typer.Option([0.9, 0.75, 0.6], help="One simulated annotator per value: its agreement with gold."),
                   gold_spread: float = typer.Option(0.0, help="0: one shared gold; > 0: each annotator's own gold weights, this spread."),
                   limit: Optional[int] = typer.Option(None, help="At most this many judgements per annotator."),
                   seed: int = typer.Option(0, help="Seeds the annotators.")):
    """Label the store's tasks with a panel of simulated annotators (kind 'simulated'), as people would."""

    def go():
        from tether.feedback.panel import default_panel, run_panel

        with _store(db) as store:
            return run_panel(store, default_panel(agreement, gold_spread, seed), limit)

    _print_summary(_run(go))


@label_app.command("serve")
def label_serve(db: str = DbOpt,
                host: str = typer.Option("127.0.0.1", help="Address to listen on (put a TLS proxy in front before leaving loopback)."),
                port: int = typer.Option(8000, help="Port to listen on."),
                golden_rate: float = typer.Option(0.1, help="Share of the pairs handed out that are golden (while any are left)."),
                golden_threshold: float = typer.Option(0.7, help="The statistics flag annotators whose golden-set accuracy is below this.")):
    """The annotation web app: annotators sign in with their token and compare pairs in a browser."""
    import uvicorn

    from tether.feedback.store import open_store
    from tether.feedback.webapp import create_app, uvicorn_log_config

    store = _run(lambda: open_store(db, golden_rate=golden_rate))
    typer.echo(f"tether label: http://{host}:{port}/login (annotators sign in with their token; admins also see /admin/stats)", err=True)
    try:
        # uvicorn trusts X-Forwarded-Proto from 127.0.0.1 only: behind a local TLS proxy (which must pass the
        # Host header on) the cookie is then marked Secure
        uvicorn.run(create_app(store, golden_threshold=golden_threshold), host=host, port=port, log_level="info",
                    server_header=False, log_config=uvicorn_log_config())
    finally:
        store.close()


def default_demo_config() -> Path:
    """The shipped demo config (inside the package, also reachable as configs/demo.yaml in the repo)."""
    return Path(__file__).parent / "configs" / "demo.yaml"


@app.command()
def run(config: Optional[Path] = typer.Argument(None, help="Run config YAML."),
        overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. ppo.steps=10"),
        config_opt: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config YAML (same as the argument).")):
    """The whole line: SFT -> collect -> reward -> PPO -> eval, and report.md."""
    from tether.pipeline import run_pipeline

    if config is not None and "=" in str(config):  # `tether run key=value` with --config
        overrides, config = [str(config)] + list(overrides or []), None
    cfg = _load(C.RunConfig, config or config_opt, overrides)
    result = _run(run_pipeline, cfg)
    if result is None:
        raise typer.Exit(1)
    report = Path(cfg.output_dir) / "report.md"
    if report.exists():
        print(report.read_text())


@app.command()
def demo(overrides: Optional[List[str]] = OverridesArg):
    """Run the shipped demo: RLHF on SmolLM2-135M-Instruct with a simulated annotator."""
    from tether.pipeline import run_pipeline

    cfg = _load(C.RunConfig, default_demo_config(), overrides)
    result = _run(run_pipeline, cfg)
    if result is None:
        raise typer.Exit(1)
    print((Path(cfg.output_dir) / "report.md").read_text())


@app.command("config")
def show_config(stage: str = typer.Argument(..., help=f"One of: {', '.join(C.STAGES)}."),
                as_yaml: bool = typer.Option(False, "--yaml", help="Print a YAML config instead: every key at its default, "
                                             "its meaning as a comment above it.")):
    """Every key of a stage's config with its type, default and meaning, e.g. `tether config ppo`. Set a key with
    key=value after the stage's command, or in its --config file."""
    cls = _run(C.stage_config, stage)
    print(C.commented_yaml(cls) if as_yaml else C.describe_text(cls), end="")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
