"""Smoke runs of every `tether` command on the tiny model, through the real CLI."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.cli import app

runner = CliRunner()
GEN = ["generation.max_new_tokens=6", "generation.batch_size=4"]


def tether(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def ok(*args: str):
    result = tether(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tiny_data, tmp_path_factory):
    """`tether run` on the tiny model with the demo config's structure, small sizes."""
    out = tmp_path_factory.mktemp("run") / "r"
    ok(
        "run",
        "--config",
        Path(__file__).resolve().parents[1] / "src" / "tether" / "configs" / "demo.yaml",
        *_tiny_run(out, tiny_model_dir, tiny_data),
    )
    return out


def _tiny_run(out, model, data):
    return [
        f"output_dir={out}",
        f"model={model}",
        "precision=fp32",
        f"sft.data={data['demos']}",
        "sft.max_steps=2",
        f"collect.prompts={data['prompts']}",
        "collect.limit=4",
        "collect.responses_per_prompt=2",
        "collect.generation.max_new_tokens=6",
        "reward.max_steps=2",
        "reward.batch_size=2",
        "reward.freeze_layers=1",
        f"ppo.prompts={data['prompts']}",
        "ppo.steps=2",
        "ppo.batch_size=4",
        "ppo.mini_batch_size=2",
        "ppo.generation.max_new_tokens=6",
        f"eval.prompts={data['prompts']}",
        "eval.limit=4",
        "eval.generation.max_new_tokens=6",
    ]


def test_run_writes_every_stage_and_report(run_dir):
    for stage in ["sft", "collect", "reward", "ppo", "eval"]:
        assert json.loads((run_dir / stage / "summary.json").read_text())["stage"] == stage
        assert (run_dir / stage / "config.yaml").exists()
    report = (run_dir / "report.md").read_text()
    assert "win rate" in report and "KL(policy || SFT)" in report and "held-out accuracy" in report
    seconds = {k: json.loads((run_dir / k / "summary.json").read_text())["seconds"] for k in ["sft", "collect", "reward", "ppo", "eval"]}
    assert f"**{sum(seconds.values()) / 60:.1f} min** in the stages (sft {seconds['sft']:.0f} s, collect" in report  # what make demo took


def test_run_again_skips_completed_stages(run_dir, tiny_model_dir, tiny_data):
    before = (run_dir / "ppo" / "summary.json").read_text()
    result = ok(
        "run", "--config", Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", *_tiny_run(run_dir, tiny_model_dir, tiny_data)
    )
    assert "already complete" in result.output
    assert (run_dir / "ppo" / "summary.json").read_text() == before


def test_demo_command_runs_the_shipped_config(tiny_model_dir, tiny_data, tmp_path):
    result = ok("demo", *_tiny_run(tmp_path / "d", tiny_model_dir, tiny_data))
    assert "PPO policy vs SFT model" in result.output
    collect = json.loads((tmp_path / "d" / "collect" / "summary.json").read_text())  # every simulated judgement is in the run's store
    assert collect["db"] == str(tmp_path / "d" / "collect" / "preferences.db") and collect["db_judgements"] == collect["pairs"] > 0


def test_stage_commands(run_dir, tiny_model_dir, tiny_data, tmp_path):
    sft = ok(
        "sft", f"model={tiny_model_dir}", f"data={tiny_data['demos']}", f"output_dir={tmp_path / 'sft'}", "max_steps=1", "precision=fp32"
    )
    assert json.loads(sft.stdout)["stage"] == "sft"
    ok("collect", f"model={tiny_model_dir}", f"prompts={tiny_data['prompts']}", f"output_dir={tmp_path / 'col'}", "limit=2", *GEN)
    ok(
        "reward",
        "train",
        f"model={tiny_model_dir}",
        f"data={tmp_path / 'col' / 'preferences.jsonl'}",
        f"output_dir={tmp_path / 'rm'}",
        "batch_size=1",
        "eval_fraction=0.5",
    )
    ev = ok("reward", "eval", "--model", tmp_path / "rm" / "model", "--data", tiny_data["prefs"])
    metrics = json.loads(ev.stdout)
    assert metrics["n"] == 12 and 0 <= metrics["accuracy"] <= 1
    ok(
        "ppo",
        f"policy={tiny_model_dir}",
        f"reward=[{{type: model, path: '{tmp_path / 'rm' / 'model'}'}}]",
        f"prompts={tiny_data['prompts']}",
        f"output_dir={tmp_path / 'ppo'}",
        "steps=1",
        "batch_size=2",
        "mini_batch_size=2",
        *GEN,
    )
    ok(
        "eval",
        f"policy={tmp_path / 'ppo' / 'model'}",
        f"baseline={tiny_model_dir}",
        f"prompts={tiny_data['prompts']}",
        f"output_dir={tmp_path / 'ev'}",
        "limit=2",
        *GEN,
    )
    gen = ok("generate", f"model={tiny_model_dir}", f"prompts={tiny_data['prompts']}", f"output={tmp_path / 'g.jsonl'}", "limit=3", *GEN)
    assert len(gen.stdout.strip().splitlines()) == 3 and (tmp_path / "g.jsonl").exists()


