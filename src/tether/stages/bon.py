"""Best-of-N sampling and rejection-sampling fine-tuning.

**Best-of-N** (`tether bon`): for each prompt x draw N responses y_1..y_N ~ pi(. | x), score
them with the reward r (the weighted sum of the sources of rewards/sources.py: reward models,
an ensemble's mean - k * std, Python functions, an LLM judge), and return
y* = argmax_i r(x, y_i). No weight changes; the price is N times the sampling. The best-of-N
policy pi_N stays close to pi:

    KL(pi_N || pi) <= log N - (N - 1) / N   nats per response

(the analytic value of Stiennon et al. 2020, "Learning to summarize from human feedback",
shown by Beirami et al. 2024, arXiv:2401.01879, sec. 3, to be an upper bound, close to the
true KL when no single response is likely): 0 for N = 1, 0.19 for N = 2, 1.20 for N = 8.
The gain is mean_x [ r(x, y*) - mean_i r(x, y_i) ], the best score over the average one.

**Rejection-sampling fine-tuning** (`tether rs`; Touvron et al. 2023, Llama 2, sec. 3.2.3):
in rounds k = 1..K, sample N per prompt from the current policy pi_{k-1}, keep the best
(optionally only when its score reaches a threshold), and fine-tune pi_{k-1} on the kept
(prompt, best response) pairs with the SFT stage's `train_sft`; the result pi_k samples the
next round. After every round (and once before the first) the policy answers held-out or
training prompts afresh with one fixed seed, so `fresh/reward` shows whether it improved.

Both sample and score through the parts of stages/rl_parts.py: a `ResponseSampler` (the model, or a vLLM
engine holding it: engine=vllm) and a `SourceScorer` (the reward sources' weighted sum), built once in
setup; `sample_best_of_n` is steps 1-3 of best-of-N, and each rs round steps 1-3 of its loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from tether.config import BoNConfig, ConfigError, RSConfig, resolve_path
from tether.data.readers import iter_jsonl, read_prompts, write_jsonl
from tether.data.records import PromptRecord, prompt_text
from tether.eval.metrics import length_stats, mean_and_se
from tether.feedback.gold import gold_scores
from tether.models.loading import resolve_model
from tether.rewards.sources import describe, load_reward_sources
from tether.stages.rl_parts import ResponseSampler, SourceScorer
from tether.stages.sft import train_sft
from tether.tracking import MetricsLogger, console, read_summary, write_summary
from tether.training import start_stage


def kl_bound(n: int) -> float:
    """log n - (n - 1) / n: the analytic KL(best-of-n || policy) in nats, an upper bound on the true one.

    Stiennon et al. 2020 (best-of-N appendix); Beirami et al. 2024, arXiv:2401.01879, sec. 3.
    n = 1 gives 0 (the policy itself); n = 2 gives log 2 - 1/2 = 0.193.
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def load_scorer(cfg: BoNConfig | RSConfig) -> SourceScorer:
    """The weighted sum of `cfg.reward`'s sources (rewards/sources.py): reward models read the decoded text with
    their own tokenizer; functions get the prompt as text and the prompt row's meta. A None score: that response
    is never picked."""
    return SourceScorer(load_reward_sources(cfg.reward, cfg.precision))


def sample_best_of_n(
    sampler: ResponseSampler, scorer: SourceScorer, records: list[PromptRecord], n: int, seed: int, gold: bool, progress=None
) -> list[dict]:
    """One row per prompt: all N responses and scores, and the best (`best_index` None when every score was None).

    Among equal best scores the first sample wins.
    """
    # 1. sample N responses per prompt (the N copies of a prompt share a batch: sample_responses buckets by length)
    flat = [r for r in records for _ in range(n)]
    samples = sampler.responses([r.prompt for r in flat], seed, progress=progress)
    responses = [s["response"] for s in samples]
    # 2. score them all; the gold scorer, when asked, only watches
    scores = scorer.records(flat, responses)
    golds = gold_scores([prompt_text(r.prompt) for r in flat], responses) if gold else None
    # 3. keep the argmax per prompt
    rows = []
    for i, rec in enumerate(records):
        span = range(i * n, (i + 1) * n)
        s = [scores[j] for j in span]
        valid = [k for k in range(n) if s[k] is not None]
        best = max(valid, key=lambda k: s[k]) if valid else None  # max() keeps the first of equal scores
        row = {
            "prompt": rec.prompt,
            "response": responses[i * n + best] if best is not None else None,
            "score": s[best] if best is not None else None,
            "best_index": best,
            "mean_score": sum(s[k] for k in valid) / len(valid) if valid else None,
            "scores": s,
            "responses": [responses[j] for j in span],
            "finished": [samples[j]["finished"] for j in span],
        }
        if golds is not None:
            g = [golds[j] for j in span]
            row.update({"gold": g[best] if best is not None else None, "gold_mean": sum(g) / n, "gold_scores": g})
        rows.append(row)
    return rows


