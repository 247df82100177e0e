"""`tether eval`: a policy against a baseline on held-out prompts.

Both policies answer the same prompts with the same sampling seed. Reported:
- win rate of the policy under each judge that applies, with ties (counted half), a 95% CI and
  n: the gold scorer (always), the reward model (the proxy, when one is given), and the judge
  named by `judge` (`ai`: a local LLM judge asked in both orders; `people`: the pairs are
  queued in the preference store `db`, and a later run reads the votes back); next to each, the
  length-controlled win rate (eval/metrics.py, `length_controlled_win_rate`: logistic
  regression of the outcome on tanh(token-length difference / its std); the win rate at zero
  difference);
- KL(policy || reference) in nats per response: the Monte-Carlo estimate
  sum_t log pi(y_t) - log pi_ref(y_t) over the policy's own samples, with its standard error;
- mean gold and proxy scores (with standard errors), the response length distribution, fraction
  finished (ended with EOS), distinct-1/2 and self-BLEU (diversity), the refusal rate by
  `REFUSAL_PATTERNS`, and the fraction of responses with known hacks (sycophantic openers,
  repeated 3-grams, excessive length).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from tether.config import ConfigError, EvalConfig, GenerationSettings, resolve_path
from tether.data.readers import DataError, ReadReport, read_prompts, write_jsonl
from tether.data.records import Prompt, prompt_text
from tether.eval.metrics import (
    distinct_n,
    hack_rates,
    length_controlled_win_rate,
    length_distribution,
    length_stats,
    mean_and_se,
    outcome_win_rate,
    refusal_rate,
    self_bleu,
    win_rate,
)
from tether.feedback.constitution import load_constitution
from tether.feedback.export import majority
from tether.feedback.gold import gold_scores
from tether.feedback.judge import judge_pairs
from tether.feedback.store import Candidate, StoreError, open_store
from tether.models.loading import autocast, load_causal_lm, load_tokenizer, resolve_model
from tether.models.reward_model import RewardEnsemble, RewardModel, load_reward_model
from tether.rollout.logprobs import policy_forward
from tether.rollout.sampling import load_sampler, sample_rollout
from tether.tracking import MetricsLogger, console, write_summary
from tether.training import start_stage

RESPONSES = "responses.json"
"""With judge=people: both policies' responses, kept so that a rerun reads the votes on the same pairs."""


@torch.no_grad()
def sample_and_score(
    model,
    reference,
    tokenizer,
    prompts: list[Prompt],
    settings: GenerationSettings,
    seed: int,
    precision: str,
    reward_model: RewardModel | RewardEnsemble | None,
    engine=None,
) -> dict:
    """Responses of `model` (sampled by it, or by a vLLM `engine` holding its weights), with per-response KL to
    `reference` (k1, nats, from both models' own log-probs) and RM scores."""
    texts, finished, kls, proxy, lengths = [], [], [], [], []
    for b, start in enumerate(range(0, len(prompts), settings.batch_size)):
        batch = prompts[start : start + settings.batch_size]
        rollout = (
            engine.sample(tokenizer, batch, seed * 100003 + b, settings)
            if engine is not None
            else sample_rollout(model, tokenizer, batch, settings, seed=seed * 100003 + b, precision=precision)
        )
        seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
        mask = rollout.response_mask.float()
        with autocast(precision):
            logp = policy_forward(model, seqs, attn, P, settings.temperature)["logp"]
            ref_logp = logp if reference is model else policy_forward(reference, seqs, attn, P, settings.temperature)["logp"]
            if reward_model is not None:
                proxy.extend(reward_model.scores(*rollout.sequences_for_reward(tokenizer.eos_token_id, tokenizer.pad_token_id)).tolist())
        kls.extend(((logp - ref_logp) * mask).sum(-1).tolist())
        texts.extend(rollout.texts)
        finished.extend(rollout.finished.tolist())
        lengths.extend(rollout.lengths.tolist())
    return {"texts": texts, "finished": finished, "kl": kls, "proxy": proxy, "tokens": lengths}


