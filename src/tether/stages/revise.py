"""`tether revise`: critique-and-revise over a prompts file with a constitution (feedback/constitution.py, Bai et al.
2022's SL-CAI step); (original, revision) pairs become (rejected, chosen) preferences.
"""

from __future__ import annotations

import time

from tether.config import ReviseConfig, resolve_path
from tether.data.readers import read_prompts, write_jsonl
from tether.feedback.constitution import critique_and_revise, load_constitution, revision_pairs
from tether.models.loading import DEFAULT_MODEL_NAME, load_causal_lm, load_tokenizer, resolve_model
from tether.tracking import MetricsLogger, write_summary
from tether.training import start_stage


def run_revise(cfg: ReviseConfig) -> dict:
    """`tether revise`: critique-and-revise over a prompts file; writes revisions.jsonl and preferences.jsonl."""
    constitution = load_constitution(cfg.constitution)  # before anything slow: a bad file fails at once
    out = start_stage(cfg)
    t0 = time.time()

    # 1. model, prompts
    model_path = resolve_model(cfg.model)
    tokenizer, model = load_tokenizer(model_path), load_causal_lm(model_path).eval()
    records = read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, **cfg.dataset.read_args())
    prompts = [r.prompt for r in records]

    # 2. answer, critique, revise (1 + 2 * rounds batched generations)
    logger = MetricsLogger(out, len(prompts) * (1 + 2 * cfg.rounds), "revise", [])
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        logger.log(done[0], {"revise/generations": done[0]})

    revisions = critique_and_revise(model, tokenizer, prompts, constitution, cfg.generation, cfg.seed, cfg.precision, cfg.rounds, tick)
    logger.close()

    # 3. pairs: (original, revision) = (rejected, chosen)
    model_name = DEFAULT_MODEL_NAME if cfg.model == "default" else cfg.model
    pairs, skipped = revision_pairs(
        prompts, revisions, {"annotator": f"revise:{model_name}", "constitution": constitution.name, "seed": cfg.seed}
    )
    write_jsonl(
        out / "revisions.jsonl",
        [{"prompt": p, "original": r.original, "revision": r.revision, "steps": r.steps} for p, r in zip(prompts, revisions)],
    )
    write_jsonl(out / "preferences.jsonl", pairs)
    summary = {
        "stage": "revise",
        "prompts": len(prompts),
        "pairs": len(pairs),
        "pairs_skipped": sum(skipped.values()),
        **{f"skipped_{k}": v for k, v in skipped.items()},
        "constitution": constitution.source,
        "rounds": cfg.rounds,
        "preferences": str(out / "preferences.jsonl"),
        "annotator": f"revise:{model_name}",
        "seconds": time.time() - t0,
    }
    write_summary(out, summary)
    return summary