def gain_summary(rows: list[dict], n: int) -> dict:
    """Mean best score, mean sample score and their difference (the best-of-N gain, with its standard error
    over prompts), the same for gold scores when present, and the analytic KL bound."""
    picked = [r for r in rows if r["best_index"] is not None]
    out = {"prompts": len(rows), "n": n, "prompts_scored": len(picked), "kl_bound": kl_bound(n)}
    if picked:
        gain, gain_se = mean_and_se([r["score"] - r["mean_score"] for r in picked])
        out.update(
            {
                "mean_best_score": mean_and_se([r["score"] for r in picked])[0],
                "mean_sample_score": mean_and_se([r["mean_score"] for r in picked])[0],
                "gain": gain,
                "gain_se": gain_se,
                "finished_best": sum(r["finished"][r["best_index"]] for r in picked) / len(picked),
                "finished_sample": sum(sum(r["finished"]) for r in picked) / (n * len(picked)),
                "words_best": length_stats([r["response"] for r in picked])["mean_words"],
                "words_sample": length_stats([x for r in picked for x in r["responses"]])["mean_words"],
            }
        )
    if picked and "gold" in picked[0]:
        gold_gain, gold_gain_se = mean_and_se([r["gold"] - r["gold_mean"] for r in picked])
        out.update(
            {
                "gold_best": mean_and_se([r["gold"] for r in picked])[0],
                "gold_sample": mean_and_se([r["gold_mean"] for r in picked])[0],
                "gold_gain": gold_gain,
                "gold_gain_se": gold_gain_se,
            }
        )
    return out


# --------------------------------------------------------------------------- tether bon


def best_of_n(cfg: BoNConfig) -> dict:
    out = start_stage(cfg)
    t0 = time.time()
    scorer = load_scorer(cfg)  # first: a bad reward source fails before any sampling

    # 1. sample N per prompt, score, keep the best
    policy_path = resolve_model(cfg.policy, "policy")
    sampler = ResponseSampler(policy_path, cfg)  # the model, or a vLLM engine holding it (engine=vllm)
    records = read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, **cfg.dataset.read_args())
    logger = MetricsLogger(out, len(records) * cfg.n, "bon", [])
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        logger.log(done[0], {"bon/samples": done[0]})

    rows = sample_best_of_n(sampler, scorer, records, cfg.n, cfg.seed, cfg.gold, tick)
    logger.close()

    # 2. write the choices and the gain
    write_jsonl(out / "bon.jsonl", rows)
    seconds = time.time() - t0
    summary = {
        "stage": "bon",
        "policy": policy_path,
        "reward": [describe(r) for r in cfg.reward],
        "bon": str(out / "bon.jsonl"),
        **gain_summary(rows, cfg.n),
        "seconds": seconds,
        "samples_per_second": len(rows) * cfg.n / seconds if seconds > 0 else None,
    }
    write_summary(out, summary)
    return summary


# --------------------------------------------------------------------------- tether rs


