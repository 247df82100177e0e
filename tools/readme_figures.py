"""Draw the README's two pictures from a finished demo run: win rates by judge, and gold and proxy score against KL.

    python tools/readme_figures.py runs/demo        # writes docs/img/demo_win_rates.png and docs/img/demo_gold_vs_kl.png

Both come from the run's eval/summary.json files (every round's), the figures `report.md` and `report.html` print, so
the pictures show a measured run and nothing else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tether.eval.report import round_dirs

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
JUDGES = {"gold": "gold scorer", "reward_model": "reward model (proxy)", "ai": "AI judge", "people": "people"}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _evals(run: Path) -> list[dict]:
    evals = [json.loads((r / "eval" / "summary.json").read_text()) for r in round_dirs(run) if (r / "eval" / "summary.json").exists()]
    if not evals:
        raise SystemExit(f"error: {run}: no eval/summary.json; run `make demo` (or `tether run`) to the end first")
    return evals


def win_rates(run: Path, path: Path) -> Path:
    """The last round's win rate over the SFT model by each judge, with its 95% CI, and the length-controlled one."""
    judges = _evals(run)[-1]["judges"]
    names = list(judges)
    figure = _figure(6.4, 1.2 + 0.5 * len(names))
    axes = figure.add_subplot()
    for y, name in enumerate(names):
        j = judges[name]
        axes.errorbar(
            j["win_rate"], y, xerr=[[j["win_rate"] - j["ci_low"]], [j["ci_high"] - j["win_rate"]]], fmt="o", color="tab:blue", capsize=4
        )
        if j.get("lc_win_rate") is not None:
            axes.plot(j["lc_win_rate"], y - 0.18, "d", color="tab:orange")
    axes.axvline(0.5, color="grey", linestyle=":")
    axes.set_yticks(range(len(names)), [f"{JUDGES.get(n, n)} (n={judges[n]['n']})" for n in names])
    axes.set_ylim(-0.6, len(names) - 0.4)
    axes.set_xlim(0, 1)
    axes.set_xlabel("win rate over the SFT model, 95% CI (orange: length-controlled)")
    axes.set_title("the PPO policy against the SFT model on held-out prompts", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def gold_vs_kl(run: Path, path: Path) -> Path:
    """Gold and proxy score of the SFT model (KL 0) and of each round's policy against its KL to the SFT model."""
    evals = _evals(run)
    kl = [0.0] + [e["kl_policy"] for e in evals]
    kl_se = [0.0] + [e.get("kl_policy_se", 0.0) for e in evals]
    gold = [evals[0]["gold_baseline"]] + [e["gold_policy"] for e in evals]
    gold_se = [evals[0].get("gold_baseline_se", 0.0)] + [e.get("gold_policy_se", 0.0) for e in evals]
    figure = _figure(6.4, 4)
    axes = figure.add_subplot()
    axes.errorbar(kl, gold, xerr=kl_se, yerr=gold_se, fmt="o-", color="tab:blue", capsize=3, label="gold score")
    if all(e.get("proxy_policy") is not None for e in evals) and evals[0].get("proxy_baseline") is not None:
        twin = axes.twinx()
        twin.plot(
            kl, [evals[0]["proxy_baseline"]] + [e["proxy_policy"] for e in evals], "s--", color="tab:orange", label="proxy (reward model)"
        )
        twin.set_ylabel("proxy score (normalised)", color="tab:orange")
        twin.legend(loc="lower right", fontsize=8)
    axes.annotate("SFT", (kl[0], gold[0]), textcoords="offset points", xytext=(6, -12), fontsize=8)
    for k, (x, y) in enumerate(zip(kl[1:], gold[1:]), 1):
        axes.annotate("PPO" if len(evals) == 1 else f"round {k}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xlabel("KL(policy || SFT) on the held-out prompts, nats per response")
    axes.set_ylabel("gold score (mean, ± 1 s.e.)")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    run = Path(argv[0])
    for path in (win_rates(run, OUT / "demo_win_rates.png"), gold_vs_kl(run, OUT / "demo_gold_vs_kl.png")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
