"""What the side-by-side benchmarks share: running one side in a fresh process with its output logged.

Imported by the benchmark scripts (run as `python benchmarks/<name>.py`, so this folder is on sys.path).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_logged(cmd: list[str], log: Path, threads: int = 0) -> subprocess.CompletedProcess:
    """Run `cmd` from the repo root: stderr to `log`, stdout returned (and appended to `log`); a failure stops the
    benchmark with the log's tail. `threads` caps OMP/MKL threads (torch reads them at start-up; 0 = its default)."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
    with log.open("a") as f:
        f.write("\n--- stdout ---\n" + proc.stdout)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def run_json(cmd: list[str], log: Path, threads: int = 0) -> dict:
    """`run_logged`, then the JSON object the command printed last (a peer's result), with the command added."""
    proc = run_logged(cmd, log, threads)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["command"] = " ".join(cmd)
    return result
