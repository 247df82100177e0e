"""`report.html`: one self-contained page per run directory, rebuilt from the run's own files.

Everything is read from disk (each stage's summary.json and metrics.jsonl, the eval samples),
so `tether report RUN_DIR` rebuilds the page at any time, also for a run stopped half-way (the
sections whose files are missing are left out). Plots are PNGs drawn with matplotlib's Agg
canvas and embedded as base64 `data:` URIs; the page has inline CSS, no scripts and no
external resource, and every text from a model or a data file is HTML-escaped.

Sections: headline, stage timeline, SFT loss, reward model (accuracy and reliability
diagram per round), PPO curves (reward, KL, beta, entropy, length; held-out checks), reward
over-optimisation (Gao et al. fit of the held-out checks, and each round's policy on the
eval prompts), win rates by judge, evaluation metrics, and sample responses side by side.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path

from tether.eval.calibration import reliability_diagram
from tether.eval.overopt import fit_overopt, plot_overopt, read_points
from tether.tracking import read_appended

STAGE_ORDER = ("sft", "collect", "label", "reward", "ppo", "eval")


# --------------------------------------------------------------------------- reading the run


def round_dirs(run: Path) -> list[Path]:
    """Round 1 (the run directory) and then round2/, round3/, ... in order."""
    later = [p for p in run.glob("round*") if p.is_dir() and re.fullmatch(r"round\d+", p.name)]
    return [run] + sorted(later, key=lambda p: int(p.name[5:]))


def _summary(folder: Path) -> dict | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [row for _, row in read_appended(path)]  # a stage that crashed mid-write: its torn last line is left out


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])


# --------------------------------------------------------------------------- HTML pieces


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure


def img(figure_or_png, alt: str) -> str:
    """An <img> with the figure (or a PNG file's bytes) inline as a base64 data URI."""
    if isinstance(figure_or_png, (bytes, bytearray)):
        data = bytes(figure_or_png)
    else:
        buffer = io.BytesIO()
        figure_or_png.tight_layout()
        figure_or_png.savefig(buffer, format="png")
        data = buffer.getvalue()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _png_of(draw) -> bytes:
    """PNG bytes from a function that writes a PNG to the path it is given (calibration and overopt plots)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plot.png"
        draw(path)
        return path.read_bytes()


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _prompt_html(prompt) -> str:
    if isinstance(prompt, str):
        return f"<pre>{esc(prompt)}</pre>"
    return "".join(f'<pre><span class="role">{esc(m.get("role"))}:</span> {esc(m.get("content"))}</pre>' for m in prompt)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
table.samples td { width: 33%; } pre { white-space: pre-wrap; word-break: break-word; margin: 0 0 .3em; font-family: inherit; }
.role { font-weight: bold; color: #555; } .note { color: #555; font-style: italic; } img { max-width: 100%; }
.headline li { margin: .3em 0; } .gold { color: #666; font-size: .85em; }
"""


# --------------------------------------------------------------------------- sections


def _headline(run: Path, rounds: list[Path]) -> str:
    evals = [(k, _summary(r / "eval")) for k, r in enumerate(rounds, 1)]
    evals = [(k, e) for k, e in evals if e]
    if not evals:
        return '<p class="note">No evaluation yet: the run has not reached its eval stage.</p>'
    k, ev = evals[-1]
    ci = ev.get("gold_win_rate_ci") or [None, None]
    items = [
        f"Policy of round {k} vs the SFT model on {ev['prompts']} held-out prompts, gold scorer: <b>win rate {fmt(ev['gold_win_rate'])}</b> "
        f"(95% CI {fmt(ci[0])} to {fmt(ci[1])}; {ev['gold_wins']} wins, {ev['gold_ties']} ties, {ev['gold_losses']} losses)."
    ]
    if ev.get("judge") not in (None, "gold"):
        jci = ev.get("win_rate_ci") or [None, None]
        items.append(
            f"Judge <b>{esc(ev['judge'])}</b>: win rate {fmt(ev['win_rate'])} (95% CI {fmt(jci[0])} to {fmt(jci[1])}, n = {ev['n']})."
        )
    if ev.get("lc_win_rate") is not None:
        items.append(f"Length-controlled win rate ({esc(ev.get('judge', 'gold'))}): {fmt(ev['lc_win_rate'])}.")
    items.append(f"KL(policy || SFT) = <b>{fmt(ev['kl_policy'])} ± {fmt(ev['kl_policy_se'])}</b> nats per response.")
    if ev.get("proxy_win_rate") is not None:
        items.append(
            f"Proxy (reward model) win rate {fmt(ev['proxy_win_rate'])}: far above the gold one is the signature of over-optimisation."
        )
    return '<ul class="headline">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _stages(rounds: list[Path]) -> list[tuple[str, Path, dict]]:
    out = []
    for k, r in enumerate(rounds, 1):
        for name in STAGE_ORDER:
            s = _summary(r / name)
            if s is not None:
                out.append((name if k == 1 else f"round {k}: {name}", r / name, s))
    return out


def _timeline(rounds: list[Path]) -> str:
    stages = _stages(rounds)
    if not stages:
        return '<p class="note">No stage has finished yet.</p>'
    ends = [os.path.getmtime(folder / "summary.json") for _, folder, _ in stages]
    spans = [(name, end - float(s.get("seconds") or 0.0), end) for (name, _, s), end in zip(stages, ends)]
    t0 = min(start for _, start, _ in spans)
    figure = _figure(9, 0.35 * len(spans) + 1.2)
    axes = figure.add_subplot()
    for i, (_name, start, end) in enumerate(spans):
        axes.barh(i, (end - start) / 60, left=(start - t0) / 60, color="tab:blue")
    axes.set_yticks(range(len(spans)), [name for name, _, _ in spans])
    axes.invert_yaxis()
    axes.set_xlabel("minutes since the first stage started")
    rows = [
        [esc(name), fmt(float(s.get("seconds") or 0.0), 0), esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(end)))]
        for (name, _, s), end in zip(stages, ends)
    ]
    return img(figure, "stage timeline") + table(["stage", "seconds", "finished at"], rows)


