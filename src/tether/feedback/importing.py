"""Load candidate pairs or samples from a data file into the store as comparison tasks.

Two kinds of file are accepted (any format `tether` reads; the first row decides which):

* **pairs**, rows with ``chosen`` and ``rejected``: one task each, response A = chosen,
  response B = rejected (annotators see them in random order, so the old label does not
  leak). With ``golden=True`` every pair becomes a golden task whose known answer is A.
* **samples**, rows with a prompt and a ``response`` (such as `tether collect`'s
  samples.jsonl or `tether generate`'s output): responses to the same prompt are grouped and
  every two different ones become a task. A ``model`` key in a row is kept as the response's
  model, the rest of the row's extra keys as its meta.
"""

from __future__ import annotations

import os
from typing import Any

from tether.data.readers import iter_jsonl, read_demonstrations, read_preferences
from tether.data.records import prompt_key
from tether.feedback.store import Candidate, Store, StoreError


def read_import(path: str | os.PathLike[str], golden: bool = False) -> tuple[str, list]:
    """The file's rows, read whole before any store is opened (a file with no usable row is refused here):
    ("pairs", [PreferencePair]) or ("samples", [Demonstration])."""
    name = os.fspath(path)
    first = next(iter_jsonl(name), None)
    if first is None:
        raise StoreError(f"{name}: expected rows of preference pairs or of samples, but the file holds none")
    _, row = first
    if "chosen" in row or "rejected" in row:
        return "pairs", read_preferences(name)
    if golden:
        raise StoreError(f"{name}: golden tasks need preference pairs (the known answer is 'chosen'), but the file holds samples")
    return "samples", read_demonstrations(name)


def import_rows(store: Store, name: str, kind: str, rows: list, *, required: int = 3, golden: bool = False) -> dict[str, Any]:
    """Add rows read by `read_import` from file `name` to the store as tasks; returns what was added."""
    if kind == "pairs":
        tasks = store.add_pairs(rows, required=required, golden=golden, source=name)
        return {"kind": "pairs", "rows": len(rows), "tasks": len(set(tasks)), "golden": golden}
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
    kind, rows = read_import(path, golden)
    return import_rows(store, os.fspath(path), kind, rows, required=required, golden=golden)
