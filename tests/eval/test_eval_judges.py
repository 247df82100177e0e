"""`tether eval` on tiny models: every metric in the summary, the AI judge in both orders, people through the store."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tether.cli import app
from tether.config import EvalConfig, load_config
from tether.eval.metrics import outcome_win_rate
from tether.feedback.store import open_store
from tether.stages.evaluate import evaluate

GEN = ["generation.max_new_tokens=8", "generation.batch_size=4", "precision=fp32", "limit=6"]


def eval_cfg(tiny_model_dir, other_tiny_model_dir, tiny_data, out, *extra):
    return load_config(
        EvalConfig,
        None,
        [
            f"policy={tiny_model_dir}",
            f"baseline={other_tiny_model_dir}",
            f"prompts={tiny_data['prompts']}",
            f"output_dir={out}",
            *GEN,
            *extra,
        ],
    )


def test_eval_reports_every_metric(tiny_model_dir, other_tiny_model_dir, tiny_data, tmp_path):
    s = evaluate(eval_cfg(tiny_model_dir, other_tiny_model_dir, tiny_data, tmp_path / "eval"))
    assert s["judge"] == "gold" and s["judges"]["gold"]["win_rate"] == s["gold_win_rate"] == s["win_rate"]
    gold = s["judges"]["gold"]
    assert gold["wins"] + gold["ties"] + gold["losses"] == gold["n"] == 6 and gold["ci_low"] <= gold["win_rate"] <= gold["ci_high"]
    assert 0 <= s["lc_win_rate"] <= 1 and s["lc_win_rate_ci"][0] <= s["lc_win_rate_ci"][1]
    assert s["kl_policy"] != 0.0 and s["kl_policy_se"] > 0  # another model's samples under the baseline as reference
    assert set(s["length_dist_policy"]) == {"mean", "min", "p10", "p50", "p90", "max"}
    assert 0 <= s["self_bleu_policy"] <= 1 and 0 <= s["refusal_policy"] <= 1
    assert set(s["hacks_policy"]) == {"sycophantic", "repetition", "too_long", "any"} and s["max_words"] >= 2
    rows = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"tokens_policy", "tokens_baseline", "gold_policy"} <= rows[0].keys()
    metrics = json.loads((tmp_path / "eval" / "metrics.jsonl").read_text())
    assert metrics["eval/win_rate"] == s["win_rate"] and metrics["eval/kl"] == s["kl_policy"] and "eval/self_bleu" in metrics


def test_ai_judge_asks_both_orders(tiny_model_dir, other_tiny_model_dir, tiny_data, tmp_path):
    s = evaluate(eval_cfg(tiny_model_dir, other_tiny_model_dir, tiny_data, tmp_path / "eval", "judge=ai", f"judge_model={tiny_model_dir}"))
    assert s["judge"] == "ai" and s["judges"]["ai"]["n"] == 6 and s["win_rate"] == s["judges"]["ai"]["win_rate"]
    rows = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    for r in rows:  # the outcome follows P(policy better), both orders averaged; within 1e-6 of 1/2 is a tie
        assert 0 < r["p_ai"] < 1
        tie = r["policy"].strip() == r["baseline"].strip() or abs(r["p_ai"] - 0.5) < 1e-6
        assert r["outcome"] == (0.5 if tie else float(r["p_ai"] > 0.5))
    assert s["win_rate"] == outcome_win_rate([r["outcome"] for r in rows])["win_rate"]


def test_people_judge_queues_pairs_then_reads_the_votes(tiny_model_dir, other_tiny_model_dir, tiny_data, tmp_path):
    db, out = tmp_path / "prefs.db", tmp_path / "eval"
    args = [
        "eval",
        f"policy={tiny_model_dir}",
        f"baseline={other_tiny_model_dir}",
        f"prompts={tiny_data['prompts']}",
        f"output_dir={out}",
        *GEN,
        "judge=people",
        f"db={db}",
    ]
    # 1. first run: the pairs go into the store, no summary yet, the message says what to do
    first = CliRunner().invoke(app, [str(a) for a in args])
    assert first.exit_code == 1, first.output
    assert "tether label serve --db" in first.output and "rerun this `tether eval` command" in first.output
    assert not (out / "summary.json").exists() and json.loads((out / "pending.json").read_text())["decided"] < 6
    responses = json.loads((out / "responses.json").read_text())
    policy_texts = set(responses["policy"]["texts"])
    # 2. a person prefers the policy's answer every time (whichever side it is shown on)
    with open_store(db) as store:
        ada = store.get_or_add_annotator("ada", "human")
        while (task := store.next_task_for(ada)) is not None:
            store.record_judgement(ada, task.id, "left" if task.left in policy_texts else "right")
        queued = len(store.tasks())
    # 3. second run: the same pairs (responses reused), the votes read back
    s = evaluate(load_config(EvalConfig, None, [str(a) for a in args[1:]]))
    assert s is not None and s["judge"] == "people" and not (out / "pending.json").exists()
    people = s["judges"]["people"]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["policy"] for r in rows] == responses["policy"]["texts"]
    assert sum(r["task_id"] is not None for r in rows) == queued
    assert people["n"] == 6 and people["wins"] >= queued  # every queued pair won; identical or empty pairs decided without a vote
    assert all(r["outcome"] == 1.0 for r in rows if r["task_id"] is not None)
