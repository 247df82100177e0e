"""Every example a user is shown runs as written: each command's help examples, and every shell line of the README and
the manual (docs/, except the dated records in docs/experiments/ and python-api.md, which tests/test_api.py runs).

Each `tether` line is parsed by the real CLI with the stages replaced by recorders ("dry"): its config file resolves and
its config builds, exactly as the command builds it. The label commands run for real (they are cheap); the manual's
stage-by-stage walkthrough and the first command of each stage's guide also run for real on the tiny model, with only
the model path and sizes substituted. A `make` line names a target of the Makefile and says what tests it; any other
shell line is one of a few commands of other tools (pip, ray, hf, the benchmarks). Every Python snippet runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from tether import config as C
from tether.cli import EVAL_TOOLS, SHIPPED_CONFIGS, app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

STAGES = {  # every function a command hands its config to
    "tether.stages.sft": ["train_sft"],
    "tether.stages.collect": ["collect"],
    "tether.stages.reward": ["train_reward"],
    "tether.stages.ppo": ["train_ppo"],
    "tether.stages.grpo": ["train_grpo"],
    "tether.stages.dpo": ["run_dpo"],
    "tether.stages.bon": ["best_of_n", "rejection_sampling"],
    "tether.stages.evaluate": ["evaluate"],
    "tether.eval.overopt": ["command"],
    "tether.eval.report": ["write_html_report"],
    "tether.stages.judge": ["run_judge"],
    "tether.stages.revise": ["run_revise"],
    "tether.pipeline": ["run_pipeline"],
    "tether.cli": ["_generate", "_reward_eval", "_reward_score"],
    "tether.models.hub": ["push"],
}


# --------------------------------------------------------------------------- the examples


def _commands(command: click.Command, path: tuple[str, ...]):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, path + (name,))


def all_commands() -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command with its path: the typer app's tree, and `eval overopt` / `eval frontier` (resolved by name)."""
    tools = typer.main.get_command(EVAL_TOOLS)
    return [
        *(c for c in _commands(typer.main.get_command(app), ()) if c[0]),
        *((("eval", name), cmd) for name, cmd in tools.commands.items()),
    ]


def help_examples() -> list[tuple[str, list[str]]]:
    """(where, argv) for each example in a help text: `Example: \\`tether ...\\`` in a command's text, and each
    `e.g. \\`key=value ...\\`` of an overrides argument, prefixed with the command's path."""
    out = []
    for path, cmd in all_commands():
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        for text in texts:
            for span in re.findall(r"(?:Example|e\.g\.):?\s+`([^`]+)`", " ".join(text.split())):
                argv = shlex.split(span)
                argv = argv[1:] if argv[0] == "tether" else [*path, *argv]
                out.append((f"tether {' '.join(path)} --help", argv))
    return out


DOCS = [REPO / "README.md"] + sorted(
    p for p in (REPO / "docs").rglob("*.md") if "experiments" not in p.relative_to(REPO / "docs").parts and p.name != "python-api.md"
)
"""The pages whose examples are tested here (docs/experiments/ are dated records; their authors test the other two)."""

SHELL = ("bash", "sh", "shell", "console")
"""The languages of the fenced blocks that hold shell lines."""

MAKE_TARGETS = {
    "demo": "the demo itself, on the default model (`tether demo`, whose config this file's tests build)",
    "test": "the test suite, this file among it",
    "docs": "tests/test_docs.py builds the site the same way",
    "test-latest": "the suite in .venv-latest (CI)",
    "test-oldest": "the model-running tests in .venv-oldest (CI)",
    "bench": "the benchmarks (long, on the default model)",
}
"""Each `make` target a page names, and what runs it."""

OTHER_TOOLS = ("pip install ", "ray start", "hf download ", "python benchmarks/")
"""Shell lines of other tools a page may show (installing an extra, starting Ray, fetching a model, a benchmark)."""

