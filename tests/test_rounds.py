"""Iterative RLHF: `tether run` with rounds=2 on the tiny model, labelled by people (pause and resume) or an AI judge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tether.cli import app
from tether.feedback.panel import default_panel, run_panel
from tether.feedback.store import open_store

DEMO = Path(__file__).resolve().parents[1] / "src" / "tether" / "configs" / "demo.yaml"


def tether(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny(out, model, data, *extra):
    """The demo's structure at the smallest sizes: one step of everything, 3 prompts."""
    return [
        "--config",
        DEMO,
        f"output_dir={out}",
        f"model={model}",
        "precision=fp32",
        f"sft.data={data['demos']}",
        "sft.max_steps=1",
        f"collect.prompts={data['prompts']}",
        "collect.limit=3",
        "collect.responses_per_prompt=2",
        "collect.generation.max_new_tokens=5",
        "reward.max_steps=1",
        "reward.batch_size=2",
        "reward.freeze_layers=1",
        f"ppo.prompts={data['prompts']}",
        "ppo.steps=1",
        "ppo.batch_size=2",
        "ppo.mini_batch_size=2",
        "ppo.generation.max_new_tokens=5",
        f"eval.prompts={data['prompts']}",
        "eval.limit=3",
        "eval.generation.max_new_tokens=5",
        "rounds=2",
        *extra,
    ]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def people_run(tiny_model_dir, tiny_data, tmp_path_factory):
    """Two rounds, round 2 labelled by people: the run stops for labels, a simulated panel labels, the rerun finishes."""
    root = tmp_path_factory.mktemp("rounds")
    run, db = root / "run", root / "prefs.db"
    first = tether("run", *tiny(run, tiny_model_dir, tiny_data, "iterate.labeller=people", f"iterate.db={db}"))
    with open_store(db) as store:
        run_panel(store, default_panel([0.9]))
    second = tether("run", "--config", run / "config.yaml")
    return run, db, first, second


def test_people_round_stops_with_the_commands_then_resumes(people_run):
    run, db, first, second = people_run
    assert first.exit_code == 1, first.output
    assert f"tether label serve --db {db}" in first.output and f"resume with: tether run --config {run / 'config.yaml'}" in first.output
    assert second.exit_code == 0, second.output + repr(second.exception)
    assert "round 1" not in second.output or "already complete" in second.output
    for stage in ["collect", "label", "reward", "ppo", "eval"]:
        assert json.loads((run / "round2" / stage / "summary.json").read_text())["stage"] == stage


def test_round_two_learns_from_all_pairs_and_starts_from_the_latest_policy(people_run):
    run = people_run[0]
    r2 = run / "round2"
    new = lines(r2 / "label" / "preferences.jsonl")
    assert new and all(p["meta"]["annotator"] == "people" for p in new)
    merged = lines(r2 / "preferences.jsonl")
    assert merged == lines(run / "collect" / "preferences.jsonl") + new
    reward = json.loads((r2 / "reward" / "summary.json").read_text())
    assert reward["train_pairs"] + reward["eval_pairs"] == len(merged)
    import yaml

    ppo = yaml.safe_load((r2 / "ppo" / "config.yaml").read_text())
    assert ppo["policy"] == str(run / "ppo" / "model") and ppo["reward"] == [
        {**ppo["reward"][0], "type": "model", "path": str(r2 / "reward" / "model")}
    ]
    collect = yaml.safe_load((r2 / "collect" / "config.yaml").read_text())
    assert collect["model"] == str(run / "ppo" / "model") and collect["seed"] == 1  # fresh samples from the latest policy
    ev = yaml.safe_load((r2 / "eval" / "config.yaml").read_text())
    assert ev["policy"] == str(r2 / "ppo" / "model") and ev["baseline"] == str(run / "sft" / "model")


def test_report_shows_every_round_and_rebuilds(people_run):
    run = people_run[0]
    md = (run / "report.md").read_text()
    assert "## Rounds (iterative RLHF)" in md and "\n| 1 |" in md and "\n| 2 |" in md
    page = (run / "report.html").read_text()
    assert "round 2: ppo" in page and "round 2: label" in page
    (run / "report.html").unlink()
    result = tether("report", run)
    assert result.exit_code == 0 and (run / "report.html").read_text().count("data:image/png") == page.count("data:image/png")


def test_rerun_skips_every_round(people_run, tiny_model_dir, tiny_data):
    run, db = people_run[0], people_run[1]
    before = (run / "round2" / "ppo" / "summary.json").read_text()
    result = tether("run", *tiny(run, tiny_model_dir, tiny_data, "iterate.labeller=people", f"iterate.db={db}"))
    assert result.exit_code == 0 and result.output.count("already complete") == 10
    assert (run / "round2" / "ppo" / "summary.json").read_text() == before


def test_judge_round_with_tensorboard(people_run, tiny_model_dir, tiny_data, tmp_path):
    """Round 1 copied from the run above; round 2 labelled by an AI judge (the tiny model), every stage tracked."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    for stage in ["sft", "collect", "reward", "ppo", "eval"]:
        shutil.copytree(people_run[0] / stage, run / stage)
    result = tether(
        "run",
        *tiny(run, tiny_model_dir, tiny_data, "iterate.labeller=judge", f"iterate.judge_model={tiny_model_dir}", "tracker=tensorboard"),
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    label = json.loads((run / "round2" / "label" / "summary.json").read_text())
    assert label["stage"] == "judge" and label["annotator"] == f"judge:{tiny_model_dir}"
    judged = lines(run / "round2" / "label" / "preferences.jsonl")
    assert lines(run / "round2" / "preferences.jsonl") == lines(run / "collect" / "preferences.jsonl") + judged
    for stage in ["reward", "ppo", "eval"]:
        assert list((run / "round2" / stage / "tensorboard").glob("events.out.tfevents.*")), stage


def test_round_two_can_continue_the_previous_reward_model(people_run, tiny_model_dir, tiny_data, tmp_path):
    """iterate.reward_from=previous: round 2's reward model is round 1's, trunk and head, trained on every pair so far."""
    from tether.models.reward_model import RewardModel

    run = tmp_path / "run"
    for stage in ["sft", "collect", "reward", "ppo", "eval"]:
        shutil.copytree(people_run[0] / stage, run / stage)
    result = tether("run", *tiny(run, tiny_model_dir, tiny_data, "iterate.reward_from=previous"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    rm2 = json.loads((run / "round2" / "reward" / "summary.json").read_text())
    assert rm2["trunk"] == str(run / "reward" / "model")
    assert rm2["train_pairs"] + rm2["eval_pairs"] == len(lines(run / "round2" / "preferences.jsonl"))
    first, second = (RewardModel.load(str(d)).model for d in (run / "reward" / "model", run / "round2" / "reward" / "model"))
    head = lambda m: m.score.weight  # noqa: E731
    # continued: one step at the reward stage's learning rate moves the head a little; a fresh head would be another draw
    assert (head(second) - head(first)).abs().max() < 0.1 * head(first).abs().max()


def test_a_reward_model_directory_keeps_its_head(people_run):
    from tether.models.reward_model import RewardModel, init_reward_model

    rm_dir = people_run[0] / "reward" / "model"
    trained = RewardModel.load(str(rm_dir)).model
    again = init_reward_model(str(rm_dir), trained.config.pad_token_id, seed=123)
    assert torch.equal(again.score.weight, trained.score.weight)
