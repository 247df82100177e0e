"""report.html: one self-contained page built from a run directory's files, checked in headless Chromium.

The run directory here is written by hand (summaries, metrics, samples; two rounds), so the test
needs no training; `tests/test_rounds.py` checks the page of a real two-round run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tether.eval.report import build_html, write_html_report

XSS = '<script>window.pwned = 1</script><img src="https://example.com/x.png">'


def _write(folder: Path, summary: dict, metrics: list[dict] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "summary.json").write_text(json.dumps(summary))


def fake_run(run: Path) -> Path:
    """A two-round run's files, with numbers made up for the page (no model involved)."""
    bins = [{"lo": k / 10, "hi": (k + 1) / 10, "count": 2, "mean_prob": k / 10 + 0.05, "accuracy": 0.5} for k in range(10)]
    _write(
        run / "sft",
        {"stage": "sft", "train_examples": 10, "steps": 3, "eval_loss_before": 2.0, "eval_loss": 1.5, "seconds": 4.0},
        [{"step": s, "train/loss": 2.0 - 0.1 * s} for s in (1, 2, 3)] + [{"step": 3, "eval/loss": 1.5}],
    )
    for k, folder in ((1, run), (2, run / "round2")):
        _write(folder / "collect", {"stage": "collect", "pairs": 8, "seconds": 2.0})
        _write(
            folder / "reward",
            {
                "stage": "reward",
                "train_pairs": 6 * k,
                "eval_pairs": 2 * k,
                "eval_accuracy": 0.5 + 0.1 * k,
                "eval_accuracy_ci": [0.2, 0.9],
                "train_accuracy": 0.8,
                "eval_ece": 0.1,
                "eval_bins": bins,
                "eval_mean_margin": 0.3,
                "seconds": 3.0,
            },
            [{"step": s, "train/loss": 0.7 - 0.05 * s, "train/accuracy": 0.5 + 0.05 * s} for s in (1, 2, 3)],
        )
        _write(
            folder / "ppo",
            {
                "stage": "ppo",
                "steps": 4,
                "steps_done": 4,
                "reward_first_quarter": 0.0,
                "reward_last_quarter": 0.5,
                "kl_last_quarter": 2.0,
                "beta_final": 0.05,
                "seconds": 5.0,
            },
            [
                {
                    "step": s,
                    "rollout/reward": 0.1 * s,
                    "rollout/kl": 0.5 * s,
                    "rollout/beta": 0.05,
                    "rollout/entropy": 2.0,
                    "rollout/length": 10 + s,
                    "held_out/kl": 0.5 * s,
                    "held_out/reward": 0.1 * s,
                    "held_out/gold": 0.2 * s - 0.03 * s * s,
                }
                for s in (1, 2, 3, 4)
            ],
        )
        judges = {
            "gold": {
                "win_rate": 0.6,
                "ci_low": 0.4,
                "ci_high": 0.8,
                "wins": 5,
                "ties": 2,
                "losses": 3,
                "n": 10,
                "lc_win_rate": 0.55,
                "lc_ci_low": 0.35,
                "lc_ci_high": 0.75,
                "lc_slope": 0.4,
            }
        }
        _write(
            folder / "eval",
            {
                "stage": "eval",
                "prompts": 10,
                "judge": "gold",
                "win_rate": 0.6,
                "win_rate_ci": [0.4, 0.8],
                "n": 10,
                "lc_win_rate": 0.55,
                "judges": judges,
                "gold_win_rate": 0.6,
                "gold_win_rate_ci": [0.4, 0.8],
                "gold_wins": 5,
                "gold_ties": 2,
                "gold_losses": 3,
                "gold_policy": 1.2 + 0.1 * k,
                "gold_baseline": 1.0,
                "kl_policy": 2.0 * k,
                "kl_policy_se": 0.2,
                "kl_baseline": 0.0,
                "proxy_policy": 0.5 * k,
                "proxy_baseline": 0.0,
                "proxy_win_rate": 0.8,
                "length_policy": 12.0,
                "length_baseline": 20.0,
                "length_dist_policy": {"p10": 5, "p50": 12, "p90": 20, "max": 30},
                "finished_policy": 0.9,
                "self_bleu_policy": 0.3,
                "refusal_policy": 0.0,
                "max_words": 40.0,
                "hacks_policy": {"sycophantic": 0.1, "repetition": 0.0, "too_long": 0.0, "any": 0.1},
                "seconds": 6.0,
            },
        )
        rows = [
            {
                "prompt": f"Question {i} & <b>bold</b>?",
                "baseline": f"baseline answer {i}",
                "policy": XSS if i == 0 else f"policy answer {i}",
                "gold_policy": 1.0,
                "gold_baseline": 0.5,
            }
            for i in range(3)
        ]
        rows.append(
            {
                "prompt": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye?"},
                ],
                "baseline": "Bye.",
                "policy": "Goodbye!",
                "gold_policy": 1.0,
                "gold_baseline": 1.0,
            }
        )
        (folder / "eval" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def external_references(page: str) -> list[str]:
    """Every src= or href= (quoted or not) that points at the network."""
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*((?:https?:)?//[^"'\s>]+)""", page, flags=re.IGNORECASE)


def test_page_is_self_contained_and_escapes_model_text(tmp_path):
    page = build_html(fake_run(tmp_path / "run"))
    assert external_references(page) == []
    assert "<script" not in page.lower()  # the page has no script of its own, and the sample's is escaped
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page and "Question 0 &amp; &lt;b&gt;bold&lt;/b&gt;?" in page
    # timeline, SFT, RM training + reliability x 2 rounds, PPO, over-optimisation fit, per-round gold/proxy
    assert page.count('src="data:image/png;base64,') == 9
    for heading in ["Stage timeline", "SFT", "Reward model", "PPO", "Reward over-optimisation", "Win rates", "Samples"]:
        assert f"<h2>{heading}" in page
    assert "round 2: reward" in page and "length-controlled" in page


def test_external_reference_detector_finds_links():
    assert external_references('<img src="https://x.org/a.png"><a href=http://y.org>') == ["https://x.org/a.png", "http://y.org"]
    assert external_references('<link href="//cdn.example/s.css">') == ["//cdn.example/s.css"]
    assert external_references('<img src="data:image/png;base64,AAAA">') == []


def test_partial_run_still_gets_a_page(tmp_path):
    run = tmp_path / "run"
    _write(
        run / "sft",
        {"stage": "sft", "train_examples": 10, "steps": 3, "eval_loss_before": 2.0, "eval_loss": 1.5, "seconds": 4.0},
        [{"step": 1, "train/loss": 2.0}],
    )
    page = write_html_report(run).read_text()
    assert "No evaluation yet" in page and "No PPO stage" in page and page.count("data:image/png") == 2


def test_missing_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        build_html(tmp_path / "nope")


def test_report_renders_in_headless_chromium(chromium, tmp_path):
    from selenium.webdriver.common.by import By

    report = write_html_report(fake_run(tmp_path / "run"))
    driver = chromium  # headless Chromium (tests/conftest.py); skipped with the reason where it is missing
    driver.get(report.as_uri())
    assert driver.title == "tether run: run"
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) == 9
    # every plot decoded and laid out: a PNG that failed to decode has naturalWidth 0
    assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 100", i) for i in images)
    assert driver.execute_script("return window.pwned === undefined") is True
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "table.samples td")]
    assert "<script>window.pwned = 1</script>" in "\n".join(cells)
    # nothing was fetched from anywhere but the file itself
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in urls if not u.startswith(("data:", "file:"))] == []
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