def _engine(cfg: EvalConfig, path: str, model):
    """With engine=vllm, this process's vLLM engine holding `model`, loaded from `path` (one engine: each model's weights
    are swapped in from the copy already loaded here)."""
    return load_sampler(path, cfg, model)[1] if cfg.engine == "vllm" else None


def sample_both(cfg: EvalConfig, prompts: list[Prompt], paths: dict) -> tuple[dict, dict]:
    """The baseline's and the policy's responses, KL to the reference and proxy scores."""
    tokenizer = load_tokenizer(paths["policy"])
    rm = load_reward_model(cfg.reward_model) if cfg.reward_model else None
    baseline = load_causal_lm(paths["baseline"]).eval()
    reference = baseline if paths["reference"] == paths["baseline"] else load_causal_lm(paths["reference"]).eval()
    base = sample_and_score(
        baseline, reference, tokenizer, prompts, cfg.generation, cfg.seed, cfg.precision, rm, _engine(cfg, paths["baseline"], baseline)
    )
    policy = load_causal_lm(paths["policy"]).eval()
    pol = sample_and_score(
        policy, reference, tokenizer, prompts, cfg.generation, cfg.seed, cfg.precision, rm, _engine(cfg, paths["policy"], policy)
    )
    return pol, base


def _comparable(a: str, b: str) -> bool:
    return bool(a.strip()) and bool(b.strip()) and a.strip() != b.strip()


def _forced_outcome(policy: str, baseline: str) -> float:
    """The outcome of a pair no one needs to judge: identical (or both empty) is a tie, an empty answer loses."""
    if policy.strip() == baseline.strip():
        return 0.5
    return 0.0 if not policy.strip() else 1.0


def ai_outcomes(cfg: EvalConfig, prompts: list[Prompt], policy: list[str], baseline: list[str]) -> tuple[list[float], list[float]]:
    """The AI judge's outcomes and P(policy better), both orders asked and averaged (feedback/judge.py): a win when
    P > 1/2, a tie within 1e-6 of 1/2 (or for identical answers), else a loss; an empty answer loses unasked."""
    constitution = load_constitution(cfg.constitution)
    path = resolve_model(cfg.judge_model, "judge_model")
    model = load_causal_lm(path).eval()
    verdicts = judge_pairs(model, load_tokenizer(path), prompts, policy, baseline, constitution.rubric(), precision=cfg.precision)
    p_policy = [v.p_first for v in verdicts]
    outcomes = [
        _forced_outcome(a, b) if not _comparable(a, b) else 0.5 if abs(p - 0.5) < 1e-6 else float(p > 0.5)
        for a, b, p in zip(policy, baseline, p_policy)
    ]
    return outcomes, p_policy


