"""Metrics: one JSON line per step in `metrics.jsonl`, a live progress bar, and `summary.json`.

Metric names are namespaced the same way in every stage (`train/loss`, `rollout/kl`,
`eval/win_rate`, ...); the README lists them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


class MetricsLogger:
    """Streams metrics to `<output_dir>/metrics.jsonl` and shows a progress bar.

    `headline` names the metrics shown live next to the bar. On resume, pass `start_step`:
    lines after that step (written before the interruption) are dropped so the file
    matches the resumed run exactly.
    """

    def __init__(self, output_dir: str | os.PathLike, total: int, description: str, headline: list[str], start_step: int = 0):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step > 0 and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif start_step == 0:
            self.path.write_text("")
        self.headline = headline
        self.t0 = time.time()
        self._file = self.path.open("a")
        disable = not sys.stderr.isatty() and os.environ.get("TETHER_PROGRESS", "") != "1"
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[live]}"),
            console=console, disable=disable,
        )
        self.task = self.progress.add_task(description, total=total, completed=start_step, live="")
        self.progress.start()
        self._plain = disable
        self._description = description
        self._total = total

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time() - self.t0, 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        live = "  ".join(f"{k.split('/')[-1]}={row[k]:.4g}" for k in self.headline if isinstance(row.get(k), (int, float)))
        self.progress.update(self.task, completed=step, live=live)
        if self._plain:  # no terminal (CI, logs): one short line every ~10% of the run
            every = max(1, self._total // 10)
            if step % every == 0 or step == self._total:
                print(f"[{self._description}] step {step}/{self._total} {live}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.progress.stop()
        self._file.close()


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def write_summary(output_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Write `summary.json` last: its presence marks the stage as complete."""
    path = Path(output_dir) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_summary(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(output_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None
