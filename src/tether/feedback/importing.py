"""Load candidate pairs or samples from a data file into the store as comparison tasks.

Two kinds of file are accepted (any format `tether` reads; the first row decides which):

* **pairs**, rows with ``chosen`` and ``rejected``: one task each, response A = chosen,
  response B = rejected (annotators see them in random order, so the old label does not
  leak). With ``golden=True`` every pair becomes a golden task whose known answer is A.
* **samples**, rows with a prompt and a ``response`` (such as `tether collect`'s
  samples.jsonl or `tether generate`'s output): responses to the same prompt are grouped and
  every two different ones become a task. A ``model`` key in a row is kept as the response's
  model, the rest of the row's extra keys as its meta.

Before anything is read into records, every line is checked for what no store keeps and what would
otherwise end in a traceback, each reported as one sentence naming ``file:line``: a NUL character
(PostgreSQL's text cannot hold one), a lone surrogate (``"\\ud800"``: half of a UTF-16 pair, not text)
and JSON nested more than :data:`MAX_DEPTH` levels deep. The same pair twice (in either order) is one
task; golden pairs that contradict each other stop the import, naming both lines.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from tether.data.readers import iter_jsonl, read_demonstrations, read_preferences
from tether.data.records import prompt_key
from tether.feedback.store import Candidate, Store, StoreError

MAX_DEPTH = 100
"""Deepest JSON nesting accepted in an imported row (a pair or sample is a few levels deep; a chat prompt three)."""


def check_file(name: str) -> list[int]:
    """The line number of each row of a JSON Lines file, after checking every string in it (see the module docstring);
    StoreError names the first bad ``file:line``. A ``.json`` list is checked item by item (its 1-based position)."""
    stem = name[:-3] if name.endswith(".gz") else name
    lines = []
    if stem.endswith(".json"):
        try:
            for number, row in iter_jsonl(name):
                _check_row(name, number, row)
                lines.append(number)
        except RecursionError:
            raise StoreError(f"{name}: the JSON is nested more than {MAX_DEPTH} levels deep; a row is a flat object of texts") from None
        return lines
    with (gzip.open if name.endswith(".gz") else open)(name, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace")  # bytes that are not UTF-8: the reader names the line
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except RecursionError:
                raise StoreError(
                    f"{name}:{number}: the JSON is nested more than {MAX_DEPTH} levels deep; a row is a flat object of texts"
                ) from None
            except ValueError:
                row = None  # not JSON: the reader names the line
            _check_row(name, number, row)
            lines.append(number)
    return lines


def _check_row(name: str, number: int, row: Any) -> None:
    """Walk one row (without recursion): every string, keys included, must be storable text, no deeper than MAX_DEPTH."""
    stack = [(row, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise StoreError(f"{name}:{number}: the JSON is nested more than {MAX_DEPTH} levels deep; a row is a flat object of texts")
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise StoreError(f"{name}:{number}: a text holds a NUL character (\\u0000), which the store cannot keep; remove it")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise StoreError(
                    f"{name}:{number}: a text holds a lone surrogate (such as \\ud800, half of a UTF-16 pair), which is not text; "
                    "fix the file's encoding"
                ) from None


def read_import(path: str | os.PathLike[str], golden: bool = False) -> tuple[str, list, list[int] | None]:
    """The file's rows, read whole and checked before any store is opened (a file with no usable row is refused here):
    ("pairs", [PreferencePair], lines) or ("samples", [Demonstration], lines); ``lines`` holds each row's line in
    the file (None where rows and lines do not match one to one)."""
    name = os.fspath(path)
    lines = check_file(name) if Path(name).is_file() else None  # a missing file: the reader says so
    first = next(iter_jsonl(name), None)
    if first is None:
        raise StoreError(f"{name}: expected rows of preference pairs or of samples, but the file holds none")
    _, row = first
    if "chosen" in row or "rejected" in row:
        rows = read_preferences(name)
    elif golden:
        raise StoreError(f"{name}: golden tasks need preference pairs (the known answer is 'chosen'), but the file holds samples")
    else:
        rows = read_demonstrations(name)
    kind = "pairs" if "chosen" in row or "rejected" in row else "samples"
    return kind, rows, lines if lines is not None and len(lines) == len(rows) else None


def import_rows(
    store: Store, name: str, kind: str, rows: list, *, required: int = 3, golden: bool = False, lines: list[int] | None = None
) -> dict[str, Any]:
    """Add rows read by `read_import` from file `name` to the store as tasks; returns what was added (``duplicates``:
    rows that repeat a pair given before, in either order, and were merged into its task)."""
    if kind == "pairs":
        tasks = store.add_pairs(rows, required=required, golden=golden, source=name, lines=lines)
        return {"kind": "pairs", "rows": len(rows), "tasks": len(set(tasks)), "duplicates": len(tasks) - len(set(tasks)), "golden": golden}
    groups: dict[str, tuple[Any, list[Candidate]]] = {}
    for s in rows:
        meta = dict(s.meta)
        model = meta.pop("model", None)
        key = prompt_key(s.prompt)
        groups.setdefault(key, (s.prompt, []))[1].append(Candidate(s.response, model if isinstance(model, str) else None, {}, meta))
    tasks = [t for prompt, candidates in groups.values() for t in store.add_candidates(prompt, candidates, required=required, source=name)]
    return {"kind": "samples", "rows": len(rows), "prompts": len(groups), "tasks": len(set(tasks)), "golden": False}


def import_file(store: Store, path: str | os.PathLike[str], *, required: int = 3, golden: bool = False) -> dict[str, Any]:
    """Add the file's pairs or samples to the store as tasks; returns what was added."""
    kind, rows, lines = read_import(path, golden)
    return import_rows(store, os.fspath(path), kind, rows, required=required, golden=golden, lines=lines)