def test_config_errors_exit_2_and_name_the_key(tiny_data, tmp_path):
    result = tether("sft", "learning_rate=1")
    assert result.exit_code == 2 and "unknown key 'learning_rate'" in result.output
    result = tether("ppo", "steps=many")
    assert result.exit_code == 2 and "'steps': expected an integer" in result.output


def test_malformed_data_exits_2_and_names_file_and_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "hello"}\n{"prompt": "hi", "response": 3}\n')
    result = tether("sft", f"model={tiny_model_dir}", f"data={bad}", f"output_dir={tmp_path / 'o'}")
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output and "response" in result.output
    assert not (tmp_path / "o" / "summary.json").exists()


def test_missing_model_is_a_clear_error(tmp_path):
    result = tether("generate", f"model={tmp_path / 'nope'}")
    assert result.exit_code == 2 and "no such directory" in result.output


def test_reward_eval_reports_calibration_and_plots(run_dir, tiny_data, tmp_path):
    result = ok(
        "reward",
        "eval",
        "--model",
        run_dir / "reward" / "model",
        "--data",
        tiny_data["prefs"],
        "--out",
        tmp_path / "rm.json",
        "--plot",
        "--precision",
        "fp32",
    )
    metrics = json.loads(result.stdout)
    assert {"accuracy", "n", "ece", "mean_margin", "length_corr"} <= metrics.keys() and metrics["n"] == 12
    assert 0.0 <= metrics["ece"] <= 1.0
    assert json.loads((tmp_path / "rm.json").read_text()) == metrics
    assert (tmp_path / "rm.png").stat().st_size > 1000


def test_reward_score_writes_a_column(run_dir, tiny_data, tmp_path):
    result = ok("reward", "score", "--model", run_dir / "reward" / "model", "--data", tiny_data["demos"], "--out", tmp_path / "s.jsonl")
    assert json.loads(result.stdout)["scored"] == 12
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(r["reward"], float) and "response" in r for r in rows)


def test_missing_reward_model_is_a_clear_error(tiny_model_dir, tiny_data, tmp_path):
    result = tether(
        "ppo",
        f"policy={tiny_model_dir}",
        f"reward=[{{type: model, path: '{tmp_path}'}}]",
        f"prompts={tiny_data['prompts']}",
        f"output_dir={tmp_path / 'ppo'}",
    )
    assert result.exit_code == 2 and "no config.json" in result.output


# --------------------------------------------------------------------------- paths and Ctrl-C (issue 25)


def _flat(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


@pytest.fixture
def no_model_loads(monkeypatch):
    """A stage that got as far as loading a model fails the test: path errors must come first."""
    from tether.stages import sft

    def refuse(name):
        raise AssertionError(f"a model was loaded ({name}) before the output_dir was checked")

    monkeypatch.setattr(sft, "resolve_model", refuse)


def test_output_dir_that_is_a_file_is_refused_before_the_model_loads(no_model_loads, tiny_data, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("mine")
    for out, expect in [
        (file, f"output_dir {file} is a file; expected a folder"),
        (file / "sub", f"output_dir {file / 'sub'}: {file} is a file, so no folder can be made under it"),
    ]:
        result = tether("sft", "model=default", f"data={tiny_data['demos']}", f"output_dir={out}")
        assert result.exit_code == 2 and expect in _flat(result) and "Traceback" not in result.output
    assert file.read_text() == "mine"


def test_output_dir_not_writable_is_refused(no_model_loads, tiny_data, tmp_path, monkeypatch):
    """As root every folder is writable, so the permission check is made to fail."""
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path / "ro"))
    result = tether("sft", "model=default", f"data={tiny_data['demos']}", f"output_dir={tmp_path / 'ro'}")
    assert result.exit_code == 2 and "the folder is not writable by this user" in _flat(result) and "output_dir" in result.output


def test_run_output_dir_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "runs"
    file.write_text("")
    result = tether("run", "--config", "demo", f"output_dir={file}")
    assert result.exit_code == 2 and f"output_dir {file} is a file" in _flat(result)
    assert file.read_text() == ""


