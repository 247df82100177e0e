"""Reward over-optimisation: Gao et al.'s scaling forms fitted to (KL, gold) points, and the reward-KL frontier.

Gao, Schulman & Hilton (2023), "Scaling Laws for Reward Model Overoptimization" (ICML), eq. 1-2:
with d = sqrt(KL(pi || pi_init)) in nats, the gold reward gained over the initial policy is

    RL:          R(d) = d * (alpha - beta * log d)          peaks at d* = exp(alpha / beta - 1)
    best-of-N:   R(d) = d * (alpha - beta * d)              peaks at d* = alpha / (2 * beta)

(set dR/dd = 0: alpha - beta log d - beta = 0, and alpha - 2 beta d = 0), and the KL at the
peak is d*^2. tether measures gold on its own scale, so :func:`fit_overopt` fits the form plus
a constant, gold = c + R(d): c is the gold of the initial policy, and alpha, beta, the peak do
not depend on it. Both forms are linear in (c, alpha, beta), so the fit is ordinary least
squares: for RL the design columns are (1, d, -d log d), for best-of-N (1, d, -d^2). With
beta <= 0 the form has no maximum (gold still rising, or never bending) and no peak is reported.

Where the points come from: PPO with the Goodhart guard (``ppo.early_stop.prompts``) writes
``held_out/kl``, ``held_out/reward`` (proxy) and ``held_out/gold`` to metrics.jsonl every
``early_stop.every`` steps; any stage that writes those three names works the same way. A
best-of-N run (`tether bon gold=true`, its bon.jsonl) gives one point per n = 1..N from its N
samples per prompt: KL = log n - (n - 1)/n and the expected gold of the best of n (see
:func:`best_of_n_expectation`), as Gao et al. (appendix) estimate it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np

from tether.config import ConfigError
from tether.tracking import read_appended

FORMS = ("rl", "bon")
KL_KEY, GOLD_KEY, PROXY_KEY = "held_out/kl", "held_out/gold", "held_out/reward"


def design(d: np.ndarray, form: Literal["rl", "bon"]) -> np.ndarray:
    """(n, 3) least-squares design for gold = c + alpha * d - beta * f(d), f = d log d (RL) or d^2 (BoN); 0 log 0 = 0."""
    d = np.asarray(d, dtype=np.float64)
    if form == "rl":
        bend = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    elif form == "bon":
        bend = d * d
    else:
        raise ValueError(f"form must be 'rl' or 'bon', got {form!r}")
    return np.stack([np.ones_like(d), d, -bend], axis=1)


def gao_curve(d: np.ndarray, alpha: float, beta: float, form: Literal["rl", "bon"], offset: float = 0.0) -> np.ndarray:
    """offset + d (alpha - beta log d) for RL, offset + d (alpha - beta d) for best-of-N."""
    return design(np.asarray(d, dtype=np.float64), form) @ np.array([offset, alpha, beta])


def peak_d(alpha: float, beta: float, form: Literal["rl", "bon"]) -> float | None:
    """d = sqrt(KL) at which the form's gold peaks; None when beta <= 0 (no maximum), or, for RL, when the
    peak lies beyond any float (beta ~ 0: a curve that is still rising)."""
    if beta <= 0:
        return None
    if form == "rl":
        exponent = alpha / beta - 1.0
        return math.exp(exponent) if exponent < 300 else None
    return alpha / (2.0 * beta)


def fit_overopt(kl, gold, form: Literal["rl", "bon"] = "rl") -> dict:
    """Least-squares fit of gold = c + R(sqrt(KL)) for Gao et al.'s RL or best-of-N form.

    Args:
        kl: (n,) KL(policy || initial) per response in nats (>= 0; tiny negative Monte-Carlo
            estimates are clipped to 0).
        gold: (n,) mean gold score at each point.

    Returns:
        {"form", "alpha", "beta", "offset", "d_peak", "kl_peak", "gold_peak", "rmse", "n"};
        the peak fields are None when beta <= 0.
    """
    kl = np.asarray(kl, dtype=np.float64).reshape(-1)
    gold = np.asarray(gold, dtype=np.float64).reshape(-1)
    if kl.size != gold.size:
        raise ValueError(f"fit_overopt: {kl.size} KL values and {gold.size} gold values; expected one of each per point.")
    if kl.size < 3:
        raise ValueError(
            f"fit_overopt fits three numbers (offset, alpha, beta) and needs at least 3 points, got {kl.size}; "
            "evaluate on held-out prompts more often (ppo.early_stop.every) or run longer."
        )
    if not (np.all(np.isfinite(kl)) and np.all(np.isfinite(gold))):
        raise ValueError("fit_overopt: some KL or gold values are NaN or infinite.")
    d = np.sqrt(np.clip(kl, 0.0, None))
    X = design(d, form)
    (offset, alpha, beta), *_ = np.linalg.lstsq(X, gold, rcond=None)
    rmse = float(np.sqrt(np.mean((X @ np.array([offset, alpha, beta]) - gold) ** 2)))
    dp = peak_d(alpha, beta, form)
    return {
        "form": form,
        "alpha": float(alpha),
        "beta": float(beta),
        "offset": float(offset),
        "d_peak": dp,
        "kl_peak": None if dp is None else dp * dp,
        "gold_peak": None if dp is None else float(gao_curve(np.array([dp]), alpha, beta, form, offset)[0]),
        "rmse": rmse,
        "n": int(kl.size),
    }


# --------------------------------------------------------------------------- reading runs


def best_of_n_expectation(proxy, values, n: int) -> float:
    """E[value of the sample with the best proxy among n drawn without replacement from these N], exactly.

    With the N samples ranked by proxy (ascending, i = 1..N), sample i is the best of a random
    n-subset with probability C(i-1, n-1) / C(N, n), so the expectation is
    sum_i C(i-1, n-1) / C(N, n) * value_i: the unbiased best-of-n estimator of Gao et al. (2023),
    no resampling noise. Example: proxy (0.1, 0.5, 0.3), gold (1, 2, 3), n = 2: ranks give
    weights 0, 1/3, 2/3 to golds 1, 3, 2: 7/3 (the three pairs pick golds 2, 3, 2).
    """
    proxy, values = np.asarray(proxy, dtype=np.float64), np.asarray(values, dtype=np.float64)
    N = proxy.size
    if not 1 <= n <= N or values.size != N:
        raise ValueError(
            f"best_of_n_expectation: n={n} of N={N} samples ({values.size} values); expected 1 <= n <= N, one value per sample."
        )
    order = np.argsort(proxy, kind="stable")
    weights = np.array([math.comb(i, n - 1) for i in range(N)], dtype=np.float64) / math.comb(N, n)  # rank i+1 -> C(i, n-1)
    return float(weights @ values[order])


def bon_points(path: str | Path) -> list[dict]:
    """Points (n, KL = log n - (n-1)/n, expected proxy and gold of the best of n) from a best-of-N run's bon.jsonl rows
    (their "scores" and "gold_scores"); prompts with a missing score are left out."""
    path = Path(path)
    rows = [r for r in _rows(path) if r.get("gold_scores") and r.get("scores") and None not in r["scores"]]
    if not rows:
        return []
    N = min(len(r["scores"]) for r in rows)
    return [
        {
            "source": str(path.parent),
            "step": n,
            "n": n,
            "kl": math.log(n) - (n - 1) / n,
            "proxy": float(np.mean([best_of_n_expectation(r["scores"][:N], r["scores"][:N], n) for r in rows])),
            "gold": float(np.mean([best_of_n_expectation(r["scores"][:N], r["gold_scores"][:N], n) for r in rows])),
        }
        for n in range(1, N + 1)
    ]


def metrics_files(run_dir: str | Path) -> list[Path]:
    """The metrics.jsonl files under a run that hold held-out KL: the folder's own, else its stages' and rounds' (sorted)."""
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run directory")
    own = run / "metrics.jsonl"
    candidates = [own] if own.exists() else sorted(run.glob("*/metrics.jsonl")) + sorted(run.glob("round*/*/metrics.jsonl"))
    return [p for p in candidates if any(KL_KEY in row for row in _rows(p))]


