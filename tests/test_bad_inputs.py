"""Ordinary mistakes, one row each, through the real CLI on the tiny models (issue 25).

Every row is a command a user could type with one thing wrong. For each the test asserts:
  - a non-zero exit (2 for a user error: the CLI's one red `error:` line),
  - a message that names what was wrong: the file, key, line or route (`expect`, all of them),
  - no traceback, and no exception other than the CLI's own exit,
  - no hang: each row is bounded by a timeout,
  - nothing already written lost or changed: every file in the workspace before the command (inputs, an
    interrupted run, a finished run) has the same bytes after it, and paths in `absent` were not created.

Placeholders in a row's arguments are filled from the workspace: {model} (the tiny model), {other_model}
(the same architecture, other weights), {rm} (a tiny reward model), {demos}, {prompts}, {prefs} (small
valid files), {empty} (an empty file), {blank} (only blank lines), {useless} (rows of JSON without the
fields any reader wants), {same_pairs} (pairs whose chosen and rejected differ only after their first 40
tokens), {dup_yaml} (a config with a key given twice), {file} (a plain file where a folder belongs),
{out} (a fresh path for this row), {interrupted} (an SFT run stopped after 1 of 3 steps), {finished} (a
finished SFT run: a failed rerun into it must leave its record as it was), {fns} (the test
reward functions), {missing} (a path that does not exist).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.cli import app

runner = CliRunner()
FNS = Path(__file__).resolve().parent / "stages" / "reward_fns.py"
QUICK = ["precision=fp32", "generation.max_new_tokens=4", "generation.batch_size=4"]
"""Sampling settings that keep a row that gets as far as sampling to a second."""


@dataclass
class Case:
    id: str
    args: list[str]
    expect: list[str]
    """Every one of these appears in the output (case-insensitive): the file, key, line or route at fault."""
    absent: list[str] = field(default_factory=list)
    """Paths (with placeholders) the command must not create."""


CASES = [
    # --------------------------------------------------------------- 1. empty or useless input, every stage
    Case(
        "sft-empty-data",
        ["sft", "model={model}", "data={empty}", "output_dir={out}", "max_steps=1", "precision=fp32"],
        ["empty.jsonl"],
        absent=["{out}"],
    ),
    Case(
        "sft-empty-data-into-a-finished-run",
        ["sft", "model={model}", "data={empty}", "output_dir={finished}", "max_steps=1", "precision=fp32"],
        ["empty.jsonl"],
    ),
    Case("sft-empty-data-no-max-steps", ["sft", "model={model}", "data={empty}", "output_dir={out}", "precision=fp32"], ["empty.jsonl"]),
    Case("sft-blank-lines", ["sft", "model={model}", "data={blank}", "output_dir={out}", "max_steps=1"], ["blank.jsonl"]),
    Case("sft-useless-rows", ["sft", "model={model}", "data={useless}", "output_dir={out}", "max_steps=1"], ["useless.jsonl"]),
    Case("sft-missing-data", ["sft", "model={model}", "data={missing}", "output_dir={out}", "max_steps=1"], ["missing.jsonl"]),
    Case("collect-empty-prompts", ["collect", "model={model}", "prompts={empty}", "output_dir={out}", *QUICK], ["empty.jsonl"]),
    Case("reward-empty-data", ["reward", "train", "model={model}", "data={empty}", "output_dir={out}", "max_steps=1"], ["empty.jsonl"]),
    Case("reward-useless-rows", ["reward", "train", "model={model}", "data={useless}", "output_dir={out}"], ["useless.jsonl"]),
    Case(
        "ppo-empty-prompts",
        [
            "ppo",
            "policy={model}",
            "reward=[{{type: model, path: '{rm}'}}]",
            "prompts={empty}",
            "output_dir={out}",
            "steps=1",
            "batch_size=4",
            "mini_batch_size=2",
            *QUICK,
        ],
        ["empty.jsonl"],
    ),
    Case(
        "grpo-empty-prompts",
        [
            "grpo",
            "policy={model}",
            "reward=[{{type: function, path: '{fns}:letter_e'}}]",
            "prompts={empty}",
            "output_dir={out}",
            "steps=1",
            "group_size=2",
            "prompts_per_step=2",
            "mini_batch_size=4",
            *QUICK,
        ],
        ["empty.jsonl"],
    ),
    Case("dpo-empty-data", ["dpo", "policy={model}", "data={empty}", "output_dir={out}", "max_steps=1", "precision=fp32"], ["empty.jsonl"]),
    Case(
        "eval-empty-prompts", ["eval", "policy={model}", "baseline={model}", "prompts={empty}", "output_dir={out}", *QUICK], ["empty.jsonl"]
    ),
    Case(
        "bon-empty-prompts",
        [
            "bon",
            "policy={model}",
            "reward=[{{type: function, path: '{fns}:letter_e'}}]",
            "prompts={empty}",
            "output_dir={out}",
            "n=2",
            *QUICK,
        ],
        ["empty.jsonl"],
    ),
    Case(
        "rs-empty-prompts",
        [
            "rs",
            "policy={model}",
            "reward=[{{type: function, path: '{fns}:letter_e'}}]",
            "prompts={empty}",
            "output_dir={out}",
            "n=2",
            *QUICK,
        ],
        ["empty.jsonl"],
    ),
    Case("revise-empty-prompts", ["revise", "model={model}", "prompts={empty}", "output_dir={out}", *QUICK], ["empty.jsonl"]),
    Case("generate-empty-prompts", ["generate", "model={model}", "prompts={empty}", "output={out}/samples.jsonl", *QUICK], ["empty.jsonl"]),
    Case("judge-empty-data", ["judge", "model={model}", "data={empty}", "output_dir={out}", "precision=fp32"], ["empty.jsonl"]),
    Case("reward-eval-empty-data", ["reward", "eval", "--model", "{rm}", "--data", "{empty}"], ["empty.jsonl"]),
    Case("reward-score-empty-data", ["reward", "score", "--model", "{rm}", "--data", "{empty}", "--out", "{out}/s.jsonl"], ["empty.jsonl"]),
    Case("label-import-empty", ["label", "import", "{empty}", "--db", "{out}/store.db"], ["empty.jsonl"], absent=["{out}"]),
    Case("label-import-useless-rows", ["label", "import", "{useless}", "--db", "{out}/store.db"], ["useless.jsonl"], absent=["{out}"]),
    # --------------------------------------------------------------- 2. training that would quietly do nothing
    Case(
        "reward-freeze-every-block",
        ["reward", "train", "model={model}", "data={prefs}", "output_dir={out}", "freeze_layers=2", "max_steps=1"],
        ["freeze_layers"],
    ),
    Case(
        "reward-pairs-identical-after-truncation",
        [
            "reward",
            "train",
            "model={model}",
            "data={same_pairs}",
            "output_dir={out}",
            "max_response_tokens=8",
            "max_steps=1",
            "precision=fp32",
        ],
        ["max_response_tokens"],
    ),
    Case(
        "dpo-pairs-identical-after-truncation",
        ["dpo", "policy={model}", "data={same_pairs}", "output_dir={out}", "max_response_tokens=8", "max_steps=1", "precision=fp32"],
        ["max_response_tokens"],
    ),
    # --------------------------------------------------------------- 3. old state reused
    Case(
        "sft-resume-with-other-lr",
        [
            "sft",
            "model={model}",
            "data={demos}",
            "output_dir={interrupted}",
            "max_steps=3",
            "save_every=1",
            "precision=fp32",
            "optim.lr=0.001",
        ],
        ["optim.lr", "resume=false"],
    ),
    Case(
        "sft-resume-with-other-model",
        ["sft", "model={other_model}", "data={demos}", "output_dir={interrupted}", "max_steps=3", "save_every=1", "precision=fp32"],
        ["model", "resume=false"],
    ),
    Case(
        "sft-resume-with-other-data",
        ["sft", "model={model}", "data={prompts_as_demos}", "output_dir={interrupted}", "max_steps=3", "save_every=1", "precision=fp32"],
        ["data", "resume=false"],
    ),
    # --------------------------------------------------------------- 4. settings the pipeline's wiring would drop
    Case("run-reward-data", ["run", "output_dir={out}", "model={model}", "reward.data={prefs}"], ["reward.data"]),
    Case("run-sft-precision", ["run", "output_dir={out}", "model={model}", "sft.precision=fp32"], ["sft.precision", "precision"]),
    Case("run-ppo-seed", ["run", "output_dir={out}", "model={model}", "ppo.seed=3"], ["ppo.seed"]),
    # --------------------------------------------------------------- 5. values checked when the config is built
    Case("sft-batch-size-0", ["sft", "model={model}", "data={demos}", "output_dir={out}", "batch_size=0"], ["batch_size"]),
    Case("sft-batch-size-negative", ["sft", "model={model}", "data={demos}", "output_dir={out}", "batch_size=-2"], ["batch_size"]),
    Case(
        "ppo-mini-batch-size-0",
        ["ppo", "policy={model}", "reward=[{{type: model, path: '{rm}'}}]", "prompts={prompts}", "output_dir={out}", "mini_batch_size=0"],
        ["mini_batch_size"],
    ),
    Case("sft-lr-nan", ["sft", "model={model}", "data={demos}", "output_dir={out}", "optim.lr=nan"], ["optim.lr"]),
    Case("sft-eval-fraction-1", ["sft", "model={model}", "data={demos}", "output_dir={out}", "eval_fraction=1.0"], ["eval_fraction"]),
    Case(
        "reward-max-prompt-tokens-0",
        ["reward", "train", "model={model}", "data={prefs}", "output_dir={out}", "max_prompt_tokens=0"],
        ["max_prompt_tokens"],
    ),
    Case(
        "ppo-generation-max-new-tokens-0",
        [
            "ppo",
            "policy={model}",
            "reward=[{{type: model, path: '{rm}'}}]",
            "prompts={prompts}",
            "output_dir={out}",
            "generation.max_new_tokens=0",
        ],
        ["generation.max_new_tokens"],
    ),
    Case("run-nested-key-named-with-its-section", ["run", "output_dir={out}", "model={model}", "ppo.batch_size=0"], ["ppo.batch_size"]),
    Case("override-not-yaml", ["sft", "model={model}", "data=[oops", "output_dir={out}"], ["data=[oops"]),
    Case("override-without-equals", ["sft", "model={model}", "max_steps"], ["max_steps"]),
    Case("unknown-key", ["sft", "model={model}", "output_dir={out}", "max_step=1"], ["max_step"]),
    Case("enum-typo", ["sft", "model={model}", "output_dir={out}", "precision=bf32"], ["precision", "bf32"]),
    Case("config-duplicate-key", ["sft", "--config", "{dup_yaml}"], ["dup.yaml", "max_steps", "line"]),
    Case("config-missing", ["sft", "--config", "{missing}"], ["missing.jsonl"]),
    # --------------------------------------------------------------- 6. paths
    Case("output-dir-is-a-file", ["sft", "model={model}", "data={demos}", "output_dir={file}", "max_steps=1"], ["output_dir", "a-file"]),
    Case(
        "output-dir-under-a-file",
        ["sft", "model={model}", "data={demos}", "output_dir={file}/sub", "max_steps=1"],
        ["output_dir", "a-file"],
    ),
    Case("model-is-a-file", ["sft", "model={file}", "data={demos}", "output_dir={out}", "max_steps=1"], ["a-file"]),
    Case(
        "model-missing", ["sft", "model={missing}", "data={demos}", "output_dir={out}", "max_steps=1"], ["missing.jsonl"], absent=["{out}"]
    ),
    Case(
        "model-missing-into-a-finished-run",
        ["sft", "model={missing}", "data={demos}", "output_dir={finished}", "max_steps=1"],
        ["missing.jsonl"],
    ),
    Case(
        "reward-model-missing-into-a-finished-run",
        [
            "eval",
            "policy={model}",
            "baseline={model}",
            "prompts={prompts}",
            "reward_model={missing}",
            "judge=reward_model",
            "output_dir={finished}",
            *QUICK,
        ],
        ["missing.jsonl"],
    ),
    Case("label-stats-db-typo", ["label", "stats", "--db", "{out}/typo/store.db"], ["store.db"], absent=["{out}/typo"]),
    Case(
        "label-export-db-typo",
        ["label", "export", "--db", "{out}/typo/store.db", "--out", "{out}/pairs.jsonl"],
        ["store.db"],
        absent=["{out}/typo", "{out}/pairs.jsonl"],
    ),
    Case("eval-overopt-not-a-run", ["eval", "overopt", "{missing}"], ["missing.jsonl"]),
    Case("report-not-a-run", ["report", "{missing}"], ["missing.jsonl"]),
]


def _write(path: Path, rows) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ws(tiny_model_dir, other_tiny_model_dir, tiny_data, tmp_path_factory) -> dict[str, str]:
    """The workspace every row runs in: inputs, a tiny reward model, an interrupted SFT run."""
    root = tmp_path_factory.mktemp("bad-inputs")
    files = root / "files"
    files.mkdir()
    (files / "empty.jsonl").write_text("")
    long_tail = " ".join(["word"] * 40)
    paths = {
        "model": tiny_model_dir,
        "other_model": other_tiny_model_dir,
        "fns": FNS,
        "missing": root / "nowhere" / "missing.jsonl",
        "demos": tiny_data["demos"],
        "prompts": tiny_data["prompts"],
        "prefs": tiny_data["prefs"],
        "empty": files / "empty.jsonl",
        "blank": _write(files / "blank.jsonl", ["", "   ", ""]),
        "useless": _write(files / "useless.jsonl", [{"foo": 1}, {"text": "no prompt here"}, {"prompt": "a prompt and nothing else"}]),
        "prompts_as_demos": _write(
            files / "other_demos.jsonl", [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(12)]
        ),
        "same_pairs": _write(
            files / "same_pairs.jsonl",
            [{"prompt": f"Say something {i}.", "chosen": f"{long_tail} yes", "rejected": f"{long_tail} no"} for i in range(8)],
        ),
        "dup_yaml": _write(files / "dup.yaml", ["max_steps: 1", "batch_size: 2", "max_steps: 2"]),
        "file": _write(files / "a-file", ["not a folder"]),
    }
    rm = root / "rm"
    result = runner.invoke(
        app,
        [
            "reward",
            "train",
            f"model={tiny_model_dir}",
            f"data={tiny_data['prefs']}",
            f"output_dir={rm}",
            "max_steps=1",
            "batch_size=2",
            "precision=fp32",
        ],
    )
    assert result.exit_code == 0, result.output
    interrupted = root / "interrupted"
    result = runner.invoke(
        app,
        [
            "sft",
            f"model={tiny_model_dir}",
            f"data={tiny_data['demos']}",
            f"output_dir={interrupted}",
            "max_steps=3",
            "save_every=1",
            "interrupt_after=1",
            "precision=fp32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (interrupted / "checkpoint").is_dir()
    finished = root / "finished"
    result = runner.invoke(
        app, ["sft", f"model={tiny_model_dir}", f"data={tiny_data['demos']}", f"output_dir={finished}", "max_steps=1", "precision=fp32"]
    )
    assert result.exit_code == 0, result.output
    assert (finished / "summary.json").exists()
    return {
        **{k: str(v) for k, v in paths.items()},
        "rm": str(rm / "model"),
        "interrupted": str(interrupted),
        "finished": str(finished),
        "root": str(root),
    }


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mistake_gets_a_clear_answer(case: Case, ws, tmp_path):
    values = {**ws, "out": str(tmp_path / "out")}
    args = [a.format(**values) for a in case.args]
    root = Path(ws["root"])
    before = _snapshot(root)

    result = runner.invoke(app, args)

    output = result.output
    command = "tether " + " ".join(args)
    assert result.exit_code not in (0, None), f"{command} succeeded:\n{output}"
    assert isinstance(result.exception, SystemExit), f"{command} raised {result.exception!r}:\n{output}"
    assert "Traceback" not in output, f"{command} printed a traceback:\n{output}"
    flat = " ".join(output.split()).lower()  # rich wraps long lines
    for fragment in case.expect:
        assert fragment.format(**values).lower() in flat, f"{command}: the message does not name {fragment!r}:\n{output}"
    after = _snapshot(root)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"{command} changed or removed files that were there before: {changed}"
    for path in case.absent:
        assert not Path(path.format(**values)).exists(), f"{command} created {path.format(**values)}"


def test_every_stage_has_a_row():
    """The table reaches every command that reads a user's file or trains."""
    commands = {" ".join(a for a in c.args[:2] if not a.startswith(("-", "{")) and "=" not in a) for c in CASES}
    heads = {c.split()[0] for c in commands}
    for command in ["sft", "collect", "ppo", "grpo", "dpo", "eval", "bon", "rs", "revise", "generate", "judge", "run", "report"]:
        assert command in heads, command
    for command in ["reward train", "reward eval", "reward score", "label import", "label stats", "label export"]:
        assert command in commands, command


def test_the_interrupted_run_resumes_unchanged(ws, tmp_path):
    """The rows above leave the interrupted run as it was: a copy of it, rerun with its own settings, resumes and finishes."""
    before = _snapshot(Path(ws["root"]))
    copy = tmp_path / "copy"
    shutil.copytree(ws["interrupted"], copy)
    result = runner.invoke(
        app, ["sft", f"model={ws['model']}", f"data={ws['demos']}", f"output_dir={copy}", "max_steps=3", "save_every=1", "precision=fp32"]
    )
    assert result.exit_code == 0, result.output
    assert _snapshot(Path(ws["root"])) == before
    assert (copy / "model").is_dir() and (copy / "summary.json").exists()