def _sft(run: Path) -> str:
    s, rows = _summary(run / "sft"), _metrics(run / "sft")
    if s is None and not rows:
        return '<p class="note">No SFT stage in this run.</p>'
    figure = _figure(7, 3.5)
    axes = figure.add_subplot()
    axes.plot(*_series(rows, "train/loss"), label="train loss")
    steps, values = _series(rows, "eval/loss")
    if s and s.get("eval_loss_before") is not None:
        steps, values = [0] + steps, [s["eval_loss_before"]] + values
    axes.plot(steps, values, "o-", label="held-out loss")
    axes.set_xlabel("step")
    axes.set_ylabel("nats per response token")
    axes.legend()
    text = ""
    if s:
        text = (
            f"<p>{s['train_examples']} demonstrations, {s['steps']} steps; held-out loss {fmt(s.get('eval_loss_before'))} → "
            f"<b>{fmt(s.get('eval_loss'))}</b> nats/token.</p>"
        )
    return text + img(figure, "SFT loss curves")


def _reward(rounds: list[Path]) -> str:
    parts, rows = [], []
    for k, r in enumerate(rounds, 1):
        s = _summary(r / "reward")
        if s is None:
            continue
        ci = s.get("eval_accuracy_ci") or [None, None]
        rows.append(
            [
                str(k),
                fmt(s.get("train_pairs")),
                fmt(s.get("eval_pairs")),
                f"<b>{fmt(s.get('eval_accuracy'))}</b>",
                f"{fmt(ci[0])} to {fmt(ci[1])}",
                fmt(s.get("train_accuracy")),
                fmt(s.get("eval_ece")),
                fmt(s.get("eval_mean_margin")),
            ]
        )
        pictures = []
        metrics = _metrics(r / "reward")
        if metrics:
            figure = _figure(5, 3.6)
            axes = figure.add_subplot()
            axes.plot(*_series(metrics, "train/loss"), label="Bradley-Terry loss")
            axes.plot(*_series(metrics, "train/accuracy"), label="batch accuracy")
            axes.set_xlabel("step")
            axes.set_title(f"round {k}: training")
            axes.legend()
            pictures.append(img(figure, f"reward model training, round {k}"))
        if s.get("eval_bins") and s.get("eval_ece") is not None:
            png = _png_of(
                lambda path: reliability_diagram({"ece": s["eval_ece"], "bins": s["eval_bins"]}, path, title=f"round {k}: held-out")
            )
            pictures.append(img(png, f"reliability diagram, round {k}"))
        parts.append("".join(pictures))
    if not rows:
        return '<p class="note">No reward model in this run.</p>'
    return table(
        ["round", "train pairs", "held-out pairs", "held-out accuracy", "95% CI", "train accuracy", "ECE", "mean margin"], rows
    ) + "".join(parts)


