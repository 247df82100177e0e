"""`tether judge`: label pairs with a pairwise LLM judge (feedback/judge.py), from a file or the preference store.

Input: a preference file (the judge's agreement with its labels is reported) or collect's samples.jsonl (every pair
of distinct responses to a prompt), or the store's tasks this judge has not answered. Output: preferences.jsonl (the
preferred response as chosen, with the judge's probabilities in meta), summary.json, and with `db` the verdicts in the
store as annotator `judge:<model>`, beside people's.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tether.config import ConfigError, DatasetSettings, JudgeConfig, resolve_path
from tether.data.readers import DataError, iter_rows, read_demonstrations, read_preferences, write_jsonl
from tether.data.records import PreferencePair, Prompt, prompt_key
from tether.feedback.constitution import load_constitution
from tether.feedback.judge import Verdict, judge_pairs
from tether.feedback.store import Candidate as Response
from tether.feedback.store import StoreError, open_store
from tether.models.loading import DEFAULT_MODEL_NAME, load_causal_lm, load_tokenizer, resolve_model
from tether.tracking import MetricsLogger, console, write_summary
from tether.training import start_stage


@dataclass
class Candidate:
    """A pair to judge; `input_first_chosen` says whether the input preferred `first` (None: no label);
    `task_id` is its task in the preference store (first = the task's response A), once it has one."""

    prompt: Prompt
    first: str
    second: str
    input_first_chosen: bool | None
    task_id: int | None = None


def read_candidates(
    path: str, limit: int | None = None, skip_bad_rows: bool = False, dataset: DatasetSettings | None = None
) -> tuple[list[Candidate], str, int]:
    """Pairs to judge from a preference file (prompt/chosen/rejected, chat or HH rows) or collect's samples.jsonl.

    A samples file (rows with a "response") gives every pair of distinct, non-empty responses
    to the same prompt (grouped by "prompt_index" when present, else by the prompt).

    Returns:
        (candidates, kind: "preferences" or "samples", rows skipped).
    """
    args = (dataset or DatasetSettings()).read_args()
    first_row = next((row for _, row in iter_rows(path, split=args["split"], subset=args["subset"])), {})
    column = {key: args["columns"].get(key, key) for key in ("response", "chosen")}  # the user's names for them
    if column["response"] in first_row and column["chosen"] not in first_row:
        groups: dict[str, list] = {}
        for d in read_demonstrations(path, **args):
            key = str(d.meta["prompt_index"]) if "prompt_index" in d.meta else prompt_key(d.prompt)
            groups.setdefault(key, []).append(d)
        out, skipped = [], 0
        for demos in groups.values():
            for a, b in itertools.combinations(demos, 2):
                if not a.response.strip() or not b.response.strip() or a.response.strip() == b.response.strip():
                    skipped += 1  # nothing to prefer (and the reward stage would reject the pair)
                    continue
                out.append(Candidate(a.prompt, a.response, b.response, None))
        return out[:limit] if limit is not None else out, "samples", skipped
    bad: list | None = [] if skip_bad_rows else None
    pairs = read_preferences(path, limit=limit, skipped=bad, **args)
    return [Candidate(p.prompt, p.chosen, p.rejected, True) for p in pairs], "preferences", len(bad or [])


def candidates_from_store(store, annotator: str) -> tuple[list[Candidate], int]:
    """The store's tasks that `annotator` has not answered, as candidates (first = response A).

    A golden task's known answer becomes the input label (a tie gives none), so the summary's
    agreement_with_input is the judge's accuracy on the golden set.

    Returns:
        (candidates, tasks already answered by `annotator`).
    """
    answered = {v.task_id for v in store.votes() if v.annotator == annotator}
    tasks = store.tasks()
    label = {"A": True, "B": False}
    out = [Candidate(t.prompt, t.response_a, t.response_b, label.get(t.golden_answer), t.id) for t in tasks if t.id not in answered]
    return out, len(tasks) - len(out)


def record_in_store(
    store, annotator: str, candidates: Sequence[Candidate], verdicts: Sequence[Verdict], constitution: str, min_strength: float = 0.0
) -> dict[str, int]:
    """Record verdicts in the preference store as annotator `annotator` (kind 'judge'), one committed judgement each.

    Candidates without a task get one (their pair is added; the store keeps one task per pair
    in either order, so the choice is turned to the task's own A/B). Choice: 'A' or 'B', the
    response with p >= 1/2, or 'tie' when the strength |2p - 1| is below `min_strength`;
    strength: P(the chosen response is better), as the simulated panel records it; reason:
    both orders' probabilities. Tasks this judge already answered are left as they are.

    Returns:
        {"recorded": n, "already_answered": m}.
    """
    judge = store.get_or_add_annotator(annotator, "judge")
    answered = {v.task_id for v in store.votes() if v.annotator == annotator}
    for c in candidates:
        if c.task_id is None:
            (c.task_id,) = store.add_candidates(c.prompt, [Response(c.first), Response(c.second)], [(0, 1)], source="tether judge")
    response_a = {t.id: t.response_a for t in store.tasks()}
    counts = {"recorded": 0, "already_answered": 0}
    for c, v in zip(candidates, verdicts):
        if c.task_id in answered:
            counts["already_answered"] += 1
            continue
        p_a = v.p_first if response_a[c.task_id] == c.first else 1 - v.p_first  # P(the task's response A is better)
        choice = "tie" if v.strength < min_strength else ("A" if p_a >= 0.5 else "B")
        reason = (
            f"P(A better) = {p_a:.3f}, both orders averaged (asked with the first response as A: {v.p_ab:.3f}, as B: {v.p_ba:.3f}); "
            f"position {'consistent' if v.position_consistent else 'inconsistent'}; constitution {constitution}"
        )
        store.record_judgement(judge, c.task_id, choice, strength=max(p_a, 1 - p_a), reason=reason)
        answered.add(c.task_id)
        counts["recorded"] += 1
    return counts


@contextlib.contextmanager
def _store(db: str):
    """The preference store at `db`, closed afterwards; its errors become ConfigErrors naming `db` (user errors in the CLI)."""
    try:
        store = open_store(db)
    except StoreError as e:
        raise ConfigError(f"db: {e}") from None
    try:
        yield store
    except StoreError as e:
        raise ConfigError(f"db {db}: {e}") from None
    finally:
        store.close()


def run_judge(cfg: JudgeConfig) -> dict:
    """`tether judge`: label candidate pairs with an LLM judge; writes preferences.jsonl and summary.json."""
    constitution = load_constitution(cfg.constitution)  # before anything slow: a bad file fails at once
    annotator = f"judge:{DEFAULT_MODEL_NAME if cfg.model == 'default' else cfg.model}"
    # 1. the pairs: from a file, or the store's tasks this judge has not answered
    if cfg.data is not None:
        candidates, kind, skipped_rows = read_candidates(resolve_path(cfg.data), cfg.limit, cfg.skip_bad_rows, cfg.dataset)
        if not candidates:  # a samples file whose responses to each prompt are all the same (or empty)
            raise DataError(
                cfg.data,
                None,
                text=f"no pair to judge: no prompt has two different, non-empty responses "
                f"({skipped_rows} pairs were the same text or empty)",
            )
    else:
        with _store(cfg.db) as store:
            candidates, skipped_rows = candidates_from_store(store, annotator)
        candidates, kind = candidates[: cfg.limit] if cfg.limit is not None else candidates, "store"
    out = start_stage(cfg)
    t0 = time.time()
    if skipped_rows:
        console.print(
            f"judge: skipped {skipped_rows} {'tasks answered before' if kind == 'store' else 'pairs without two different, non-empty responses'}",
            highlight=False,
        )

    # 2. the judge
    model_path = resolve_model(cfg.model)
    tokenizer, model = load_tokenizer(model_path), load_causal_lm(model_path).eval()

    # 3. both orders of every pair, p_first from eq. (2)
    logger = MetricsLogger(out, len(candidates), "judge", [])
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        logger.log(done[0], {"judge/pairs": done[0]})

    verdicts = judge_pairs(
        model,
        tokenizer,
        [c.prompt for c in candidates],
        [c.first for c in candidates],
        [c.second for c in candidates],
        constitution.rubric(),
        batch_size=cfg.batch_size,
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_response_tokens=cfg.max_response_tokens,
        precision=cfg.precision,
        share_head=cfg.share_head,
        progress=tick,
    )
    logger.close()

    # 4. preference pairs, the preferred response as chosen (and the verdicts in the store, beside people's)
    in_store = {}
    if cfg.db is not None:
        with _store(cfg.db) as store:
            in_store = record_in_store(store, annotator, candidates, verdicts, constitution.name, cfg.min_strength)
    pairs, weak, inconsistent = [], 0, 0
    for c, v in zip(candidates, verdicts):
        if v.strength < cfg.min_strength:
            weak += 1
            continue
        if cfg.require_consistent and not v.position_consistent:
            inconsistent += 1
            continue
        first_wins = v.p_first >= 0.5
        meta = {
            "annotator": annotator,
            "p_chosen": max(v.p_first, 1 - v.p_first),
            "p_first": v.p_first,
            "strength": v.strength,
            "position_consistent": v.position_consistent,
            "p_ab": v.p_ab,
            "p_ba": v.p_ba,
            "constitution": constitution.name,
        }
        if c.input_first_chosen is not None:
            meta["agrees_with_input"] = first_wins == c.input_first_chosen
        chosen, rejected = (c.first, c.second) if first_wins else (c.second, c.first)
        pairs.append(PreferencePair(c.prompt, chosen, rejected, margin=v.strength if cfg.write_margin else None, meta=meta))
    write_jsonl(out / "preferences.jsonl", pairs)

    n = max(len(verdicts), 1)
    labelled = [(v.p_first >= 0.5) == c.input_first_chosen for c, v in zip(candidates, verdicts) if c.input_first_chosen is not None]
    summary = {
        "stage": "judge",
        "input": kind,
        "candidates": len(candidates),
        "pairs": len(pairs),
        "rows_skipped": skipped_rows,
        "dropped_weak": weak,
        "dropped_inconsistent": inconsistent,
        "annotator": annotator,
        "constitution": constitution.source,
        "position_consistent_fraction": sum(v.position_consistent for v in verdicts) / n,
        "mean_strength": sum(v.strength for v in verdicts) / n,
        "p_letter_a": sum(v.p_letter_a for v in verdicts) / n,  # the judge's position bias before averaging (0.5 = none)
        "agreement_with_input": sum(labelled) / len(labelled) if labelled else None,
        "preferences": str(out / "preferences.jsonl"),
        **{f"db_{k}": v for k, v in in_store.items()},
        "seconds": time.time() - t0,
    }
    write_summary(out, summary)
    return summary
