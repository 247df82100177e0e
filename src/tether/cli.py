"""The `tether` command: one small function per subcommand.

Every training or evaluation command takes `--config FILE.yaml` plus `key=value`
overrides (dotted keys for sections: `lora.enabled=true`, `generation.max_new_tokens=32`).
`--config` also names a shipped config: `--config demo`, `--config ppo/default` or `configs/ppo/default.yaml` from any folder.
Help texts are Markdown (typer's markdown mode), so `[form=rl|bon]` shows as written.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

import tether.eval.overopt
import tether.eval.report
import tether.models.hub
import tether.pipeline
import tether.stages.bon
import tether.stages.collect
import tether.stages.dpo
import tether.stages.evaluate
import tether.stages.grpo
import tether.stages.judge
import tether.stages.ppo
import tether.stages.revise
import tether.stages.reward
import tether.stages.sft
from tether import __version__
from tether import config as C
from tether.cli_base import print_summary as _print_summary
from tether.cli_base import run as run_command
from tether.cli_base import say as _say
from tether.cli_label import label_app
from tether.data.readers import read_demonstrations, read_preferences, read_prompts, write_jsonl
from tether.distributed import apply_launcher
from tether.eval.calibration import reliability_diagram
from tether.models.loading import ModelError, resolve_model
from tether.models.reward_model import load_reward_model
from tether.rewards.functions import RewardFunctionError
from tether.rollout.sampling import load_sampler, sample_responses
from tether.stages.reward import CachedScorer, pair_metrics
from tether.training import keeping_record

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
"""The configs shipped inside the package (the repository's configs/ links here)."""
EVAL_TOOLS = typer.Typer(rich_markup_mode="markdown")
"""`tether eval overopt` and `tether eval frontier`: commands of their own beside `tether eval key=value` (see _Commands)."""


class _Commands(TyperGroup):
    """tether's commands; `tether eval overopt|frontier ...` resolve to EVAL_TOOLS' commands (with their own --help),
    every other `tether eval ...` to the eval command."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if len(args) > 1 and args[0] == "eval" and args[1] in ("overopt", "frontier"):
            tools = typer.main.get_command(EVAL_TOOLS)
            return f"eval {args[1]}", tools.commands[args[1]], args[2:]
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context):
        """Ctrl-C outside a stage (while a command imports torch, say) also ends with one line and exit code 130."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _say("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="tether: RLHF end to end (SFT, preferences, reward model, PPO).",
)
reward_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Reward models: train and evaluate.")
app.add_typer(reward_app, name="reward")
app.add_typer(label_app, name="label")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file, or a shipped one by name (`demo`, `ppo/default`).")


def overrides_arg(example: str):
    """The `key=value` overrides argument; `example` must be valid for the command (tests/test_cli_help.py loads it)."""
    return typer.Argument(None, help=f"key=value overrides (dotted keys for sections), e.g. `{example}`")


ProcessesOpt = typer.Option(
    1,
    "--num-processes",
    min=1,
    help="Data-parallel processes on this machine (gloo on CPU, one GPU each with GPUs); batch_size and grad_accum are per process.",
)


def _run(fn: Callable, *args, resumable: bool = False):
    """`cli_base.run` with the errors of the stages' layers too (a model, a reward function)."""
    return run_command(fn, *args, resumable=resumable, errors=(ModelError, RewardFunctionError))


def _stage(fn: Callable, cfg, resumable: bool = False):
    """`_run` for a command that writes into `cfg.output_dir`: if it fails before writing anything there but its record
    (a mistyped model, an empty data file, Ctrl-C while loading), the folder is left as it was (training.keeping_record)."""

    def go():
        with keeping_record(cfg.output_dir):
            return fn(cfg)

    return _run(go, resumable=resumable)


def config_path(config: Path | None) -> Path | None:
    """`--config` as given when that file exists; else a shipped config it names: `configs/demo.yaml` from another
    folder, `demo.yaml`, `demo`, `ppo/default`. A name that is neither is an error listing the shipped configs."""
    if config is None or config.exists():
        return config
    name = Path(*config.parts[1:]) if config.parts[:1] == ("configs",) else config
    for candidate in (SHIPPED_CONFIGS / name, SHIPPED_CONFIGS / name.with_suffix(".yaml")):
        if not config.is_absolute() and candidate.is_file():
            return candidate
    shipped = sorted(str(p.relative_to(SHIPPED_CONFIGS).with_suffix("")) for p in SHIPPED_CONFIGS.rglob("*.yaml"))
    shipped = [s for s in shipped if not s.startswith("accelerate/")]  # accelerate's own launch configs, not tether's
    raise C.ConfigError(
        f"config file {config}: no such file in {Path.cwd()}{C.did_you_mean(config)}; a shipped config can be named instead: "
        f"{', '.join(shipped)}"
    )


