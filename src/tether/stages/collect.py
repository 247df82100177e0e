"""Preference collection: sample K responses per prompt, label every pair.

The labeller here is the simulated annotator (`tether.feedback.simulated`): a gold score
that no stage trains on, turned into noisy choices by Bradley-Terry sampling, so that it
agrees with the gold ordering about as often as people agree with each other.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

from tether.config import CollectConfig, resolve_path
from tether.data.readers import DataError, ReadReport, read_prompts, write_jsonl
from tether.data.records import PreferencePair, prompt_key, prompt_text
from tether.feedback.simulated import SimulatedAnnotator, gold_agreement
from tether.feedback.store import Candidate, DuplicateJudgementError, open_store
from tether.models.loading import resolve_model
from tether.rollout.sampling import load_sampler, sample_responses
from tether.tracking import MetricsLogger, console, write_summary
from tether.training import start_stage


def pairs_to_label(prompts: list, responses: list[str], K: int) -> list[tuple[int, int, int]]:
    """The pairs (prompt index, a, b), a < b, of each prompt's K responses (prompt i's are responses[i*K:(i+1)*K]) to label.
    A pair needs two different, non-empty responses (there is nothing to prefer otherwise), and each pair of texts of a
    prompt is labelled once: two samples can be the same text, a prompt can come twice, and the preference store holds
    a pair of texts as one task, which one annotator answers once."""
    seen, pairs = set(), []
    for i, prompt in enumerate(prompts):
        for a, b in itertools.combinations(range(K), 2):
            first, second = responses[i * K + a].strip(), responses[i * K + b].strip()
            key = (prompt_key(prompt), frozenset((first, second)))
            if first and second and first != second and key not in seen:
                seen.add(key)
                pairs.append((i, a, b))
    return pairs


def collect(cfg: CollectConfig) -> dict:
    out = start_stage(cfg)
    t0 = time.time()
    store = open_store(cfg.db) if cfg.db else None  # opened first: a wrong URL fails before any sampling

    # 1. sample K responses for every prompt
    model_path = resolve_model(cfg.model)
    tokenizer, model = load_sampler(model_path, cfg)  # the model, or a vLLM engine holding it (engine=vllm)
    report = ReadReport()
    records = read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, report=report, **cfg.dataset.read_args())
    console.print(f"collect: {report.kept()}")
    K = cfg.responses_per_prompt
    flat = [r.prompt for r in records for _ in range(K)]
    logger = MetricsLogger(out, len(flat), "collect", [])
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        logger.log(done[0], {"collect/samples": done[0]})

    samples = sample_responses(model, tokenizer, flat, cfg.generation, cfg.seed, cfg.precision, progress=tick)
    logger.close()
    rows = []
    for i, rec in enumerate(records):
        for k in range(K):
            s = samples[i * K + k]
            rows.append(
                {
                    "prompt": rec.prompt,
                    "response": s["response"],
                    "finished": s["finished"],
                    "n_tokens": s["n_tokens"],
                    "prompt_index": i,
                    "sample_index": k,
                    "model": model_path,
                }
            )
    write_jsonl(out / "samples.jsonl", rows)

    # 2. label all K*(K-1)/2 pairs per prompt
    pairs = pairs_to_label([r.prompt for r in records], [s["response"] for s in samples], K)
    if not pairs:  # the samples stay in samples.jsonl
        raise DataError(
            cfg.prompts,
            None,
            text=(
                f"no pair to label: the {K} responses to each of the {len(records)} prompts were all the same or empty "
                f"(samples in {out / 'samples.jsonl'}); sample more varied answers (a higher generation.temperature, "
                "a larger generation.max_new_tokens or responses_per_prompt)"
            ),
        )
    texts = [prompt_text(records[i].prompt) for i, _, _ in pairs]
    firsts = [samples[i * K + a]["response"] for i, a, _ in pairs]
    seconds = [samples[i * K + b]["response"] for i, _, b in pairs]
    annotator = SimulatedAnnotator(
        temperature=cfg.annotator.temperature, target_agreement=cfg.annotator.target_agreement, seed=cfg.annotator.seed
    )
    judgements = annotator.label(texts, firsts, seconds)
    prefs = []
    for (i, _, _), first, second, j in zip(pairs, firsts, seconds, judgements):
        chosen, rejected = (first, second) if j.choice == 0 else (second, first)
        g_c, g_r = (j.gold_first, j.gold_second) if j.choice == 0 else (j.gold_second, j.gold_first)
        prefs.append(
            PreferencePair(
                prompt=records[i].prompt,
                chosen=chosen,
                rejected=rejected,
                meta={
                    "annotator": j.annotator,
                    "p_chosen": j.p_first if j.choice == 0 else 1 - j.p_first,
                    "gold_chosen": g_c,
                    "gold_rejected": g_r,
                    "gold_margin": g_c - g_r,
                    "seed": cfg.seed,
                    "annotator_seed": cfg.annotator.seed,
                    "model": model_path,
                },
            )
        )
    write_jsonl(out / "preferences.jsonl", prefs)

    # 3. the preference store, when asked: prompts, responses with their model and sampling settings, the same pairs as
    #    tasks, and with store_judgements the simulated annotator's answer to each
    tasks_stored, judgements_stored, kept = None, None, None
    if store is not None:
        settings = {**dataclasses.asdict(cfg.generation), "seed": cfg.seed, "precision": cfg.precision}
        simulated = store.get_or_add_annotator(judgements[0].annotator, "simulated") if cfg.store_judgements and judgements else None
        tasks_stored, judgements_stored, kept = 0, 0, 0
        task_of = {}  # index into pairs -> task id
        for i, rec in enumerate(records):
            candidates = [
                Candidate(
                    samples[i * K + k]["response"],
                    model_path,
                    settings,
                    {"finished": samples[i * K + k]["finished"], "n_tokens": samples[i * K + k]["n_tokens"], "sample_index": k},
                )
                for k in range(K)
            ]
            mine = [n for n, (j, _, _) in enumerate(pairs) if j == i]  # this prompt's pairs, as indices into judgements
            task_ids = store.add_candidates(
                rec.prompt,
                candidates,
                [pairs[n][1:] for n in mine],
                required=cfg.annotators_per_task,
                source=cfg.prompts,
                prompt_meta=rec.meta,
            )
            task_of.update(zip(mine, task_ids, strict=True))  # pairs_to_label keeps only pairs the store takes
            tasks_stored += len(task_ids)
        if simulated is not None:
            # the answer as the stored task's A or B: a task already in the store (from an earlier run) may hold the pair
            # the other way round; a task this annotator already answered keeps that answer (it is never changed)
            response_a = store.first_responses(task_of.values())
            for n, task_id in task_of.items():
                j = judgements[n]
                picked = firsts[n] if j.choice == 0 else seconds[n]
                try:
                    store.record_judgement(
                        simulated,
                        task_id,
                        "A" if picked == response_a[task_id] else "B",
                        strength=j.p_first if j.choice == 0 else 1 - j.p_first,
                    )
                    judgements_stored += 1
                except DuplicateJudgementError:
                    kept += 1
        store.close()

    distinct = [j for j in judgements if j.gold_first != j.gold_second]
    agreement = gold_agreement(distinct) if distinct else None  # undefined when every pair is a gold tie
    summary = {
        "stage": "collect",
        "prompts": len(records),
        "data": report.to_dict(),
        "samples": len(samples),
        "pairs": len(prefs),
        "pairs_dropped": len(records) * K * (K - 1) // 2 - len(pairs),
        "preferences": str(out / "preferences.jsonl"),
        "annotator": judgements[0].annotator if judgements else None,
        "gold_agreement": agreement,
        "finished_fraction": sum(s["finished"] for s in samples) / max(len(samples), 1),
        "mean_response_tokens": sum(s["n_tokens"] for s in samples) / max(len(samples), 1),
        "seconds": time.time() - t0,
        **(
            {"db": cfg.db, "db_tasks": tasks_stored, "db_judgements": judgements_stored, "db_judgements_kept": kept}
            if store is not None
            else {}
        ),
    }
    write_summary(out, summary)
    return summary
