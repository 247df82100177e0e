"""Trackers: metrics.jsonl always; TensorBoard and Weights & Biases (offline) with the same metric names when asked."""

from __future__ import annotations

import json
import time
import warnings

import pytest

from tether.config import ConfigError, DPOConfig, EvalConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig, load_config
from tether.tracking import MetricsLogger

ROWS = [{"train/loss": 2.0, "rollout/kl": 0.5, "eval/win_rate": None}, {"train/loss": 1.5, "rollout/kl": 0.7, "eval/win_rate": 0.6}]


def _log(out, tracker: str) -> None:
    logger = MetricsLogger(out, 2, "test", ["train/loss"], tracker=tracker)
    for step, row in enumerate(ROWS, 1):
        logger.log(step, row)
    logger.close()


def test_metrics_jsonl_without_a_tracker(tmp_path):
    _log(tmp_path, "none")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train/loss"], r["eval/win_rate"]) for r in rows] == [(1, 2.0, None), (2, 1.5, 0.6)]
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb").exists()


def _need(module: str, extra: str):
    try:
        __import__(module)
    except ImportError:
        warnings.warn(f"the {extra} tracker test was skipped: {module} is not installed (pip install 'tether[{extra}]')", stacklevel=2)
        pytest.skip(f"{module} is not installed")


def test_tensorboard_event_file_holds_the_same_names(tmp_path):
    _need("tensorboard", "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(tmp_path, "tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval/win_rate", "rollout/kl", "train/loss"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.5)]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("eval/win_rate")] == [(2, 0.6)]  # None is not logged
    assert (tmp_path / "metrics.jsonl").exists()


def test_wandb_offline_run_is_written(tmp_path, monkeypatch):
    _need("wandb", "wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "config.yaml").write_text("lr: 0.001\n")
    _log(tmp_path, "wandb")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    path = next(runs[0].glob("run-*.wandb"))  # the run's protobuf records, for `wandb sync`
    for _ in range(300):  # wandb's service process may still be flushing after finish() on a loaded machine
        if b"eval/win_rate" in (records := path.read_bytes()):
            break
        time.sleep(0.1)
    for name in (b"train/loss", b"rollout/kl", b"eval/win_rate", b"lr"):  # the metric names, and the stage's config.yaml
        assert name in records, name


def test_stage_configs_take_a_tracker_and_refuse_unknown_ones():
    for cls in (SFTConfig, RewardConfig, DPOConfig, EvalConfig):
        assert load_config(cls, None, ["tracker=tensorboard"]).tracker == "tensorboard", cls.__name__
    assert load_config(PPOConfig, None, ["tracker=wandb", "reward=[{type: model, path: rm}]"]).tracker == "wandb"
    assert load_config(GRPOConfig, None, ["tracker=wandb", "reward=[{type: model, path: rm}]"]).tracker == "wandb"
    with pytest.raises(ConfigError, match="'tracker': expected one of 'none', 'tensorboard', 'wandb'"):
        load_config(SFTConfig, None, ["tracker=mlflow"])


def test_a_torn_last_line_is_dropped_on_resume_and_a_bad_earlier_line_is_named(tmp_path):
    from tether.data.readers import DataError
    from tether.tracking import read_appended
    from tether.training import resumed_history

    metrics, samples = tmp_path / "metrics.jsonl", tmp_path / "samples.jsonl"
    metrics.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n{"step": 3, "train/lo')  # a crash mid-write
    samples.write_text('{"step": 1, "response": "a"}\n{"step": 3, "response": "b"}\n{"step": 3, "resp')
    assert [row["step"] for _, row in read_appended(metrics)] == [1, 2]
    logger = MetricsLogger(tmp_path, 4, "test", [], start_step=2)  # a run resumed from its step-2 checkpoint
    assert resumed_history(logger, tmp_path, 2, True) == [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5}]
    logger.log(3, {"train/loss": 1.0})
    logger.close()
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert samples.read_text() == '{"step": 1, "response": "a"}\n'
    metrics.write_text('{"step": 1, "train/lo\n{"step": 2, "train/loss": 1.5}\n')
    with pytest.raises(DataError, match=rf"{metrics}:1: not a JSON row .*only a last line cut short by a crash is dropped"):
        MetricsLogger(tmp_path, 4, "test", [], start_step=2)


def test_the_report_reads_a_crashed_stage_s_metrics(tmp_path):
    from tether.eval.report import _metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "rollout/kl": 0.5}\n{"step": 2, "rollout/k')
    assert _metrics(tmp_path) == [{"step": 1, "rollout/kl": 0.5}]