def test_model_that_is_a_file_or_has_no_config_is_a_clear_error(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_text("")
    result = tether("generate", f"model={file}")
    assert result.exit_code == 2
    assert f"model '{file}' is a file; expected a Hugging Face model directory (config.json + weights) or 'default'" in _flat(result)
    result = tether("generate", f"model={tmp_path}")
    assert result.exit_code == 2 and "has no config.json" in _flat(result)
    result = tether("reward", "eval", "--model", file, "--data", file)
    assert result.exit_code == 2 and f"reward model '{file}' is a file" in _flat(result)


def test_a_mistyped_model_folder_suggests_the_one_beside_it(tmp_path):
    (tmp_path / "my-model").mkdir()
    result = tether("generate", f"model={tmp_path / 'my-modle'}")
    assert result.exit_code == 2 and f"no such directory (did you mean {tmp_path / 'my-model'}?)" in _flat(result)
    result = tether("eval", f"policy={tmp_path / 'my-modle'}", f"baseline={tmp_path / 'my-model'}")  # the setting at fault is named
    assert result.exit_code == 2 and f"policy '{tmp_path / 'my-modle'}': no such directory (did you mean" in _flat(result)
    result = tether("reward", "eval", "--model", tmp_path / "my-modle", "--data", tmp_path / "x.jsonl")
    assert result.exit_code == 2 and f"reward model '{tmp_path / 'my-modle'}': no such directory (did you mean" in _flat(result)


@pytest.mark.parametrize(
    "argv,module,name,expect",
    [
        (["sft", "max_steps=1"], "tether.stages.sft", "train_sft", "interrupted; rerun the same command to resume"),
        (["run", "--config", "demo"], "tether.pipeline", "run_pipeline", "interrupted; rerun the same command to resume"),
        (
            ["rs", "reward=[{type: model, path: rm}]"],
            "tether.stages.bon",
            "rejection_sampling",
            "interrupted; rerun the same command to resume",
        ),
        (["collect", "limit=1"], "tether.stages.collect", "collect", "interrupted"),
    ],
)
def test_ctrl_c_ends_with_one_line_and_exit_130(argv, module, name, expect, monkeypatch):
    import importlib

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    result = tether(*argv)
    assert result.exit_code == 130 and result.output.strip() == expect and "Traceback" not in result.output


def test_an_os_error_on_a_user_path_names_the_path(tmp_path):
    result = tether("label", "guidelines", tmp_path, "--db", tmp_path / "prefs.db")  # a folder where a file belongs
    assert result.exit_code == 2 and f"Is a directory: {tmp_path}" in _flat(result) and "Traceback" not in result.output
    assert not (tmp_path / "prefs.db").exists()


def test_ctrl_c_outside_a_stage_also_exits_130(monkeypatch):
    from tether import cli
    from tether.stages import collect

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_print_summary", interrupted)  # after the stage, outside _run
    monkeypatch.setattr(collect, "collect", lambda cfg: {})
    result = tether("collect", "limit=1")
    assert result.exit_code == 130 and result.output.strip() == "interrupted"


def test_the_readme_figures_draw_from_a_run(run_dir, tmp_path):
    """tools/readme_figures.py, which draws the README's pictures from a demo run, reads what `tether run` writes."""
    spec = importlib.util.spec_from_file_location("readme_figures", Path(__file__).resolve().parents[1] / "tools" / "readme_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    for draw in (figures.win_rates, figures.gold_vs_kl):
        path = draw(run_dir, tmp_path / f"{draw.__name__}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="no eval/summary.json"):
        figures.win_rates(tmp_path, tmp_path / "none.png")


def test_the_label_commands_start_without_torch(tmp_path):
    """`tether label ...` loads cli_label alone (tether/entry.py): the processes a labelling team starts (stats, export, the
    web app) import neither torch nor any stage; every other command gets the whole CLI."""
    db = tmp_path / "prefs.db"
    probe = (
        "import sys\n"
        "from tether.entry import main\n"
        "sys.argv = ['tether', *{argv}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'tether.stages', 'tether.cli') if m in sys.modules))\n"
    )

    def modules(argv: list[str]) -> str:
        done = subprocess.run([sys.executable, "-c", probe.replace("{argv}", repr(argv))], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert modules(["label", "add-annotator", "ada", "--db", str(db)]) == "[]"
    assert modules(["label", "stats", "--db", str(db), "--json"]) == "[]"
    assert modules(["--version"]) == "['tether.cli', 'tether.stages', 'torch']"