def _rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a last line cut short by a crash is dropped (tracking.read_appended)."""
    return [row for _, row in read_appended(path)]


def read_points(run_dir: str | Path) -> list[dict]:
    """Every held-out check of a run, in order: {"source", "step", "kl", "proxy", "gold"} (gold/proxy None when not logged);
    for a best-of-N run without them, the points of its bon.jsonl (:func:`bon_points`).

    In a run of several rounds, the points of later rounds follow the earlier ones (their KL is
    to that round's starting policy, so only points from one round belong on one fit).
    """
    points = []
    for path in metrics_files(run_dir):
        for row in _rows(path):
            if row.get(KL_KEY) is not None:
                points.append(
                    {
                        "source": str(path.parent),
                        "step": row.get("step"),
                        "kl": row[KL_KEY],
                        "proxy": row.get(PROXY_KEY),
                        "gold": row.get(GOLD_KEY),
                    }
                )
    if not points and (Path(run_dir) / "bon.jsonl").exists():  # a best-of-N run: its own curve over n
        points = bon_points(Path(run_dir) / "bon.jsonl")
    return points


def form_of(run_dir: str | Path) -> Literal["rl", "bon"]:
    """'bon' for a best-of-N run (summary.json's stage is "bon"), else 'rl'."""
    summary = Path(run_dir) / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("stage") == "bon":
        return "bon"
    return "rl"


def overopt(run_dir: str | Path, form: Literal["rl", "bon"] | None = None, out: str | Path | None = None) -> dict:
    """`tether eval overopt RUN_DIR`: fit the held-out (KL, gold) points of the run's first source, plot points and fit.

    Writes ``overopt.png`` and ``overopt.json`` into RUN_DIR (or beside ``out``) and returns the fit.
    """
    run = Path(run_dir)
    points = read_points(run)
    if not points:
        raise FileNotFoundError(
            f"{run}: no metrics.jsonl with {KL_KEY} in it (nor a bon.jsonl with gold scores); run PPO with the "
            "Goodhart guard on (ppo.early_stop.prompts=HELD_OUT.jsonl, ppo.early_stop.every=N), or tether bon gold=true"
        )
    source = points[0]["source"]
    points = [p for p in points if p["source"] == source and p["gold"] is not None]
    if not points:
        raise FileNotFoundError(f"{source}/metrics.jsonl has held-out KL but no {GOLD_KEY}; it was written before tether logged gold")
    form = form or form_of(source)
    fit = fit_overopt([p["kl"] for p in points], [p["gold"] for p in points], form)
    png = Path(out) if out else run / "overopt.png"
    plot_overopt(points, fit, png, title=f"{run.name}: gold against KL ({form.upper()} form)")
    result = {**fit, "source": source, "points": points, "plot": str(png)}
    png.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- plots


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_overopt(points: list[dict], fit: dict, path: str | Path, title: str | None = None) -> Path:
    """Gold (and proxy, when logged) against KL: the points, the fitted curve and its peak, as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = _figure()
    axes = figure.add_subplot()
    kl = np.array([p["kl"] for p in points], dtype=np.float64)
    axes.scatter(kl, [p["gold"] for p in points], color="tab:blue", zorder=3, label="gold (held-out)")
    top = max(float(kl.max()), fit["kl_peak"] or 0.0) * 1.15 or 1.0
    grid = np.linspace(0.0, top, 200)
    axes.plot(
        grid,
        gao_curve(np.sqrt(grid), fit["alpha"], fit["beta"], fit["form"], fit["offset"]),
        color="tab:blue",
        label=f"fit: alpha={fit['alpha']:.3g}, beta={fit['beta']:.3g}",
    )
    if fit["kl_peak"] is not None:
        axes.axvline(fit["kl_peak"], color="grey", linestyle="--", linewidth=1, label=f"gold peaks at KL {fit['kl_peak']:.3g}")
    proxy = [(p["kl"], p["proxy"]) for p in points if p.get("proxy") is not None]
    if proxy:
        twin = axes.twinx()
        twin.plot(*zip(*proxy), "s--", color="tab:orange", label="proxy (reward model)")
        twin.set_ylabel("proxy reward", color="tab:orange")
        twin.legend(loc="lower right", fontsize=8)
    axes.set_xlabel("KL(policy || initial), nats per response")
    axes.set_ylabel("gold score")
    axes.set_title(title or "Over-optimisation")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def frontier(run_dirs: list[str | Path], out: str | Path, metric: Literal["gold", "proxy"] = "gold") -> dict:
    """`tether eval frontier RUN_DIR...`: each run's held-out (KL, reward) points as one line on one chart.

    A run's points come from its first source (as in :func:`overopt`: in a run of several rounds,
    round 1's PPO). Returns {"plot": path, "runs": {run: [[kl, value], ...]}}; a run without such
    points is listed in "missing".
    """
    key = "gold" if metric == "gold" else "proxy"
    runs, missing = {}, []
    for run in run_dirs:
        found = read_points(run)
        points = [(p["kl"], p[key]) for p in found if p["source"] == found[0]["source"] and p[key] is not None] if found else []
        if points:
            runs[str(run)] = sorted(points)
        else:
            missing.append(str(run))
    if not runs:
        raise FileNotFoundError(f"none of {', '.join(map(str, run_dirs))} has held-out KL and {metric} in a metrics.jsonl")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = _figure(6.5, 4.5)
    axes = figure.add_subplot()
    for run, points in runs.items():
        axes.plot(*zip(*points), "o-", label=Path(run).name or run)
    axes.set_xlabel("KL(policy || initial), nats per response")
    axes.set_ylabel(f"{metric} reward (held-out)")
    axes.set_title(f"Reward-KL frontier ({metric})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return {"plot": str(path), "metric": metric, "runs": {r: [list(p) for p in pts] for r, pts in runs.items()}, "missing": missing}


# --------------------------------------------------------------------------- the command


def command(args: list[str]) -> dict:
    """`tether eval overopt RUN_DIR [form=rl|bon] [out=PNG]` and `tether eval frontier RUN_DIR... [out=PNG] [metric=gold|proxy]`."""
    what, rest = args[0], args[1:]
    options = dict(a.split("=", 1) for a in rest if "=" in a)
    runs = [a for a in rest if "=" not in a]
    allowed = {"overopt": {"form", "out"}, "frontier": {"out", "metric"}}[what]
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"tether eval {what}: unknown option {', '.join(sorted(unknown))}; valid: {', '.join(sorted(allowed))}")
    if what == "overopt":
        if len(runs) != 1:
            raise ConfigError("usage: tether eval overopt RUN_DIR [form=rl|bon] [out=overopt.png]")
        form = options.get("form")
        if form not in (None, *FORMS):
            raise ConfigError(f"form: expected rl or bon, got {form!r}")
        result = overopt(runs[0], form, options.get("out"))
        return {k: v for k, v in result.items() if k != "points"} | {"points": len(result["points"])}
    if not runs:
        raise ConfigError("usage: tether eval frontier RUN_DIR [RUN_DIR ...] [out=frontier.png] [metric=gold|proxy]")
    metric = options.get("metric", "gold")
    if metric not in ("gold", "proxy"):
        raise ConfigError(f"metric: expected gold or proxy, got {metric!r}")
    return frontier(runs, options.get("out", "frontier.png"), metric)