PPO_PANELS = (
    ("rollout/reward", "reward (RM, normalised)", "held_out/reward"),
    ("rollout/kl", "KL(pi || ref), nats/response", "held_out/kl"),
    ("rollout/beta", "beta", None),
    ("rollout/entropy", "entropy per token", None),
    ("rollout/length", "response tokens", None),
    ("held_out/gold", "held-out gold score", None),
)


def _ppo(rounds: list[Path]) -> str:
    runs = [(k, _metrics(r / "ppo"), _summary(r / "ppo")) for k, r in enumerate(rounds, 1)]
    runs = [(k, m, s) for k, m, s in runs if m]
    if not runs:
        return '<p class="note">No PPO stage in this run.</p>'
    figure = _figure(12, 6.5)
    for i, (key, title, held) in enumerate(PPO_PANELS):
        axes = figure.add_subplot(2, 3, i + 1)
        for k, rows, _ in runs:
            line = axes.plot(*_series(rows, key), "o-" if key.startswith("held_out") else "-", markersize=3, label=f"round {k}")
            if held:
                axes.plot(*_series(rows, held), "s", color=line[0].get_color(), markersize=5, label=f"round {k} held-out")
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("PPO iteration", fontsize=8)
        if axes.has_data():
            axes.legend(fontsize=7)
    rows = [
        [
            str(k),
            fmt(s.get("steps_done", s.get("steps"))),
            fmt(s.get("reward_first_quarter")),
            fmt(s.get("reward_last_quarter")),
            fmt(s.get("kl_last_quarter")),
            fmt(s.get("beta_final"), 4),
            esc(s.get("stopped_early") or ""),
        ]
        for k, _, s in runs
        if s
    ]
    return img(figure, "PPO curves") + table(
        ["round", "iterations", "reward, first quarter", "reward, last quarter", "KL, last quarter", "final beta", "early stop"], rows
    )


