"""What the side-by-side benchmarks share: running one side in a fresh process with its output logged.

Imported by the benchmark scripts (run as `python benchmarks/<name>.py`, so this folder is on sys.path).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
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


HH_TRAIN = "shared:hh_rlhf_harmless/train.jsonl.gz"


def load_conftest():
    """tests/conftest.py as a module (its tiny tokenizer and model builders)."""
    spec = importlib.util.spec_from_file_location("tether_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_model(work: Path, model: str) -> str:
    """The model directory: 'tiny' (the test suite's model, built afresh in `work/model`) or a tether model name or path."""
    if model != "tiny":
        from tether.models.loading import resolve_model

        return resolve_model(model)
    model_dir = work / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    load_conftest().build_tiny_model_dir(model_dir)
    return str(model_dir)


def hh_train_pairs(n: int) -> list:
    """The first `n` usable HH harmless training pairs (a few rows are skipped); too few stops the benchmark."""
    from tether.config import resolve_path
    from tether.data.readers import read_preferences

    pairs = read_preferences(resolve_path(HH_TRAIN), limit=n + 16, skipped=[])[:n]
    if len(pairs) < n:
        raise SystemExit(f"only {len(pairs)} usable pairs in {HH_TRAIN}; lower --steps or --batch-size")
    return pairs
