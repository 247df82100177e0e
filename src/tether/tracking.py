"""Metrics: one JSON line per step in `metrics.jsonl`, a live progress bar, and `summary.json`.

Metric names are namespaced the same way in every stage (`train/loss`, `rollout/kl`,
`eval/win_rate`, ...); the README lists them. With `tracker=tensorboard` or `tracker=wandb`
the same rows, under the same names, also go to TensorBoard (event files in
`<output_dir>/tensorboard/`) or Weights & Biases (a run whose files are in `<output_dir>/wandb/`;
`WANDB_MODE=offline` needs no network). Both are optional extras, imported only when asked for.
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

from tether.config import ConfigError
from tether.data.readers import DataError
from tether.processes import processes

console = Console(stderr=True, quiet=int(os.environ.get("RANK", "0")) > 0)
"""Where tether speaks (stderr); one process speaks for all: the others of a launched run (RANK > 0) are quiet."""


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


TRACKERS = ("none", "tensorboard", "wandb")


class TrackerError(ConfigError):
    """A tracker was asked for whose package is not installed (the message says what to install)."""


class TensorBoardTracker:
    """Scalars to `<output_dir>/tensorboard/` through torch.utils.tensorboard (needs the `tensorboard` package)."""

    def __init__(self, output_dir: Path, description: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackerError("tracker=tensorboard needs the tensorboard package: pip install 'tether[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One Weights & Biases run per stage, its files in `<output_dir>/wandb/`, the stage's config.yaml as its config.

    The project is $WANDB_PROJECT or "tether"; WANDB_MODE=offline (or disabled) works without network.
    """

    def __init__(self, output_dir: Path, description: str):
        try:
            import wandb
        except ImportError:
            raise TrackerError("tracker=wandb needs the wandb package: pip install 'tether[wandb]'") from None
        import yaml

        config_file = output_dir / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tether"),
            name=f"{output_dir.name}-{description}",
            job_type=description,
            dir=str(output_dir),
            config=config,
            reinit="finish_previous",
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(tracker: str, output_dir: Path, description: str):
    """The tracker named by a config's `tracker` field, or None for "none"."""
    if tracker == "none":
        return None
    if tracker == "tensorboard":
        return TensorBoardTracker(output_dir, description)
    if tracker == "wandb":
        return WandbTracker(output_dir, description)
    raise TrackerError(f"tracker must be one of {', '.join(TRACKERS)}, got {tracker!r}")


def read_appended(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) for each JSON row of a file tether appends to as it runs (metrics.jsonl, samples.jsonl).

    A last line cut short (a crash while it was written) is dropped with a note, so a resumed run goes on; a bad
    line before the last is a DataError naming the file and the line."""
    lines = Path(path).read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append((line, json.loads(line)))
        except json.JSONDecodeError as e:
            if i != last:
                raise DataError(
                    path,
                    i + 1,
                    text=f"not a JSON row ({e.msg}); only a last line cut short by a crash is "
                    "dropped: repair or remove this line, or start the stage again with resume=false",
                ) from None
            console.print(f"{path}: its last line was cut short (a crash while it was written) and is dropped")
    return rows


class MetricsLogger:
    """Streams metrics to `<output_dir>/metrics.jsonl` (and to `tracker`) and shows a progress bar.

    `headline` names the metrics shown live next to the bar. On resume, pass `start_step`:
    lines after that step (written before the interruption) are dropped so the file
    matches the resumed run exactly. `tracker` ("none", "tensorboard" or "wandb") also sends
    every numeric value of every row there, under the same name.
    """

    def __init__(
        self, output_dir: str | os.PathLike, total: int, description: str, headline: list[str], start_step: int = 0, tracker: str = "none"
    ):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.headline, self.t0 = headline, time.time()
        if not processes().is_main:  # the main process writes the rows (its values are reduced over all processes)
            self._file, self.tracker, self._plain = open(os.devnull, "a"), None, False
            self.progress = Progress(console=console, disable=True)
            self.task = self.progress.add_task(description, total=total, completed=start_step, live="")
            return
        if start_step > 0 and self.path.exists():
            kept = [line for line, row in read_appended(self.path) if row.get("step", 0) <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif start_step == 0:
            self.path.write_text("")
        self._file = self.path.open("a")
        disable = not sys.stderr.isatty() and os.environ.get("TETHER_PROGRESS", "") != "1"
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[live]}"),
            console=console,
            disable=disable,
        )
        self.task = self.progress.add_task(description, total=total, completed=start_step, live="")
        self.progress.start()
        self._plain = disable
        self._description = description
        self._total = total
        self.tracker = open_tracker(tracker, self.path.parent, description)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": round(time.time() - self.t0, 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.tracker is not None:
            self.tracker.log(
                step,
                {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)},
            )
        live = "  ".join(f"{k.split('/')[-1]}={row[k]:.4g}" for k in self.headline if isinstance(row.get(k), (int, float)))
        self.progress.update(self.task, completed=step, live=live)
        if self._plain:  # no terminal (CI, logs): one short line every ~10% of the run
            every = max(1, self._total // 10)
            if step % every == 0 or step == self._total:
                print(f"[{self._description}] step {step}/{self._total} {live}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.progress.stop()
        self._file.close()
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def write_summary(output_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Write `summary.json` last: its presence marks the stage as complete (the main process writes it)."""
    path = Path(output_dir) / "summary.json"
    if not processes().is_main:
        return path
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_summary(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(output_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None