def _load(cls, config: Path | None, overrides: list[str] | None):
    return _run(lambda: C.load_config(cls, config_path(config), overrides or []))


def _version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("tether")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
            version = __version__
        print(f"tether {version}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print tether's version and exit.")):
    """tether: RLHF end to end (SFT, preferences, reward model, PPO)."""


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
        raise typer.Exit(_run(subprocess.run, cmd, resumable=True).returncode)
    _run(apply_launcher, cfg)  # `accelerate launch`: its ZeRO stage (run by tether with FSDP2) and its mixed precision
    _print_summary(_stage(fn, cfg, resumable=True))


@app.command()
def sft(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("optim.lr=1e-4 max_steps=100 lora.enabled=true"),
    num_processes: int = ProcessesOpt,
):
    """Supervised fine-tuning on (prompt, response) demonstrations."""
    _train(tether.stages.sft.train_sft, _load(C.SFTConfig, config, overrides), num_processes)


@app.command()
def collect(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("responses_per_prompt=4 limit=100 generation.max_new_tokens=32"),
):
    """Sample K responses per prompt and label the pairs (simulated annotator)."""
    _print_summary(_stage(tether.stages.collect.collect, _load(C.CollectConfig, config, overrides)))


@reward_app.command("train")
def reward_train(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("optim.lr=5e-5 freeze_layers=10 epochs=2"),
    num_processes: int = ProcessesOpt,
):
    """Train a reward model with the Bradley-Terry loss."""
    _train(tether.stages.reward.train_reward, _load(C.RewardConfig, config, overrides), num_processes)


def _reward_reading(cls, config: Path | None, overrides: list[str] | None, options: dict):
    """The config of `reward eval` / `reward score`: the file and overrides, then the options given (None: not given)."""

    def build():
        cfg = C.load_config(cls, config_path(config), overrides or [])
        given = {k: v for k, v in options.items() if v is not None}
        cfg = C.from_dict(cls, {**dataclasses.asdict(cfg), **given}, where="options: ") if given else cfg  # checked like a file's keys
        for key in ("model", "data"):
            if not getattr(cfg, key):
                raise C.ConfigError(f"no {key} given: pass --{key} PATH (or {key}=PATH, or {key}: in the --config file)")
        return cfg

    return _run(build)


def _reward_eval(cfg: C.RewardEvalConfig) -> dict:
    """`tether reward eval`'s work: the metrics (and the plot, the JSON file)."""
    rm = load_reward_model(cfg.model)
    pairs = read_preferences(C.resolve_path(cfg.data), limit=cfg.limit, **cfg.dataset.read_args())
    scorers = CachedScorer.for_members(rm, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.precision)
    metrics = pair_metrics(scorers, pairs, with_bins=True)
    bins = metrics.pop("bins", None)
    out = Path(cfg.out) if cfg.out else None
    if cfg.plot and bins is not None:
        png = out.with_suffix(".png") if out else Path("reliability.png")
        reliability_diagram({"ece": metrics["ece"], "bins": bins}, png, title=f"{Path(cfg.model).name} on {Path(cfg.data).name}")
        metrics["plot"] = str(png)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


