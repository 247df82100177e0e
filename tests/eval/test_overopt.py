"""Gao et al.'s over-optimisation forms: the fits recover known alpha and beta, the peak formulas, the plots and commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from tether.cli import app
from tether.eval.overopt import fit_overopt, frontier, gao_curve, overopt, peak_d


@pytest.mark.parametrize("form, alpha, beta", [("rl", 1.2, 0.4), ("rl", 0.5, 0.25), ("bon", 0.8, 0.2)])
def test_fit_recovers_alpha_and_beta_from_exact_points(form, alpha, beta):
    kl = np.linspace(0.0, 30.0, 12)
    gold = 1.7 + gao_curve(np.sqrt(kl), alpha, beta, form)  # an offset: gold's own scale
    fit = fit_overopt(kl, gold, form)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-9) and fit["beta"] == pytest.approx(beta, abs=1e-9)
    assert fit["offset"] == pytest.approx(1.7, abs=1e-9) and fit["rmse"] < 1e-9 and fit["n"] == 12


def test_fit_recovers_alpha_and_beta_through_noise():
    rng = np.random.default_rng(0)
    kl = np.repeat(np.linspace(0.5, 40.0, 20), 5)
    gold = gao_curve(np.sqrt(kl), 1.0, 0.3, "rl") + rng.normal(0, 0.02, kl.size)
    fit = fit_overopt(kl, gold, "rl")
    assert fit["alpha"] == pytest.approx(1.0, abs=0.05) and fit["beta"] == pytest.approx(0.3, abs=0.02)


def test_peak_formulas():
    # RL: d (a - b ln d) has derivative a - b ln d - b = 0 at d* = exp(a/b - 1); a=1.2, b=0.4: exp(2) = 7.389, KL* = e^4 = 54.6
    assert peak_d(1.2, 0.4, "rl") == pytest.approx(math.exp(2.0))
    # BoN: d (a - b d) peaks at a / (2b); a=0.8, b=0.2 -> 2.0, KL* = 4
    assert peak_d(0.8, 0.2, "bon") == pytest.approx(2.0)
    assert peak_d(1.0, 0.0, "rl") is None and peak_d(1.0, -0.1, "bon") is None  # no bend: no peak
    for form, a, b in (("rl", 1.2, 0.4), ("bon", 0.8, 0.2)):  # the formula is the numerical argmax
        grid = np.linspace(1e-6, 20.0, 400001)
        assert grid[np.argmax(gao_curve(grid, a, b, form))] == pytest.approx(peak_d(a, b, form), abs=1e-3)
    fit = fit_overopt([0, 1, 4, 9, 16, 25], gao_curve(np.sqrt([0, 1, 4, 9, 16, 25]), 0.8, 0.2, "bon"), "bon")
    assert fit["kl_peak"] == pytest.approx(4.0) and fit["gold_peak"] == pytest.approx(0.8 * 2 - 0.2 * 4)


def test_fit_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_overopt([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one of each"):
        fit_overopt([1, 2, 3], [0.1, 0.2])


def _ppo_run(folder, alpha=1.0, beta=0.35, stage="ppo"):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(1, 11):
        kl = 3.0 * step
        rows.append({"step": step, "rollout/reward": 0.1 * step})
        if step % 2 == 0:  # the held-out check every 2 steps
            rows[-1].update(
                {
                    "held_out/kl": kl,
                    "held_out/reward": 0.2 * math.sqrt(kl),
                    "held_out/gold": 0.5 + float(gao_curve(np.sqrt([kl]), alpha, beta, "rl")[0]),
                }
            )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({"stage": stage}))
    return folder


def test_overopt_reads_a_run_fits_and_plots(tmp_path):
    run = tmp_path / "run"
    _ppo_run(run / "ppo")
    (run / "sft").mkdir()
    (run / "sft" / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 2.0}) + "\n")  # no held-out KL: ignored
    result = overopt(run)
    assert result["source"] == str(run / "ppo") and len(result["points"]) == 5
    assert result["alpha"] == pytest.approx(1.0) and result["beta"] == pytest.approx(0.35)
    assert result["kl_peak"] == pytest.approx(math.exp(2 * (1.0 / 0.35 - 1)))
    png = run / "overopt.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads((run / "overopt.json").read_text())["beta"] == pytest.approx(0.35)


def test_overopt_reads_a_run_whose_last_metrics_line_was_cut_short(tmp_path):
    run = _ppo_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 11, "held_out/k')  # a crash while the row was written
    assert len(overopt(run)["points"]) == 5


def test_overopt_without_held_out_checks_says_how_to_get_them(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="early_stop.prompts"):
        overopt(tmp_path / "run")


def test_frontier_plots_every_run(tmp_path):
    runs = [_ppo_run(tmp_path / f"beta{b}", alpha=1.0, beta=b) for b in (0.2, 0.4)]
    (tmp_path / "empty").mkdir()
    result = frontier(runs + [tmp_path / "empty"], tmp_path / "frontier.png")
    assert sorted(result["runs"]) == sorted(map(str, runs)) and result["missing"] == [str(tmp_path / "empty")]
    assert len(result["runs"][str(runs[0])]) == 5 and (tmp_path / "frontier.png").stat().st_size > 5000
    proxy = frontier(runs, tmp_path / "proxy.png", metric="proxy")
    assert proxy["runs"][str(runs[0])][0] == [6.0, pytest.approx(0.2 * math.sqrt(6.0))]


def test_eval_overopt_and_frontier_commands(tmp_path):
    run = _ppo_run(tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "overopt", str(run), "form=rl", f"out={tmp_path / 'o.png'}"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["beta"] == pytest.approx(0.35) and (tmp_path / "o.png").exists()
    result = runner.invoke(app, ["eval", "frontier", str(run), str(_ppo_run(tmp_path / "other", beta=0.5)), f"out={tmp_path / 'f.png'}"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["runs"]) == 2 and (tmp_path / "f.png").exists()
    bad = runner.invoke(app, ["eval", "overopt", str(run), "shape=rl"])
    assert bad.exit_code == 2 and "unknown option shape" in bad.output


def test_best_of_n_expectation_worked_example():
    from tether.eval.overopt import best_of_n_expectation

    proxy, gold = [0.1, 0.5, 0.3], [1.0, 2.0, 3.0]
    assert best_of_n_expectation(proxy, gold, 1) == pytest.approx(2.0)  # the mean
    assert best_of_n_expectation(proxy, gold, 2) == pytest.approx(7 / 3)  # pairs pick golds 2, 3, 2
    assert best_of_n_expectation(proxy, gold, 3) == pytest.approx(2.0)  # the proxy's argmax
    with pytest.raises(ValueError, match="1 <= n <= N"):
        best_of_n_expectation(proxy, gold, 4)


def test_overopt_of_a_best_of_n_run_uses_its_samples(tmp_path):
    run = tmp_path / "bon"
    run.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(40):  # gold rises with the proxy, then falls at the top: over-optimisation
        scores = rng.normal(size=8)
        rows.append({"prompt": "p", "scores": scores.tolist(), "gold_scores": (scores - 0.4 * scores**2).tolist()})
    (run / "bon.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"stage": "bon"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "bon/prompts": 40}) + "\n")
    result = overopt(run)
    assert result["form"] == "bon" and len(result["points"]) == 8
    assert [p["kl"] for p in result["points"]][:2] == [0.0, pytest.approx(math.log(2) - 0.5)]
    assert result["points"][-1]["proxy"] > result["points"][0]["proxy"]