def people_outcomes(
    cfg: EvalConfig, out: Path, prompts: list[Prompt], policy: list[str], baseline: list[str], paths: dict
) -> tuple[list[float | None], dict]:
    """Queue each (policy, baseline) pair as a task in the store (idempotent), then read the votes back.

    A pair is decided once it has `annotators_per_task` non-skip judgements from people (annotators
    of kind human or simulated; an AI judge's votes are left out): the majority of them, a tie when
    two answers share the top count (feedback/export.py, `majority`). Pairs nobody needs to judge
    (identical or empty answers) are decided by :func:`_forced_outcome`.

    Returns:
        (one outcome per prompt, None while undecided; {"queued", "decided", "task_ids"}).
    """
    try:
        store = open_store(cfg.db)
    except StoreError as e:
        raise ConfigError(f"db: {e}") from None
    try:
        task_ids: list[int | None] = []
        for prompt, a, b in zip(prompts, policy, baseline):
            if not _comparable(a, b):
                task_ids.append(None)
                continue
            (task_id,) = store.add_candidates(
                prompt,
                [Candidate(a, paths["policy"], meta={"eval": "policy"}), Candidate(b, paths["baseline"], meta={"eval": "baseline"})],
                [(0, 1)],
                required=cfg.annotators_per_task,
                source=f"tether eval {out}",
            )
            task_ids.append(task_id)
        wanted = {t for t in task_ids if t is not None}
        tasks = {t.id: t for t in store.tasks() if t.id in wanted}
        votes: dict[int, list[str]] = {}
        for v in store.votes():
            if v.task_id in wanted and v.kind != "judge" and v.choice != "skip":
                votes.setdefault(v.task_id, []).append(v.choice)
    finally:
        store.close()
    outcomes: list[float | None] = []
    for a, b, task_id in zip(policy, baseline, task_ids):
        if task_id is None:
            outcomes.append(_forced_outcome(a, b))
        elif len(votes.get(task_id, [])) < cfg.annotators_per_task:
            outcomes.append(None)
        else:
            label = majority(votes[task_id])
            policy_is_a = tasks[task_id].response_a == a
            outcomes.append(0.5 if label == "tie" else float((label == "A") == policy_is_a))
    return outcomes, {"queued": len(wanted), "decided": sum(o is not None for o in outcomes), "task_ids": task_ids}


def judge_row(outcomes: list[float], length_diff: list[float]) -> dict:
    """A win-rate row: rate, CI, wins/ties/losses, n, and the length-controlled rate with its CI and slope."""
    row = outcome_win_rate(outcomes)
    lc = length_controlled_win_rate(outcomes, length_diff)
    row.update({"lc_win_rate": lc["win_rate"], "lc_ci_low": lc["ci_low"], "lc_ci_high": lc["ci_high"], "lc_slope": lc["slope"]})
    return row


def _fingerprint(cfg: EvalConfig, paths: dict, prompts: list[Prompt]) -> dict:
    return {
        "paths": paths,
        "reward_model": cfg.reward_model,
        "prompts": prompts,
        "seed": cfg.seed,
        "generation": dataclasses.asdict(cfg.generation),
        "precision": cfg.precision,
    }