@reward_app.command("eval")
def reward_eval(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("model=runs/reward/model data=pairs.jsonl limit=100"),
    model: str | None = typer.Option(None, "--model", help="Reward model directory (or model=DIR)."),
    data: str | None = typer.Option(None, "--data", help="Preference pairs (JSONL/JSONL.gz) (or data=FILE)."),
    limit: int | None = typer.Option(None, help="Use only the first N pairs."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON object to this file."),
    plot: bool | None = typer.Option(None, "--plot", help="Write a reliability diagram PNG beside --out (or reliability.png)."),
    max_prompt_tokens: int | None = typer.Option(None, help="Prompt tokens kept (cut from the left) [default: 192]."),
    max_response_tokens: int | None = typer.Option(None, help="Response tokens kept [default: 128]."),
    precision: str | None = typer.Option(None, help="bf16, fp16 or fp32 [default: bf16]."),
):
    """Judge a reward model on preference pairs; prints one JSON object (accuracy, n, ece, mean_margin, length_corr).

    The options and `key=value` overrides (or a `--config` file) set the same fields (RewardEvalConfig); an option given wins.
    """
    cfg = _reward_reading(
        C.RewardEvalConfig,
        config,
        overrides,
        {
            "model": model,
            "data": data,
            "limit": limit,
            "out": None if out is None else str(out),
            "plot": plot,
            "max_prompt_tokens": max_prompt_tokens,
            "max_response_tokens": max_response_tokens,
            "precision": precision,
        },
    )
    print(json.dumps(_run(_reward_eval, cfg)))


def _reward_score(cfg: C.RewardScoreConfig) -> dict:
    """`tether reward score`'s work: score every row, write them with the score column."""
    import torch

    rm = load_reward_model(cfg.model)
    rows = read_demonstrations(C.resolve_path(cfg.data), **cfg.dataset.read_args())
    prompts, responses = [r.prompt for r in rows], [r.response for r in rows]
    scorers = CachedScorer.for_members(rm, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.precision)
    members = torch.stack([s(prompts, responses) for s in scorers])
    scores = members.mean(0).tolist()
    spread = members.std(0, correction=0).tolist()
    target = Path(cfg.out) if cfg.out else Path(str(C.resolve_path(cfg.data)).removesuffix(".gz").removesuffix(".jsonl") + ".scored.jsonl")
    extra = (lambda i: {f"{cfg.column}_std": spread[i]}) if len(members) > 1 else (lambda i: {})  # noqa: E731
    write_jsonl(target, [{**r.to_dict(), cfg.column: s, **extra(i)} for i, (r, s) in enumerate(zip(rows, scores))])
    return {"scored": len(rows), "out": str(target), "mean": sum(scores) / max(len(scores), 1)}


@reward_app.command("score")
def reward_score(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("model=runs/reward/model data=samples.jsonl column=rm_score"),
    model: str | None = typer.Option(None, "--model", help="Reward model directory (or model=DIR)."),
    data: str | None = typer.Option(None, "--data", help="Prompt/response JSONL (any demonstration format) (or data=FILE)."),
    out: Path | None = typer.Option(None, "--out", help="Output JSONL (default: DATA with .scored.jsonl)."),
    column: str | None = typer.Option(None, help="Name of the score column [default: reward]."),
    max_prompt_tokens: int | None = typer.Option(None, help="Prompt tokens kept (cut from the left) [default: 192]."),
    max_response_tokens: int | None = typer.Option(None, help="Response tokens kept [default: 128]."),
    precision: str | None = typer.Option(None, help="bf16, fp16 or fp32 [default: bf16]."),
):
    """Score every (prompt, response) row with a reward model and write the score back as a column.

    The options and `key=value` overrides (or a `--config` file) set the same fields (RewardScoreConfig); an option given wins.
    """
    cfg = _reward_reading(
        C.RewardScoreConfig,
        config,
        overrides,
        {
            "model": model,
            "data": data,
            "out": None if out is None else str(out),
            "column": column,
            "max_prompt_tokens": max_prompt_tokens,
            "max_response_tokens": max_response_tokens,
            "precision": precision,
        },
    )
    print(json.dumps(_run(_reward_score, cfg)))


@app.command()
def ppo(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("steps=50 kl.target=6 generation.max_new_tokens=32"),
    num_processes: int = ProcessesOpt,
):
    """PPO against a reward model under a KL penalty to the reference."""
    _train(tether.stages.ppo.train_ppo, _load(C.PPOConfig, config, overrides), num_processes)


@app.command()
def grpo(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("'reward=[{type: function, path: my_rewards.py:score}]' advantage=rloo group_size=8"),
    num_processes: int = ProcessesOpt,
):
    """GRPO, RLOO or REINFORCE with a baseline (advantage=grpo|rloo|reinforce): G samples per prompt, no value model."""
    _train(tether.stages.grpo.train_grpo, _load(C.GRPOConfig, config, overrides), num_processes)


@app.command()
def dpo(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("loss=ipo beta=0.1 optim.lr=5e-7"),
    num_processes: int = ProcessesOpt,
):
    """Direct preference optimisation on preference pairs (DPO, IPO, hinge, conservative); online rounds with online=true."""
    _train(tether.stages.dpo.run_dpo, _load(C.DPOConfig, config, overrides), num_processes)


@app.command("eval")
def evaluate(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("policy=runs/demo/ppo/model baseline=runs/demo/sft/model limit=50"),
):
    """Compare a policy with a baseline on held-out prompts (win rates by judge, KL, proxy and gold reward, lengths, diversity, hacks).

    Also: `tether eval overopt RUN_DIR [form=rl|bon] [out=PNG]` fits Gao et al.'s over-optimisation curve to the run's
    held-out checks; `tether eval frontier RUN_DIR... [out=PNG] [metric=gold|proxy]` plots reward against KL for several runs
    (each has its own `--help`).
    """
    summary = _stage(tether.stages.evaluate.evaluate, _load(C.EvalConfig, config, overrides))
    if summary is None:  # judge=people: the pairs are queued; the message said how to label them
        raise typer.Exit(1)
    _print_summary(summary)


@EVAL_TOOLS.command("overopt")
def eval_overopt(
    run_dir: str = typer.Argument(..., metavar="RUN_DIR", help="A PPO run's output_dir, or a `tether run` or `tether bon` directory."),
    options: list[str] | None = typer.Argument(None, metavar="KEY=VALUE", help="form=rl|bon (the fit's form), out=PNG (the plot's path)."),
):
    """Fit Gao et al.'s (2022) over-optimisation curve, gold reward against sqrt(KL), to a run's held-out checks and plot it.

    `form=rl` (R = d(alpha - beta log d), for RL) or `form=bon` (R = d(alpha - beta d), for best-of-n); by default the one that
    fits the run's kind. `out=PNG` names the plot (default: overopt.png in RUN_DIR). Prints the fitted coefficients as JSON.

    Example: `tether eval overopt runs/demo form=rl out=overopt.png`
    """
    _print_summary(_run(tether.eval.overopt.command, ["overopt", run_dir, *(options or [])]))


@EVAL_TOOLS.command("frontier")
def eval_frontier(
    args: list[str] = typer.Argument(
        ..., metavar="RUN_DIR... KEY=VALUE", help="One or more PPO run directories, then out=PNG, metric=gold|proxy."
    ),
):
    """Plot reward against KL(policy || reference) for several runs, one line per run through its held-out checks.

    `metric=gold` (the default) or `metric=proxy` picks the reward; `out=PNG` names the plot (default: frontier.png).

    Example: `tether eval frontier runs/ppo_beta0.05 runs/ppo_beta0.1 metric=gold out=frontier.png`
    """
    _print_summary(_run(tether.eval.overopt.command, ["frontier", *args]))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A `tether run` directory.")):
    """Rebuild RUN_DIR/report.html (self-contained: plots inline, no external resources) from the run's files."""
    print(_run(tether.eval.report.write_html_report, run_dir))


def _generate(cfg: C.GenerateConfig) -> None:
    """`tether generate`'s work: sample, write the JSONL file, print each row."""
    path = resolve_model(cfg.model)
    tokenizer, model = load_sampler(path, cfg)
    records = read_prompts(C.resolve_path(cfg.prompts), limit=cfg.limit, **cfg.dataset.read_args())
    samples = sample_responses(model, tokenizer, [r.prompt for r in records], cfg.generation, cfg.seed, cfg.precision)
    rows = [{"prompt": r.prompt, **s} for r, s in zip(records, samples)]
    write_jsonl(cfg.output, rows)
    for row in rows:
        print(json.dumps(row))


@app.command()
def generate(config: Path | None = ConfigOpt, overrides: list[str] | None = overrides_arg("limit=5 generation.temperature=0.7")):
    """Sample responses for a prompts file and write them as JSONL."""
    _run(_generate, _load(C.GenerateConfig, config, overrides))


@app.command()
def judge(config: Path | None = ConfigOpt, overrides: list[str] | None = overrides_arg("limit=100 min_strength=0.2")):
    """Label candidate pairs with an LLM judge (RLAIF): the letter's next-token probability, both orders averaged."""
    _print_summary(_stage(tether.stages.judge.run_judge, _load(C.JudgeConfig, config, overrides)))


@app.command()
def revise(config: Path | None = ConfigOpt, overrides: list[str] | None = overrides_arg("limit=20 rounds=2")):
    """Constitutional AI: answer, critique by a sampled principle, revise; (original, revision) become (rejected, chosen)."""
    _print_summary(_stage(tether.stages.revise.run_revise, _load(C.ReviseConfig, config, overrides)))


@app.command()
def bon(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("'reward=[{type: model, path: runs/reward/model}]' n=8 limit=50"),
):
    """Best-of-N: sample N responses per prompt, keep the reward source's best; reports the gain and the KL bound."""
    _print_summary(_stage(tether.stages.bon.best_of_n, _load(C.BoNConfig, config, overrides)))


@app.command()
def rs(
    config: Path | None = ConfigOpt,
    overrides: list[str] | None = overrides_arg("'reward=[{type: model, path: runs/reward/model}]' n=4 rounds=2"),
):
    """Rejection-sampling fine-tuning (Llama 2): in rounds, keep the best of N per prompt and SFT the policy on it."""
    _print_summary(_stage(tether.stages.bon.rejection_sampling, _load(C.RSConfig, config, overrides), resumable=True))


def default_demo_config() -> Path:
    """The shipped demo config (inside the package, also reachable as configs/demo.yaml in the repo)."""
    return SHIPPED_CONFIGS / "demo.yaml"


@app.command()
def run(
    config: Path | None = typer.Argument(None, help="Run config YAML, or a shipped one by name (`demo`)."),
    overrides: list[str] | None = overrides_arg("ppo.steps=10 sft.optim.lr=1e-4 output_dir=runs/mine"),
    config_opt: Path | None = typer.Option(None, "--config", "-c", help="Run config YAML (same as the argument)."),
):
    """The whole line: SFT -> collect -> reward -> PPO -> eval, and report.md.

    Example: `tether run --config configs/demo.yaml model=/path/to/model output_dir=runs/mine`
    (an interrupted run resumes when the same command is run again).
    """
    if config is not None and "=" in str(config):  # `tether run key=value` with --config
        overrides, config = [str(config)] + list(overrides or []), None
    cfg = _load(C.RunConfig, config or config_opt, overrides)
    result = _stage(tether.pipeline.run_pipeline, cfg, resumable=True)
    if result is None:
        raise typer.Exit(1)
    report = Path(cfg.output_dir) / "report.md"
    if report.exists():
        print(report.read_text())


@app.command()
def demo(
    config: Path | None = typer.Option(None, "--config", "-c", help="Run config YAML in place of the shipped demo config."),
    overrides: list[str] | None = overrides_arg("ppo.steps=10 output_dir=runs/demo2"),
):
    """Run the shipped demo: RLHF on SmolLM2-135M-Instruct with a simulated annotator.

    Example: `tether demo ppo.steps=10 output_dir=runs/demo2`
    """
    cfg = _load(C.RunConfig, config or default_demo_config(), overrides)
    result = _stage(tether.pipeline.run_pipeline, cfg, resumable=True)
    if result is None:
        raise typer.Exit(1)
    report = Path(cfg.output_dir) / "report.md"
    if report.exists():
        print(report.read_text())


@app.command()
def push(
    source: Path = typer.Argument(..., help="A saved model folder, or a run folder (its final model is pushed)."),
    repo: str = typer.Option(..., "--repo", help="The hub repository, org/name (created when it does not exist)."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    revision: str | None = typer.Option(None, "--revision", help="The branch to push to (created from main when new); default main."),
):
    """Upload a model to the Hugging Face hub (huggingface_hub; the token of `hf auth login` or HF_TOKEN), its model card
    naming the repository. A run folder means its final model: `model/` of a stage's run, the final policy of an
    online-DPO or rejection-sampling run or of a `tether run` (the last round's ppo/model); the folder pushed is printed.

    Example: `tether push runs/sft --repo my-org/my-sft-model --private`
    """
    _print_summary(_run(tether.models.hub.push, source, repo, private, revision))


@app.command("config")
def show_config(
    stage: str = typer.Argument(..., help=f"One of: {', '.join(C.STAGES)}."),
    as_yaml: bool = typer.Option(
        False, "--yaml", help="Print a YAML config instead: every key at its default, its meaning as a comment above it."
    ),
):
    """Every key of a stage's config with its type, default and meaning, e.g. `tether config ppo`. Set a key with
    key=value after the stage's command, or in its --config file."""
    cls = _run(C.stage_config, stage)
    print(C.commented_yaml(cls) if as_yaml else C.describe_text(cls), end="")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