def _read_rows(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def fresh_samples(policy_path: str, records: list[PromptRecord], scorer: SourceScorer, cfg: RSConfig, folder: Path) -> dict:
    """Mean score (and gold) of `cfg.eval_samples` fresh samples per eval prompt, always with the same seed;
    cached in `folder/fresh.json`, the samples in `folder/fresh.jsonl`."""
    cached = folder / "fresh.json"
    if cached.exists():
        return json.loads(cached.read_text())
    sampler = ResponseSampler(policy_path, cfg)
    flat = [r for r in records for _ in range(cfg.eval_samples)]
    samples = sampler.responses([r.prompt for r in flat], cfg.seed + 7919)
    sampler.release()
    responses = [s["response"] for s in samples]
    scores = scorer.records(flat, responses)
    valid = [s for s in scores if s is not None]
    result = {
        "fresh/reward": sum(valid) / len(valid) if valid else None,
        "fresh/scored": len(valid),
        "fresh/finished": sum(s["finished"] for s in samples) / len(samples),
        "fresh/words": length_stats(responses)["mean_words"],
    }
    rows = [{"prompt": r.prompt, "response": x, "score": s} for r, x, s in zip(flat, responses, scores)]
    if cfg.gold:
        golds = gold_scores([prompt_text(r.prompt) for r in flat], responses)
        result["fresh/gold"] = sum(golds) / len(golds)
        rows = [{**row, "gold": g} for row, g in zip(rows, golds)]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "fresh.jsonl", rows)
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def rejection_sampling(cfg: RSConfig) -> dict | None:
    """Run the rounds; returns the summary, or None when a round's SFT stopped early (`sft.interrupt_after`)."""
    out = start_stage(cfg, rounds="round_*")  # rounds made with other settings are not gone on from
    t0 = time.time()
    scorer = load_scorer(cfg)
    records = read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, **cfg.dataset.read_args())
    eval_records = (
        read_prompts(resolve_path(cfg.eval_prompts), limit=cfg.eval_limit, **cfg.dataset.read_args(held_out=True))
        if cfg.eval_prompts
        else records[: cfg.eval_limit]
    )
    policy = resolve_model(cfg.policy, "policy")
    logger = MetricsLogger(out, cfg.rounds, "rs", ["rollout/best_reward", "fresh/reward"])

    # 0. the starting policy's fresh samples: what every round is compared with
    start = fresh_samples(policy, eval_records, scorer, cfg, out / "round_0")
    logger.log(0, start)
    history = [{"round": 0, "model": policy, **start}]
    for k in range(1, cfg.rounds + 1):
        folder = out / f"round_{k}"
        finished = read_summary(folder)
        if finished is not None:  # a finished round is not run again
            console.print(f"[dim]rs: round {k} already complete in {folder}, skipping[/dim]")
            logger.log(k, finished["metrics"])
            history.append({"round": k, "model": finished["model"], **finished["metrics"]})
            policy = finished["model"]
            continue
        t_round = time.time()

        # 1. sample N per prompt from the current policy, keep the best (the samples survive an interrupted SFT)
        if (folder / "bon.jsonl").exists():
            rows = _read_rows(folder / "bon.jsonl")
        else:
            sampler = ResponseSampler(policy, cfg)
            rows = sample_best_of_n(sampler, scorer, records, cfg.n, cfg.seed + k, cfg.gold)
            sampler.release()
            write_jsonl(folder / "bon.jsonl", rows)
        kept = [r for r in rows if r["best_index"] is not None and (cfg.threshold is None or r["score"] >= cfg.threshold)]
        if not kept:
            best = max((r["score"] for r in rows if r["score"] is not None), default=None)
            raise ConfigError(
                f"rs round {k}: no prompt's best response scored at least threshold={cfg.threshold} "
                f"(the highest was {best}); lower threshold or set it to null"
            )
        write_jsonl(
            folder / "kept.jsonl",
            [{"prompt": r["prompt"], "response": r["response"], "meta": {"score": r["score"], "round": k}} for r in kept],
        )

        # 2. fine-tune the current policy on its own best responses
        sft_cfg = dataclasses.replace(
            cfg.sft,
            model=policy,
            data=str(folder / "kept.jsonl"),
            output_dir=str(folder / "sft"),
            seed=cfg.seed + k,
            precision=cfg.precision,
            chat_template=cfg.chat_template or cfg.sft.chat_template,  # the template the round sampled with, kept by its model
        )
        sft_summary = read_summary(sft_cfg.output_dir) or train_sft(sft_cfg)
        if sft_summary is None:
            logger.close()
            console.print(f"rs: round {k} stopped during SFT (sft.interrupt_after); rerun the same command to resume")
            return None
        policy = str(folder / "sft" / "model")

        # 3. fresh samples of the new policy, and the round's record
        gains = gain_summary(rows, cfg.n)
        metrics = {
            "rollout/best_reward": gains.get("mean_best_score"),
            "rollout/reward": gains.get("mean_sample_score"),
            "rollout/gain": gains.get("gain"),
            "rollout/kept": len(kept) / len(rows),
            "train/loss": sft_summary.get("final_train_loss"),
            "train/steps": sft_summary["steps"],
            **({"rollout/best_gold": gains["gold_best"], "rollout/gold": gains["gold_sample"]} if "gold_best" in gains else {}),
            **fresh_samples(policy, eval_records, scorer, cfg, folder),
        }
        metrics["round/seconds"] = time.time() - t_round
        write_summary(folder, {"stage": "rs_round", "round": k, "model": policy, "metrics": metrics, **gains})
        logger.log(k, metrics)
        history.append({"round": k, "model": policy, **metrics})
    logger.close()

    first, last = history[0], history[-1]
    summary = {
        "stage": "rs",
        "model": policy,
        "policy_init": history[0]["model"],
        "reward": [describe(r) for r in cfg.reward],
        "rounds": cfg.rounds,
        "n": cfg.n,
        "prompts": len(records),
        "eval_prompts": len(eval_records),
        "kl_bound_per_round": kl_bound(cfg.n),
        "fresh_reward_before": first["fresh/reward"],
        "fresh_reward_after": last["fresh/reward"],
        **({"fresh_gold_before": first.get("fresh/gold"), "fresh_gold_after": last.get("fresh/gold")} if cfg.gold else {}),
        "history": history,
        "seconds": time.time() - t0,
    }
    write_summary(out, summary)
    return summary