def _overopt(run: Path, rounds: list[Path]) -> str:
    parts = []
    try:
        points = read_points(run)
    except FileNotFoundError:
        points = []
    first = [p for p in points if p["source"] == points[0]["source"] and p["gold"] is not None] if points else []
    if len(first) >= 3:
        fit = fit_overopt([p["kl"] for p in first], [p["gold"] for p in first], "rl")
        png = _png_of(lambda path: plot_overopt(first, fit, path, title="held-out checks of the first PPO run"))
        parts.append(img(png, "over-optimisation fit"))
        parts.append(
            table(
                ["form", "alpha", "beta", "KL at the gold peak", "gold at the peak", "RMSE", "points"],
                [
                    [
                        "RL: gold = c + d (alpha - beta log d), d = sqrt(KL)",
                        fmt(fit["alpha"]),
                        fmt(fit["beta"]),
                        fmt(fit["kl_peak"]),
                        fmt(fit["gold_peak"]),
                        fmt(fit["rmse"]),
                        str(fit["n"]),
                    ]
                ],
            )
        )
    else:
        parts.append(
            '<p class="note">No Gao et al. fit: it needs at least three held-out checks with gold scores '
            "(run PPO with <code>ppo.early_stop.prompts</code> set; <code>tether eval overopt RUN_DIR</code> fits them).</p>"
        )
    evals = [(k, _summary(r / "eval")) for k, r in enumerate(rounds, 1)]
    evals = [(k, e) for k, e in evals if e]
    if evals:
        figure = _figure(6.5, 4)
        axes = figure.add_subplot()
        kl = [0.0] + [e["kl_policy"] for _, e in evals]
        axes.plot(kl, [evals[0][1]["gold_baseline"]] + [e["gold_policy"] for _, e in evals], "o-", color="tab:blue", label="gold")
        for (k, e), x in zip(evals, kl[1:]):
            axes.annotate(f"round {k}", (x, e["gold_policy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if all(e.get("proxy_policy") is not None for _, e in evals):
            twin = axes.twinx()
            twin.plot(kl[1:], [e["proxy_policy"] for _, e in evals], "s--", color="tab:orange", label="proxy (that round's RM)")
            twin.set_ylabel("proxy reward", color="tab:orange")
            twin.legend(loc="lower right", fontsize=8)
        axes.set_xlabel("KL(policy || SFT) on the eval prompts, nats per response")
        axes.set_ylabel("gold score")
        axes.set_title("each round's policy on the held-out eval prompts (SFT at KL 0)")
        axes.legend(loc="upper left", fontsize=8)
        parts.append(img(figure, "gold and proxy against KL, per round"))
    return "".join(parts)


def _judge_rows(ev: dict) -> list[tuple[str, dict]]:
    if ev.get("judges"):
        return list(ev["judges"].items())
    ci = ev.get("gold_win_rate_ci") or [None, None]  # an eval written before judges were reported
    return [
        (
            "gold",
            {
                "win_rate": ev["gold_win_rate"],
                "ci_low": ci[0],
                "ci_high": ci[1],
                "wins": ev["gold_wins"],
                "ties": ev["gold_ties"],
                "losses": ev["gold_losses"],
                "n": ev["prompts"],
            },
        )
    ]


def _win_rates(rounds: list[Path]) -> str:
    rows = []
    for k, r in enumerate(rounds, 1):
        ev = _summary(r / "eval")
        if ev is None:
            continue
        for name, j in _judge_rows(ev):
            lc = (
                f"{fmt(j['lc_win_rate'])} ({fmt(j.get('lc_ci_low'))} to {fmt(j.get('lc_ci_high'))})"
                if j.get("lc_win_rate") is not None
                else "-"
            )
            rows.append(
                [
                    str(k),
                    esc(name),
                    f"<b>{fmt(j['win_rate'])}</b>",
                    f"{fmt(j['ci_low'])} to {fmt(j['ci_high'])}",
                    f"{j['wins']} / {j['ties']} / {j['losses']}",
                    str(j["n"]),
                    lc,
                ]
            )
    if not rows:
        return '<p class="note">No evaluation yet.</p>'
    return (
        table(["round", "judge", "win rate vs SFT", "95% CI", "wins / ties / losses", "n", "length-controlled (95% CI)"], rows)
        + '<p class="note">Ties count half. The length-controlled win rate is the fitted win rate at zero length difference '
        "(logistic regression of the outcome on tanh(token-length difference / its std), after AlpacaEval).</p>"
    )


def _eval_table(rounds: list[Path]) -> str:
    evals = [(k, _summary(r / "eval")) for k, r in enumerate(rounds, 1)]
    evals = [(k, e) for k, e in evals if e]
    if not evals:
        return ""
    k, ev = evals[-1]

    def pair(key: str, digits: int = 3) -> list[str]:
        return [fmt(ev.get(f"{key}_baseline"), digits), fmt(ev.get(f"{key}_policy"), digits)]

    def nested(key: str, sub: str, digits: int = 3) -> list[str]:
        return [fmt((ev.get(f"{key}_baseline") or {}).get(sub), digits), fmt((ev.get(f"{key}_policy") or {}).get(sub), digits)]

    def spread(who: str) -> str:
        dist = ev.get(f"length_dist_{who}") or {}
        return " / ".join(fmt(dist.get(q), 0) for q in ("p10", "p50", "p90", "max"))

    rows = [
        ["gold score (mean)", *pair("gold")],
        ["proxy (RM) score (mean)", *pair("proxy")],
        ["KL to SFT (nats/response)", *pair("kl")],
        ["response tokens: mean", *pair("length", 1)],
        ["response tokens: 10th / 50th / 90th percentile / max", spread("baseline"), spread("policy")],
        ["finished with EOS", *pair("finished")],
        ["distinct-1", *pair("distinct1")],
        ["distinct-2", *pair("distinct2")],
        ["self-BLEU (higher = less diverse)", *pair("self_bleu")],
        ["refusal rate", *pair("refusal")],
        ["sycophantic opener", *nested("hacks", "sycophantic")],
        ["repeated 3-grams (20% or more)", *nested("hacks", "repetition")],
        [f"longer than {fmt(ev.get('max_words'), 0)} words", *nested("hacks", "too_long")],
        ["any known hack", *nested("hacks", "any")],
    ]
    return f"<p>Round {k}'s policy on {ev['prompts']} held-out prompts.</p>" + table(["", "SFT", "RLHF"], rows)


def _samples(rounds: list[Path], limit: int = 8) -> str:
    folders = [r / "eval" for r in rounds if (r / "eval" / "samples.jsonl").exists()]
    if not folders:
        return '<p class="note">No samples yet.</p>'
    lines = (folders[-1] / "samples.jsonl").read_text().splitlines()[:limit]
    rows = []
    for line in lines:
        r = json.loads(line)
        rows.append(
            [
                _prompt_html(r["prompt"]),
                f"<pre>{esc(r['baseline'])}</pre><span class='gold'>gold {fmt(r.get('gold_baseline'), 2)}</span>",
                f"<pre>{esc(r['policy'])}</pre><span class='gold'>gold {fmt(r.get('gold_policy'), 2)}</span>",
            ]
        )
    return table(["prompt", "SFT", "RLHF"], rows, cls="samples")


# --------------------------------------------------------------------------- the page


def build_html(run_dir: str | os.PathLike) -> str:
    """The report page of a run directory, as a string."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    rounds = round_dirs(run)
    sections = [
        ("Headline", _headline(run, rounds)),
        ("Stage timeline", _timeline(rounds)),
        ("SFT", _sft(run)),
        ("Reward model", _reward(rounds)),
        ("PPO", _ppo(rounds)),
        ("Reward over-optimisation", _overopt(run, rounds)),
        ("Win rates", _win_rates(rounds)),
        ("Evaluation", _eval_table(rounds)),
        ("Samples (held-out prompts)", _samples(rounds)),
    ]
    body = "".join(f"<h2>{esc(title)}</h2>{content}" for title, content in sections if content)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>tether run: {esc(run.name)}</title>'
        f"<style>{CSS}</style></head><body><h1>tether run: {esc(run)}</h1>"
        f'<p class="note">{len(rounds)} round(s). Every number was read from this run directory\'s files; rebuild with '
        f"<code>tether report {esc(run)}</code>.</p>{body}</body></html>\n"
    )


def write_html_report(run_dir: str | os.PathLike) -> Path:
    """Write `<run_dir>/report.html` (atomically) and return its path."""
    page = build_html(run_dir)
    path = Path(run_dir) / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["build_html", "write_html_report", "round_dirs"]
