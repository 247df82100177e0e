"""Write the store's judgements as preference pairs that `tether reward train` reads unchanged.

Two ways to turn judgements into pairs:

* ``majority``: one pair per task, labelled by its annotators' majority (see :func:`majority`);
  ``meta`` keeps the vote counts and the share that agreed with the label.
* ``per_annotator``: one pair per judgement, ``meta.annotator`` naming who said it.

Answers are stored as response A / response B whatever side they were shown on, so the
left/right order never reaches the pairs. Skips never become pairs. A tie becomes a pair with
``meta.tie = true`` (response A as ``chosen``), which the reward stage drops (``ties=skip``) or
trains towards equal rewards (``ties=half``); ``ties="drop"`` leaves ties out of the file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from tether.data.readers import write_jsonl
from tether.data.records import PreferencePair
from tether.feedback.store import Store, StoredTask, StoreError, Vote


def majority(choices: Iterable[str]) -> str | None:
    """The majority label of one task's answers: 'A', 'B' or 'tie'; None when there is no answer.

    Skips are ignored. The answer given most often wins; when two answers share the top count
    there is no majority and the task is a tie. So A A B -> A, A tie -> tie, A B tie -> tie,
    A A tie -> A, B B A tie -> B.
    """
    counts = Counter(c for c in choices if c != "skip")
    if not counts:
        return None
    top = max(counts.values())
    winners = [c for c, n in counts.items() if n == top]
    return winners[0] if len(winners) == 1 else "tie"


def _pair(task: StoredTask, label: str, meta: dict[str, Any]) -> PreferencePair:
    chosen, rejected = (task.response_b, task.response_a) if label == "B" else (task.response_a, task.response_b)
    if label == "tie":
        meta = {**meta, "tie": True}
    return PreferencePair(prompt=task.prompt, chosen=chosen, rejected=rejected, meta=meta)


def export_preferences(
    store: Store,
    out: str | os.PathLike[str],
    aggregate: Literal["majority", "per_annotator"] = "majority",
    ties: Literal["drop", "keep"] = "drop",
    include_golden: bool = False,
) -> dict[str, Any]:
    """Write preference pairs to ``out`` (JSONL, atomically) and return a summary of what was written.

    The store is read in pages inside one snapshot (:meth:`Store.iter_answered`) and the pairs are
    written as they come: memory stays flat and annotators keep answering while a large store exports.

    Args:
        aggregate: ``majority`` (one pair per task) or ``per_annotator`` (one pair per judgement).
        ties: ``drop`` leaves tied tasks/answers out; ``keep`` writes them with ``meta.tie = true``.
        include_golden: also export golden tasks; with ``majority`` their label is the known answer.
    """
    if aggregate not in ("majority", "per_annotator"):
        raise StoreError(f"aggregate must be 'majority' or 'per_annotator', got {aggregate!r}")
    if ties not in ("drop", "keep"):
        raise StoreError(f"ties must be 'drop' or 'keep', got {ties!r}")
    counts = Counter()

    def pairs() -> Iterator[PreferencePair]:
        for task, votes in store.iter_answered(include_golden):  # pages of tasks in one snapshot: nothing loaded whole
            if task.is_golden and not include_golden:
                continue
            answers = [v for v in votes if v.choice != "skip"]
            if aggregate == "majority":
                tally = Counter(v.choice for v in answers)
                label = task.golden_answer if task.is_golden else majority(v.choice for v in answers)
                if label is None:
                    continue
                meta = {
                    "task_id": task.id,
                    "votes": {c: tally[c] for c in ("A", "B", "tie")},
                    "annotators": len(answers),
                    "agreement": tally[label] / len(answers) if answers else None,
                    **({"golden": True} if task.is_golden else {}),
                }
                labelled = [(label, meta)]
            else:
                labelled = [(v.choice, {"task_id": task.id, "annotator": v.annotator, "kind": v.kind, **_optional(v)}) for v in answers]
            for label, meta in labelled:
                if label == "tie" and ties == "drop":
                    counts["ties_dropped"] += 1
                    continue
                counts["ties"] += label == "tie"
                yield _pair(task, label, meta)

    written = write_jsonl(out, pairs())  # streamed to a temporary file, renamed over `out` once whole
    return {"out": os.fspath(out), "pairs": written, "ties": counts["ties"], "ties_dropped": counts["ties_dropped"], "aggregate": aggregate}


def _optional(v: Vote) -> dict[str, Any]:
    """The judgement's optional details, only those that are set."""
    found = {"strength": v.strength, "reason": v.reason, "guidelines_version": v.guidelines_version}
    return {k: x for k, x in found.items() if x is not None}
