"""Agreement statistics for pairwise judgements: pure functions, and :func:`stats` over a store.

Labels are 'A', 'B' and 'tie' (skips are not labels and are left out before anything here).

* :func:`pair_agreement`: on one task, the share of annotator pairs that gave the same label.
* :func:`cohen_kappa`: chance-corrected agreement of two annotators on their common tasks
  (Cohen, 1960): ``kappa = (p_o - p_e) / (1 - p_e)``, ``p_o`` the observed share of equal
  labels, ``p_e = sum_c p_1(c) p_2(c)`` the share expected from each annotator's own label rates.
* :func:`krippendorff_alpha`: chance-corrected agreement of any number of annotators with
  missing labels, nominal metric (Krippendorff, 2011, "Computing Krippendorff's alpha-reliability"):
  ``alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k`` over the coincidence
  matrix ``o``, where every ordered pair of labels (c, k) from two different annotators of a
  task with ``m`` labels adds ``1 / (m - 1)`` to ``o_ck``, ``n_c = sum_k o_ck`` and ``n = sum_c n_c``.
* :func:`throughput`: judgements per hour of active time, active time being the time spent on
  each judgement (shown -> answered), each capped so that a coffee break is not counted.
* :func:`position_bias`: among A/B answers whose screen order is known, the share where the
  answer shown on the left won (0.5 when position does not matter), with a Wilson interval.
* :func:`golden_accuracy`: the share of golden tasks answered with the known answer; an
  annotator below the threshold is flagged.

1.0 is perfect agreement for kappa and alpha, 0 is chance, below 0 is systematic disagreement.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tether.eval.calibration import wilson_interval

LABELS: tuple[str, ...] = ("A", "B", "tie")
"""The labels agreement is measured on (a skip is not a label)."""


def pair_agreement(labels: Sequence[str]) -> float | None:
    """Share of annotator pairs on one task that agree: ``sum_c n_c (n_c - 1) / (n (n - 1))``; None below 2 labels."""
    n = len(labels)
    if n < 2:
        return None
    return sum(k * (k - 1) for k in Counter(labels).values()) / (n * (n - 1))


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two annotators' labels on the same tasks (``first[i]`` and ``second[i]`` on task i).

    None when undefined: no tasks, or ``p_e = 1`` (both always gave one and the same label).
    """
    if len(first) != len(second):
        raise ValueError(f"cohen_kappa needs the two annotators' labels on the same tasks, got {len(first)} and {len(second)} labels")
    n = len(first)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(first, second)) / n
    rate_1, rate_2 = Counter(first), Counter(second)
    p_e = sum(rate_1[c] * rate_2[c] for c in rate_1) / (n * n)
    if p_e == 1:
        return None
    return (p_o - p_e) / (1 - p_e)


def pairwise_kappa(by_annotator: Mapping[str, Mapping[int, str]]) -> list[dict[str, Any]]:
    """Cohen's kappa for every two annotators with a task in common: ``[{"a", "b", "n", "kappa"}]``.

    ``by_annotator[name][task_id]`` is that annotator's label on that task.
    """
    out = []
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        common = sorted(set(by_annotator[a]) & set(by_annotator[b]))
        if common:
            kappa = cohen_kappa([by_annotator[a][t] for t in common], [by_annotator[b][t] for t in common])
            out.append({"a": a, "b": b, "n": len(common), "kappa": kappa})
    return out


def krippendorff_alpha(units: Iterable[Sequence[str]]) -> float | None:
    """Krippendorff's alpha, nominal: one sequence of labels per task (any number of annotators each).

    Tasks with fewer than two labels carry no information about agreement and are left out.
    None when undefined: fewer than two labels in all, or only one label value used.
    """
    o: dict[tuple[str, str], float] = defaultdict(float)  # coincidence matrix o_ck
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            o[labels[i], labels[j]] += 1 / (m - 1)
    n_c: dict[str, float] = defaultdict(float)
    for (c, _), value in o.items():
        n_c[c] += value
    n = sum(n_c.values())
    disagree_expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if n < 2 or disagree_expected == 0:
        return None
    disagree_observed = sum(value for (c, k), value in o.items() if c != k)
    return 1 - (n - 1) * disagree_observed / disagree_expected


def throughput(seconds: Iterable[float | None], cap: float = 600.0) -> dict[str, Any]:
    """Pace of one annotator from the seconds each judgement took (None: unknown, left out).

    Each judgement counts at most ``cap`` seconds of active time. Returns ``judgements``
    (those timed), ``active_hours``, ``seconds_per_judgement`` (mean of the capped times) and
    ``per_hour`` (judgements per active hour); None where there is nothing to divide by.
    """
    timed = [min(max(s, 0.0), cap) for s in seconds if s is not None]
    return _throughput(len(timed), sum(timed))


def _throughput(judgements: int, active: float) -> dict[str, Any]:
    """:func:`throughput` from the number of timed judgements and their active seconds (capped)."""
    return {
        "judgements": judgements,
        "active_hours": active / 3600,
        "seconds_per_judgement": active / judgements if judgements else None,
        "per_hour": judgements * 3600 / active if active > 0 else None,
    }


def position_bias(answers: Iterable[tuple[str, str | None]]) -> dict[str, Any]:
    """How often the left answer won, from ``(choice, left_side)`` pairs.

    Only A/B choices with a known left side count (ties and skips say nothing about position).
    Returns ``n``, ``left_wins``, ``left_win_rate`` and its 95% Wilson interval ``ci``.
    """
    decided = [(c, left) for c, left in answers if c in ("A", "B") and left in ("A", "B")]
    return _position_bias(sum(c == left for c, left in decided), len(decided))