def evaluate(cfg: EvalConfig) -> dict | None:
    """Run the evaluation; returns the summary, or None while people have not yet judged every pair (judge=people)."""
    out = start_stage(cfg)
    t0 = time.time()
    if cfg.judge == "reward_model" and not cfg.reward_model:
        raise ConfigError("judge=reward_model needs reward_model (a reward model directory)")

    report = ReadReport()
    records = read_prompts(resolve_path(cfg.prompts), report=report, **cfg.dataset.read_args())
    records = records[cfg.offset : cfg.offset + cfg.limit if cfg.limit else None]
    if not records:
        raise DataError(
            cfg.prompts,
            None,
            text=f"no prompt left after offset={cfg.offset} and limit={cfg.limit}: the file gives "
            f"{report.records} ({report.describe()}); lower offset",
        )
    prompts = [r.prompt for r in records]
    paths = {"policy": resolve_model(cfg.policy, "policy"), "baseline": resolve_model(cfg.baseline, "baseline")}
    paths["reference"] = resolve_model(cfg.reference, "reference") if cfg.reference else paths["baseline"]

    # 1. the two policies answer the same prompts with the same seed (with judge=people, once: a rerun reads the votes)
    fingerprint = _fingerprint(cfg, paths, prompts)
    cached = json.loads((out / RESPONSES).read_text()) if cfg.judge == "people" and (out / RESPONSES).exists() else None
    if cached is not None and cached["fingerprint"] == json.loads(json.dumps(fingerprint)):
        pol, base = cached["policy"], cached["baseline"]
        console.print(f"eval: reusing the responses in {out / RESPONSES} (the pairs people judge)")
    else:
        pol, base = sample_both(cfg, prompts, paths)
        if cfg.judge == "people":
            (out / RESPONSES).write_text(json.dumps({"fingerprint": fingerprint, "policy": pol, "baseline": base}))

    # 2. gold scores (the simulated "people"), proxy, and the judge's verdicts
    texts = [prompt_text(p) for p in prompts]
    gold_pol, gold_base = gold_scores(texts, pol["texts"]), gold_scores(texts, base["texts"])
    length_diff = [a - b for a, b in zip(pol["tokens"], base["tokens"])]  # response tokens, policy - baseline
    gold_wr = win_rate(gold_pol, gold_base)
    judges = {"gold": judge_row([1.0 if g > h else 0.5 if abs(g - h) <= 1e-9 else 0.0 for g, h in zip(gold_pol, gold_base)], length_diff)}
    if cfg.reward_model:
        proxy_wr = win_rate(pol["proxy"], base["proxy"])
        judges["reward_model"] = judge_row(
            [1.0 if g > h else 0.5 if abs(g - h) <= 1e-9 else 0.0 for g, h in zip(pol["proxy"], base["proxy"])], length_diff
        )
    per_prompt: dict[str, list] = {}
    if cfg.judge == "ai":
        outcomes, per_prompt["p_ai"] = ai_outcomes(cfg, prompts, pol["texts"], base["texts"])
        judges["ai"] = judge_row(outcomes, length_diff)
    elif cfg.judge == "people":
        outcomes, queued = people_outcomes(cfg, out, prompts, pol["texts"], base["texts"], paths)
        decided = [(o, d) for o, d in zip(outcomes, length_diff) if o is not None]
        if len(decided) < len(outcomes):
            partial = outcome_win_rate([o for o, _ in decided]) if decided else None
            (out / "pending.json").write_text(json.dumps({"db": cfg.db, **queued, "partial": partial}, indent=2) + "\n")
            console.print(
                f"eval: people have decided {queued['decided']} of {len(outcomes)} pairs ({queued['queued']} tasks queued in {cfg.db}, "
                f"each needing {cfg.annotators_per_task} judgement(s)). Label them with\n"
                f"  tether label add-annotator NAME --db {cfg.db}   (once per person; prints their token)\n"
                f"  tether label serve --db {cfg.db}                (or: tether label simulate --db {cfg.db})\n"
                "then rerun this `tether eval` command: it reuses the same responses and reads the votes back.",
                highlight=False,
                soft_wrap=True,
            )
            return None
        (out / "pending.json").unlink(missing_ok=True)
        judges["people"] = judge_row(outcomes, length_diff)
        per_prompt["task_id"] = queued["task_ids"]
    if cfg.judge != "gold":
        per_prompt["outcome"] = None if cfg.judge == "reward_model" else outcomes
    headline = judges[cfg.judge]

    # 3. the summary: every judge's win rate, KL, scores, lengths, diversity, refusals, hacks
    max_words = cfg.max_words if cfg.max_words is not None else 2 * max(length_stats(base["texts"])["median_words"], 1.0)
    kl_mean, kl_se = mean_and_se(pol["kl"])
    n = len(prompts)
    summary = {
        "stage": "eval",
        "policy": paths["policy"],
        "baseline": paths["baseline"],
        "reference": paths["reference"],
        "prompts": n,
        "judge": cfg.judge,
        "win_rate": headline["win_rate"],
        "win_rate_ci": [headline["ci_low"], headline["ci_high"]],
        "wins": headline["wins"],
        "ties": headline["ties"],
        "losses": headline["losses"],
        "n": headline["n"],
        "lc_win_rate": headline["lc_win_rate"],
        "lc_win_rate_ci": [headline["lc_ci_low"], headline["lc_ci_high"]],
        "judges": judges,
        "gold_win_rate": gold_wr["win_rate"],
        "gold_win_rate_ci": [gold_wr["ci_low"], gold_wr["ci_high"]],
        "gold_wins": gold_wr["wins"],
        "gold_ties": gold_wr["ties"],
        "gold_losses": gold_wr["losses"],
        "gold_policy": mean_and_se(gold_pol)[0],
        "gold_baseline": mean_and_se(gold_base)[0],
        "gold_policy_se": mean_and_se(gold_pol)[1],
        "gold_baseline_se": mean_and_se(gold_base)[1],
        "kl_policy": kl_mean,
        "kl_policy_se": kl_se,
        "kl_baseline": mean_and_se(base["kl"])[0],
        "length_policy": mean_and_se(pol["tokens"])[0],
        "length_baseline": mean_and_se(base["tokens"])[0],
        "length_dist_policy": length_distribution(pol["tokens"]),
        "length_dist_baseline": length_distribution(base["tokens"]),
        "words_policy": length_stats(pol["texts"])["mean_words"],
        "words_baseline": length_stats(base["texts"])["mean_words"],
        "finished_policy": sum(pol["finished"]) / n,
        "finished_baseline": sum(base["finished"]) / n,
        "distinct1_policy": distinct_n(pol["texts"], 1),
        "distinct1_baseline": distinct_n(base["texts"], 1),
        "distinct2_policy": distinct_n(pol["texts"], 2),
        "distinct2_baseline": distinct_n(base["texts"], 2),
        "self_bleu_policy": self_bleu(pol["texts"]) if n > 1 else None,
        "self_bleu_baseline": self_bleu(base["texts"]) if n > 1 else None,
        "refusal_policy": refusal_rate(pol["texts"]),
        "refusal_baseline": refusal_rate(base["texts"]),
        "max_words": max_words,
        "hacks_policy": hack_rates(pol["texts"], max_words),
        "hacks_baseline": hack_rates(base["texts"], max_words),
    }
    if cfg.reward_model:
        summary.update(
            {
                "proxy_policy": mean_and_se(pol["proxy"])[0],
                "proxy_baseline": mean_and_se(base["proxy"])[0],
                "proxy_policy_se": mean_and_se(pol["proxy"])[1],
                "proxy_win_rate": proxy_wr["win_rate"],
                "proxy_win_rate_ci": [proxy_wr["ci_low"], proxy_wr["ci_high"]],
            }
        )
    rows = []
    for i, p in enumerate(prompts):
        row = {
            "prompt": p,
            "policy": pol["texts"][i],
            "baseline": base["texts"][i],
            "gold_policy": gold_pol[i],
            "gold_baseline": gold_base[i],
            "kl_policy": pol["kl"][i],
            "tokens_policy": pol["tokens"][i],
            "tokens_baseline": base["tokens"][i],
        }
        if cfg.reward_model:
            row.update({"proxy_policy": pol["proxy"][i], "proxy_baseline": base["proxy"][i]})
        row.update({key: values[i] for key, values in per_prompt.items() if values is not None})
        rows.append(row)
    write_jsonl(out / "samples.jsonl", rows)

    # 4. the same numbers as one metrics row (and to the tracker), under eval/
    logger = MetricsLogger(out, 1, "eval", [], tracker=cfg.tracker)
    logger.log(
        1,
        {
            "eval/win_rate": summary["win_rate"],
            "eval/lc_win_rate": summary["lc_win_rate"],
            "eval/gold_win_rate": summary["gold_win_rate"],
            "eval/proxy_win_rate": summary.get("proxy_win_rate"),
            "eval/kl": kl_mean,
            "eval/kl_se": kl_se,
            "eval/gold": summary["gold_policy"],
            "eval/proxy": summary.get("proxy_policy"),
            "eval/length": summary["length_policy"],
            "eval/distinct2": summary["distinct2_policy"],
            "eval/self_bleu": summary["self_bleu_policy"],
            "eval/refusal_rate": summary["refusal_policy"],
            "eval/hack_rate": summary["hacks_policy"]["any"],
        },
    )
    logger.close()
    summary["seconds"] = time.time() - t0
    write_summary(out, summary)
    return summary
