"""`tether eval`: a policy against a baseline on held-out prompts.

Both policies answer the same prompts with the same sampling seed. Reported:
- win rate of the policy under the gold scorer (ties count half; 95% CI; n prompts),
  and under the reward model (the proxy) when one is given;
- mean gold and proxy scores of each;
- KL(policy || reference) in nats per response: the Monte-Carlo estimate
  sum_t log pi(y_t) - log pi_ref(y_t) over the policy's own samples, with its standard error;
- response length, fraction finished (ended with EOS), distinct-1/2 (diversity).
"""

from __future__ import annotations

import time

import torch

from tether.config import EvalConfig, GenerationSettings, resolve_path
from tether.data.readers import read_prompts, write_jsonl
from tether.data.records import Prompt, prompt_text
from tether.eval.metrics import distinct_n, length_stats, mean_and_se, win_rate
from tether.feedback.gold import gold_scores
from tether.models.loading import autocast, load_causal_lm, load_tokenizer, resolve_model
from tether.models.reward_model import RewardEnsemble, RewardModel, load_reward_model
from tether.rollout.generate import generate
from tether.rollout.logprobs import policy_forward
from tether.tracking import write_summary
from tether.training import start_stage


@torch.no_grad()
def sample_and_score(model, reference, tokenizer, prompts: list[Prompt], settings: GenerationSettings, seed: int,
                     precision: str, reward_model: RewardModel | RewardEnsemble | None) -> dict:
    """Responses of `model`, with per-response KL to `reference` (k1, nats) and RM scores."""
    texts, finished, kls, proxy, lengths = [], [], [], [], []
    for b, start in enumerate(range(0, len(prompts), settings.batch_size)):
        rollout = generate(model, tokenizer, prompts[start:start + settings.batch_size], settings, seed=seed * 100003 + b, precision=precision)
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


def evaluate(cfg: EvalConfig) -> dict:
    out = start_stage(cfg)
    t0 = time.time()

    records = read_prompts(resolve_path(cfg.prompts))
    records = records[cfg.offset:cfg.offset + cfg.limit if cfg.limit else None]
    if not records:
        raise ValueError(f"{cfg.prompts}: no prompts left after offset={cfg.offset} and limit={cfg.limit}")
    prompts = [r.prompt for r in records]
    policy_path, baseline_path = resolve_model(cfg.policy), resolve_model(cfg.baseline)
    reference_path = resolve_model(cfg.reference) if cfg.reference else baseline_path
    tokenizer = load_tokenizer(policy_path)
    rm = load_reward_model(cfg.reward_model) if cfg.reward_model else None

    # 1. the two policies answer the same prompts with the same seed
    baseline = load_causal_lm(baseline_path).eval()
    reference = baseline if reference_path == baseline_path else load_causal_lm(reference_path).eval()
    base = sample_and_score(baseline, reference, tokenizer, prompts, cfg.generation, cfg.seed, cfg.precision, rm)
    policy = load_causal_lm(policy_path).eval()
    pol = sample_and_score(policy, reference, tokenizer, prompts, cfg.generation, cfg.seed, cfg.precision, rm)

    # 2. gold scores (the simulated "people") and the comparison
    texts = [prompt_text(p) for p in prompts]
    gold_pol, gold_base = gold_scores(texts, pol["texts"]), gold_scores(texts, base["texts"])
    gold_wr = win_rate(gold_pol, gold_base)
    kl_mean, kl_se = mean_and_se(pol["kl"])
    summary = {
        "stage": "eval", "policy": policy_path, "baseline": baseline_path, "reference": reference_path, "prompts": len(prompts),
        "gold_win_rate": gold_wr["win_rate"], "gold_win_rate_ci": [gold_wr["ci_low"], gold_wr["ci_high"]],
        "gold_wins": gold_wr["wins"], "gold_ties": gold_wr["ties"], "gold_losses": gold_wr["losses"],
        "gold_policy": mean_and_se(gold_pol)[0], "gold_baseline": mean_and_se(gold_base)[0],
        "kl_policy": kl_mean, "kl_policy_se": kl_se, "kl_baseline": mean_and_se(base["kl"])[0],
        "length_policy": mean_and_se(pol["tokens"])[0], "length_baseline": mean_and_se(base["tokens"])[0],
        "words_policy": length_stats(pol["texts"])["mean_words"], "words_baseline": length_stats(base["texts"])["mean_words"],
        "finished_policy": sum(pol["finished"]) / len(prompts), "finished_baseline": sum(base["finished"]) / len(prompts),
        "distinct1_policy": distinct_n(pol["texts"], 1), "distinct1_baseline": distinct_n(base["texts"], 1),
        "distinct2_policy": distinct_n(pol["texts"], 2), "distinct2_baseline": distinct_n(base["texts"], 2),
    }
    if rm is not None:
        proxy_wr = win_rate(pol["proxy"], base["proxy"])
        summary.update({"proxy_policy": mean_and_se(pol["proxy"])[0], "proxy_baseline": mean_and_se(base["proxy"])[0],
                        "proxy_win_rate": proxy_wr["win_rate"], "proxy_win_rate_ci": [proxy_wr["ci_low"], proxy_wr["ci_high"]]})
    rows = []
    for i, p in enumerate(prompts):
        row = {"prompt": p, "policy": pol["texts"][i], "baseline": base["texts"][i], "gold_policy": gold_pol[i],
               "gold_baseline": gold_base[i], "kl_policy": pol["kl"][i]}
        if rm is not None:
            row.update({"proxy_policy": pol["proxy"][i], "proxy_baseline": base["proxy"][i]})
        rows.append(row)
    write_jsonl(out / "samples.jsonl", rows)
    summary["seconds"] = time.time() - t0
    write_summary(out, summary)
    return summary