def _position_bias(wins: int, n: int) -> dict[str, Any]:
    """:func:`position_bias` from the counts: ``wins`` left wins of ``n`` decided answers."""
    return {"n": n, "left_wins": wins, "left_win_rate": wins / n if n else None, "ci": list(wilson_interval(wins, n)) if n else None}


def golden_accuracy(answers: Iterable[tuple[str, str]], threshold: float) -> dict[str, Any]:
    """Accuracy on golden tasks from ``(choice, golden_answer)`` pairs; skips are left out.

    ``flagged`` is True when there is at least one answer and the accuracy is below ``threshold``.
    """
    graded = [(c, g) for c, g in answers if c != "skip"]
    return _golden_accuracy(sum(c == g for c, g in graded), len(graded), threshold)


def _golden_accuracy(correct: int, n: int, threshold: float) -> dict[str, Any]:
    """:func:`golden_accuracy` from the counts: ``correct`` of ``n`` graded answers."""
    accuracy = correct / n if n else None
    return {"n": n, "correct": correct, "accuracy": accuracy, "flagged": accuracy is not None and accuracy < threshold}


def stats(store, golden_threshold: float = 0.7, seconds_cap: float = 600.0) -> dict[str, Any]:
    """Every statistic above for a store, as one JSON-able dict.

    Agreement (per-pair, kappa, alpha) is measured on regular tasks; golden tasks measure
    each annotator against the known answer instead. Keys: ``tasks``, ``judgements``,
    ``agreement`` (mean per-pair agreement and the number of tasks with two or more labels),
    ``kappa`` (one entry per annotator pair), ``alpha``, ``position_bias`` (all annotators),
    ``annotators`` (per name: kind, judgements, skips, throughput, position bias, golden).

    The store counts (``store.tallies``: a few GROUP BY queries in one snapshot that takes no
    lock); the functions above turn the counts into statistics.
    """
    t = store.tallies(seconds_cap)
    units = [[label for label, n in counts.items() for _ in range(n)] for counts in t.units]
    agreements = [a for a in map(pair_agreement, units) if a is not None]
    kappa = []
    for (a, b), table in t.pairs.items():
        first = [x for (x, _), n in table.items() for _ in range(n)]
        second = [y for (_, y), n in table.items() for _ in range(n)]
        kappa.append({"a": a, "b": b, "n": len(first), "kappa": cohen_kappa(first, second)})
    people = {
        p.name: {
            "kind": p.kind,
            "judgements": p.judgements,
            "skips": p.skips,
            "throughput": _throughput(p.timed, p.active_seconds),
            "position_bias": _position_bias(p.left_wins, p.decided),
            "golden": _golden_accuracy(p.golden_correct, p.golden, golden_threshold),
        }
        for p in sorted(t.annotators, key=lambda p: p.name)
    }
    return {
        "tasks": {"total": t.tasks, "golden": t.golden, "complete": t.complete},
        "judgements": {"total": sum(t.choices.values()), **{c: t.choices.get(c, 0) for c in LABELS + ("skip",)}},
        "agreement": {"tasks": len(agreements), "mean_pair_agreement": sum(agreements) / len(agreements) if agreements else None},
        "kappa": kappa,
        "alpha": krippendorff_alpha(units),
        "position_bias": _position_bias(sum(p.left_wins for p in t.annotators), sum(p.decided for p in t.annotators)),
        "annotators": people,
        "golden_threshold": golden_threshold,
    }


def stats_tables(out: dict[str, Any]) -> list[Any]:
    """:func:`stats` as rich tables: the whole store, each annotator, each pair of annotators."""
    from rich.table import Table

    def num(x: float | None, digits: int = 3) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    bias = out["position_bias"]
    whole = Table(title="Preference store", show_header=False)
    whole.add_row(
        "tasks", f"{out['tasks']['total']} ({out['tasks']['golden']} golden, {out['tasks']['complete']} with all their annotators)"
    )
    j = out["judgements"]
    whole.add_row("judgements", f"{j['total']} (A {j['A']}, B {j['B']}, tie {j['tie']}, skip {j['skip']})")
    whole.add_row("mean per-pair agreement", f"{num(out['agreement']['mean_pair_agreement'])} over {out['agreement']['tasks']} tasks")
    whole.add_row("Krippendorff's alpha", num(out["alpha"]))
    whole.add_row(
        "left answer wins",
        "-" if not bias["n"] else f"{num(bias['left_win_rate'])} of {bias['n']} (95% CI {num(bias['ci'][0])} to {num(bias['ci'][1])})",
    )

    people = Table(title="Annotators")
    for column in ("name", "kind", "judgements", "skips", "per hour", "s / judgement", "left wins", "golden accuracy", ""):
        people.add_column(column, justify="left" if column in ("name", "kind", "") else "right")
    for name, a in out["annotators"].items():
        g = a["golden"]
        people.add_row(
            name,
            a["kind"],
            str(a["judgements"]),
            str(a["skips"]),
            num(a["throughput"]["per_hour"], 1),
            num(a["throughput"]["seconds_per_judgement"], 1),
            num(a["position_bias"]["left_win_rate"]),
            "-" if g["accuracy"] is None else f"{g['accuracy']:.3f} ({g['n']})",
            f"[red]below {out['golden_threshold']}[/red]" if g["flagged"] else "",
        )

    pairs = Table(title="Cohen's kappa")
    for column in ("annotator", "annotator", "common tasks", "kappa"):
        pairs.add_column(column)
    for k in out["kappa"]:
        pairs.add_row(k["a"], k["b"], str(k["n"]), num(k["kappa"]))
    return [whole, people, pairs]