NEEDS = "# needs "
"""The comment that marks a line needing more than the tiny models (a shipped recipe's default model and the models it
builds, or GPUs): such a line runs dry here, and its recipe by hand (`make demo` runs the default model's)."""


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced code block of `page`."""
    return re.findall(r"^```([a-z]*)\n(.*?)^```", page.read_text(), re.S | re.M)


def shell_lines(text: str) -> list[str]:
    """The lines of a shell block (continuations joined), without blank and comment-only lines."""
    lines = [line.strip() for line in re.sub(r"\\\n\s*", " ", text).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def is_tether(line: str) -> bool:
    return line.startswith("tether ") or " -m tether " in line


def doc_blocks() -> list[tuple[str, list[str]]]:
    """(page, the lines that run tether) for each shell block of every tested page."""
    return [
        (str(page.relative_to(REPO)), [line for line in shell_lines(text) if is_tether(line)])
        for page in DOCS
        for lang, text in code_blocks(page)
        if lang in SHELL
    ]


def readme_argv(line: str) -> list[str]:
    argv = shlex.split(line, comments=True)
    if argv[0] != "tether":  # `accelerate launch ... -m tether ARGS`, `torchrun ... -m tether ARGS`
        argv = argv[argv.index("-m") + 1 :]
    return argv[1:]


EXAMPLES = [(page, line) for page, block in doc_blocks() for line in block]
HELP = help_examples()


def test_the_examples_were_found():
    lines = [line for _, line in EXAMPLES]
    pages = {page for page, _ in EXAMPLES}
    assert len(lines) >= 70 and any("--num-processes" in line for line in lines) and any("-m tether" in line for line in lines)
    assert {"README.md", "docs/guides/ppo.md", "docs/guides/data.md", "docs/reference/commands.md"} <= pages
    where = {w for w, _ in HELP}
    assert {"tether sft --help", "tether eval overopt --help", "tether reward eval --help", "tether demo --help"} <= where
    assert not [line for line in lines if "..." in readme_argv(line) or any(a.startswith("[") for a in readme_argv(line))], (
        "a command line in the docs holds a placeholder"
    )


def test_every_shell_line_of_the_docs_is_tested_or_accounted_for():
    """A shell line is a tether command (run below), a Makefile target with what runs it, or another tool's command; a
    tether command is never hidden in a block of another language, where it would go untested."""
    makefile = (REPO / "Makefile").read_text()
    for page in DOCS:
        for lang, text in code_blocks(page):
            where = page.relative_to(REPO)
            if lang not in SHELL:
                assert not [line for line in text.splitlines() if line.startswith("tether ")], f"{where}: a tether line in a {lang} block"
                continue
            for line in shell_lines(text):
                config = re.search(r" --config (\S+)", line)
                if (
                    is_tether(line)
                    and config
                    and config.group(1) not in ("demo", "configs/demo.yaml")
                    and not config.group(1).startswith("my_")
                ):
                    assert NEEDS in line, f"{where}: `{line}` runs a shipped recipe: say what it needs (`{NEEDS}...`)"
                if is_tether(line) or line.startswith(OTHER_TOOLS):
                    continue
                target = line.split("#")[0].split()
                assert target[0] == "make" and len(target) == 2, f"{where}: `{line}` is not a command the tests know"
                assert target[1] in MAKE_TARGETS and re.search(rf"^{re.escape(target[1])}:", makefile, re.M), f"{where}: `{line}`"


def test_python_snippets_run(tmp_path, monkeypatch):
    """Every Python block of the tested pages runs; a block whose first line is `# NAME.py` is a file the commands name,
    and its functions are called as tether calls them."""
    monkeypatch.chdir(tmp_path)
    snippets = [(page, text) for page in DOCS for lang, text in code_blocks(page) if lang == "python"]
    assert snippets
    for page, text in snippets:
        namespace: dict = {}
        exec(compile(text, str(page), "exec"), namespace)
        if "score" in namespace:
            scores = namespace["score"](["Say hi."], ["Hello there.", "word " * 80], [{}])
            assert len(scores) == 2 and all(s is None or isinstance(s, float) for s in scores), f"{page}: {scores}"


def python_files() -> dict[str, str]:
    """The Python blocks that are files (first line `# NAME.py`), by name."""
    out = {}
    for page in DOCS:
        for lang, text in code_blocks(page):
            first = text.splitlines()[0]
            if lang == "python" and re.fullmatch(r"# \w+\.py", first):
                out[first[2:]] = text
    return out


# --------------------------------------------------------------------------- running them


@pytest.fixture
def dry(monkeypatch):
    """The stages replaced by recorders: returns the list of (function name, config) the commands handed over."""
    calls = []
    for module, names in STAGES.items():
        for name in names:
            monkeypatch.setattr(
                importlib.import_module(module), name, lambda *args, _name=name: calls.append((_name, *args)) or {"stage": _name}
            )
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: calls.append(("processes", cmd)) or subprocess.CompletedProcess(cmd, 0))
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: calls.append(("serve",)))
    return calls


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_data):
    """A folder holding every file the examples name as the user's own, as the current directory."""
    monkeypatch.chdir(tmp_path)
    for name in ["demos.jsonl", "my_demos.jsonl"]:
        Path(name).write_text(tiny_data["demos"].read_text())
    for name in ["prompts.jsonl", "my_prompts.jsonl", "held_out.jsonl"]:
        Path(name).write_text(tiny_data["prompts"].read_text())
    for name in ["held_out_pairs.jsonl", "pairs.jsonl", "prefs.jsonl"]:
        Path(name).write_text(tiny_data["prefs"].read_text())
    for name in ["my_sft.yaml", "my_dpo.yaml", "my_ppo.yaml"]:  # the docs' "your own config"
        Path(name).write_text("seed: 0\n")
    shutil.copy(SHIPPED_CONFIGS / "constitution" / "default.yaml", "my_constitution.yaml")
    for name, text in python_files().items():  # my_rewards.py, ...
        Path(name).write_text(text)
    Path("guidelines.md").write_text("Prefer the answer that is on topic.\n")
    Path("runs/collect").mkdir(parents=True)
    samples = [
        {"prompt": r["prompt"], "response": r["response"] + suffix}
        for r in map(json.loads, tiny_data["demos"].read_text().splitlines())
        for suffix in ("", " Indeed.")
    ]
    Path("runs/collect/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    Path("samples.jsonl").write_text(tiny_data["demos"].read_text())
    result = runner.invoke(app, ["label", "import", "runs/collect/samples.jsonl", "--db", "prefs.db"])
    assert result.exit_code == 0, result.output
    return tmp_path


def _invoke(argv: list[str]):
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, f"tether {shlex.join(argv)}:\n{result.output}{result.exception!r}"
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("where,argv", HELP, ids=[" ".join(a) for _, a in HELP])
def test_each_help_example_runs_as_written(where, argv, dry, workspace):
    _invoke(argv)


@pytest.mark.parametrize("page,line", EXAMPLES, ids=[f"{page}: {line}" for page, line in EXAMPLES])
def test_each_command_line_of_the_docs_runs_as_written(page, line, dry, workspace):
    argv = readme_argv(line)
    if argv[:2] in (["label", "rotate"], ["label", "revoke"], ["label", "remove"]):  # a line after the one adding the annotator
        _invoke(["label", "add-annotator", argv[2], "--db", argv[argv.index("--db") + 1]])
    _invoke(argv)


def test_the_walkthrough_runs_for_real_on_the_tiny_model(tiny_model_dir, workspace):
    """The manual's stage-by-stage block (docs/guides/data.md), on the tiny model: only the model path and sizes are
    substituted."""
    (block,) = [b for page, b in doc_blocks() if page == "docs/guides/data.md" and b and b[0].startswith("tether sft model=/path/to")]
    assert [line.split()[1] for line in block] == ["sft", "collect", "reward", "reward", "ppo", "eval", "generate"]
    sizes = {
        "sft": ["max_steps=1"],
        "collect": ["limit=2", "responses_per_prompt=2"],
        "reward": ["max_steps=1", "batch_size=2"],
        "ppo": ["steps=1", "batch_size=2", "mini_batch_size=2"],
        "eval": ["limit=2"],
        "generate": [],
    }
    gen = ["generation.max_new_tokens=4", "generation.batch_size=4"]
    for line in block:
        argv = [a.replace("/path/to/model", str(tiny_model_dir)) for a in readme_argv(line)]
        if argv[:2] == ["reward", "eval"]:
            argv += ["--precision", "fp32"]
        else:
            argv += [*sizes[argv[0]], "precision=fp32", *(gen if argv[0] in ("collect", "ppo", "eval", "generate") else [])]
        _invoke(argv)
    assert Path("runs/ppo/model/config.json").exists() and json.loads(Path("runs/eval/summary.json").read_text())["stage"] == "eval"


SAMPLE = ["generation.max_new_tokens=4", "generation.batch_size=4", "precision=fp32"]
GUIDE_RUNS = {  # (page, the end of a command line in it): the sizes that make it a few seconds on the tiny model
    ("docs/guides/grpo.md", "prompts=prompts.jsonl output_dir=runs/grpo"): [
        "steps=1",
        "prompts_per_step=2",
        "group_size=2",
        "mini_batch_size=4",
        *SAMPLE,
    ],
    ("docs/guides/dpo.md", "policy=runs/sft/model data=prefs.jsonl output_dir=runs/dpo"): ["max_steps=1", "batch_size=2", "precision=fp32"],
    ("docs/guides/best-of-n.md", "n=8 output_dir=runs/bon"): ["limit=2", *SAMPLE],
    ("docs/guides/best-of-n.md", "rounds=2 output_dir=runs/rs"): ["limit=2", "n=2", "sft.max_steps=1", *SAMPLE],
    ("docs/guides/ai-feedback.md", "model=/path/to/judge data=pairs.jsonl db=prefs.db"): ["limit=2", "precision=fp32"],
    ("docs/guides/ai-feedback.md", "rounds=2 output_dir=runs/revise"): ["limit=2", *SAMPLE],
}
"""Commands of the guides run for real on the tiny model, on an SFT and a reward model made as the walkthrough makes them."""


def test_the_guides_commands_run_for_real_on_the_tiny_model(tiny_model_dir, workspace):
    """The walkthrough's SFT and reward model, then the guides' GRPO, DPO, best-of-N, rejection-sampling, judge and
    revise commands on them, as written but for the model path and sizes."""
    _invoke(["sft", f"model={tiny_model_dir}", "data=demos.jsonl", "output_dir=runs/sft", "max_steps=1", "precision=fp32"])
    _invoke(["reward", "train", "model=runs/sft/model", "data=prefs.jsonl", "output_dir=runs/reward", "max_steps=1", "batch_size=2"])
    for (page, end), sizes in GUIDE_RUNS.items():
        (line,) = [line for p, line in EXAMPLES if p == page and line.endswith(end)]
        argv = [a.replace("/path/to/judge", str(tiny_model_dir)) for a in readme_argv(line)]
        _invoke([*argv, *sizes])
    assert json.loads(Path("runs/grpo/summary.json").read_text())["stage"] == "grpo"
    assert Path("runs/dpo/model/config.json").exists() and Path("runs/bon/bon.jsonl").exists()


# --------------------------------------------------------------------------- help, version, --config


def test_version():
    result = _invoke(["--version"])
    assert re.fullmatch(r"tether \d+\.\d+\S*\n", result.stdout)


def test_every_help_shows_and_keeps_square_brackets():
    for path, _ in all_commands():
        _invoke([*path, "--help"])
    flat = " ".join(_invoke(["eval", "--help"]).output.split())
    assert "overopt RUN_DIR [form=rl|bon] [out=PNG]" in flat and "[metric=gold|proxy]" in flat


def test_eval_overopt_and_frontier_have_their_own_help():
    overopt = " ".join(_invoke(["eval", "overopt", "--help"]).output.split())
    assert "Usage: root eval overopt" in overopt and "over-optimisation curve" in overopt and "form=rl" in overopt
    frontier = " ".join(_invoke(["eval", "frontier", "--help"]).output.split())
    assert "Usage: root eval frontier" in frontier and "metric=gold" in frontier
    assert "Compare a policy with a baseline" not in overopt + frontier


def test_no_help_example_uses_a_key_the_command_lacks():
    """The old `e.g. lr=1e-4` on every command: `lr` is no key of any stage (it is optim.lr)."""
    assert not [argv for _, argv in HELP if "lr=1e-4" in argv]
    with pytest.raises(C.ConfigError, match="unknown key 'lr'"):
        C.load_config(C.SFTConfig, None, ["lr=1e-4"])


def test_a_shipped_config_resolves_from_any_folder(dry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _invoke(["run", "--config", "configs/demo.yaml", "output_dir=x"])
    _invoke(["run", "demo", "output_dir=x"])
    _invoke(["ppo", "--config", "ppo/default"])
    _invoke(["ppo", "--config", "ppo/default.yaml"])
    demo = C.load_config(C.RunConfig, SHIPPED_CONFIGS / "demo.yaml", ["output_dir=x"])
    ppo = C.load_config(C.PPOConfig, SHIPPED_CONFIGS / "ppo" / "default.yaml")
    assert [c[1] for c in dry] == [demo, demo, ppo, ppo]


def test_a_local_config_wins_over_a_shipped_one(dry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("configs").mkdir()
    Path("configs/demo.yaml").write_text("output_dir: mine\n")
    _invoke(["run", "--config", "configs/demo.yaml"])
    assert dry[0][1].output_dir == "mine"


def test_a_config_that_is_nowhere_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["ppo", "--config", "configs/ppo/defualt.yaml"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "configs/ppo/defualt.yaml: no such file" in flat and "ppo/default" in flat and "demo" in flat


def test_demo_takes_a_config_in_place_of_the_shipped_one(dry, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"output_dir: {tmp_path / 'out'}\nsft:\n  max_steps: 3\n")
    _invoke(["demo", "--config", mine, "ppo.steps=2"])
    ((_, cfg),) = dry
    assert cfg == C.load_config(C.RunConfig, mine, ["ppo.steps=2"]) and cfg.sft.max_steps == 3
    assert cfg != C.load_config(C.RunConfig, SHIPPED_CONFIGS / "demo.yaml", ["ppo.steps=2", f"output_dir={tmp_path / 'out'}"])


def test_reward_eval_and_score_take_a_config_and_overrides(dry, tmp_path):
    mine = tmp_path / "rm.yaml"
    mine.write_text("model: runs/rm/model\ndata: pairs.jsonl\nlimit: 7\nprecision: fp32\n")
    _invoke(["reward", "eval", "--config", mine, "max_prompt_tokens=64", "--limit", "3"])  # an option given wins
    _invoke(["reward", "score", "model=m", "data=d.jsonl", "column=s", "--precision", "fp16"])
    _invoke(["reward", "score", "--model", "m", "--data", "d.jsonl"])  # the options alone, as before
    assert [c[1] for c in dry] == [
        C.RewardEvalConfig(model="runs/rm/model", data="pairs.jsonl", limit=3, precision="fp32", max_prompt_tokens=64),
        C.RewardScoreConfig(model="m", data="d.jsonl", column="s", precision="fp16"),
        C.RewardScoreConfig(model="m", data="d.jsonl"),
    ]


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["reward", "eval", "--data", "d.jsonl"], "no model given: pass --model"),
        (["reward", "score", "--model", "m"], "no data given: pass --data"),
        (["reward", "eval", "--model", "m", "--data", "d", "--precision", "bf32"], "'precision': expected one of"),
        (["reward", "eval", "--model", "m", "--data", "d", "max_prompt_tokens=0"], "max_prompt_tokens must be at least 1"),
        (["reward", "score", "--model", "m", "--data", "d", "colum=x"], "unknown key 'colum'"),
    ],
)
def test_reward_eval_and_score_config_errors(argv, expect, dry):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2 and expect in " ".join(result.output.split()) and not dry


def test_reward_eval_and_score_with_a_config_run_for_real(tiny_reward_model, tiny_data, tmp_path):
    mine = tmp_path / "rm.yaml"
    mine.write_text(f"model: {tiny_reward_model}\ndata: {tiny_data['prefs']}\nprecision: fp32\nlimit: 5\n")
    assert json.loads(_invoke(["reward", "eval", "--config", mine]).stdout)["n"] == 5
    score = tmp_path / "score.yaml"
    score.write_text(f"model: {tiny_reward_model}\ndata: {tiny_data['demos']}\nout: {tmp_path / 's.jsonl'}\ncolumn: rm\nprecision: fp32\n")
    assert json.loads(_invoke(["reward", "score", "--config", score]).stdout)["scored"] == 12
    assert all(isinstance(json.loads(r)["rm"], float) for r in (tmp_path / "s.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model_dir, tmp_path_factory):
    """The tiny model's trunk with a fresh scalar head, saved as a reward model folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def test_dataclass_configs_of_reward_eval_and_score_check_their_fields():
    with pytest.raises(C.ConfigError, match="max_response_tokens"):
        C.RewardScoreConfig(model="m", data="d", max_response_tokens=0)
    with pytest.raises(C.ConfigError, match="limit"):
        C.RewardEvalConfig(model="m", data="d", limit=0)
    assert dataclasses.asdict(C.RewardEvalConfig())["precision"] == "bf16"
