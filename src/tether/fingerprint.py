"""What decides a stage's result, recorded beside it, so that old state is never reused for new settings.

A stage's fingerprint is its resolved config (less the keys in IGNORED: where and how often it writes, and
memory or speed settings that leave its numbers alone) and the content of every input it names (the keys in
INPUTS): the sha256 of a file's bytes, or of every file in a model folder (and an ensemble's members).
'default' (the shipped model, judge or constitution) is known by its name. `training.start_stage` writes it
to `<output_dir>/fingerprint.json`, a checkpoint keeps a copy, and:

  - a resumed stage whose checkpoint was written with another fingerprint stops and says what changed
    (training.check_checkpoint); so does a stage in rounds (online DPO, rejection sampling) whose round
    folders were made with another (training.check_rounds);
  - `tether run` reruns the first stage whose fingerprint changed and every stage after it (pipeline.py).

An input is compared by its content: a file moved or copied elsewhere is the same input, a file rewritten in
place is not. Files are hashed once per process (cached by path, size and modification time), so a model of
some gigabytes costs its hashing once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tether.config import HUB_ID, MOVED_KEYS, resolve_path, to_dict
from tether.models.card import MODEL_CARD
from tether.models.loading import cached_hub_model
from tether.models.reward_model import ENSEMBLE_FILE

FINGERPRINT_FILE = "fingerprint.json"

IGNORED = frozenset(
    {
        # where and how often a stage writes: its folder, checkpoints, samples, the tracker and store that get copies
        "output_dir",
        "interrupt_after",
        "save_every",
        "resume",
        "keep_checkpoint",
        "samples_every",
        "tracker",
        "db",
        "store_judgements",
        # memory and speed: the same numbers (up to rounding), so a run that ran out of memory can resume with them changed
        # (parallel.activation_checkpointing and parallel.offload_trainable among them)
        "activation_checkpointing",
        "offload_frozen",
        "offload_trainable",
        "share_weights",
        "max_tokens_per_forward",
        "micro_batch_size",
    }
)
"""Keys (at any depth) that do not change what a stage computes."""

INPUTS = frozenset(
    {
        "model",
        "policy",
        "reference",
        "baseline",
        "reward_model",
        "reward_function",
        "judge",
        "judge_model",
        "path",
        "data",
        "eval_data",
        "prompts",
        "eval_prompts",
        "normalize_data",
        "ptx_data",
        "constitution",
        "chat_template",
    }
)
"""Keys (at any depth) that name a file or a model folder whose content the stage reads."""

_hashes: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, mtime) in this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def content_id(value: str) -> str | None:
    """The content of the input `value` names: a file's sha256, a folder's (every file in it, hidden ones left out, by
    relative path; the README.md at its top left out: a model card, which records the run and feeds no stage), or None
    when it names no file or folder ('default', 'module:function', a path not made yet); a hub id `org/name` in the local
    Hugging Face cache is its snapshot folder."""
    if value == "default":
        return None
    path = Path(resolve_path(value))
    if not path.exists() and ":" in value:  # 'file.py:function'
        path = Path(resolve_path(value.rsplit(":", 1)[0]))
    if not path.exists() and HUB_ID.fullmatch(value) and (snapshot := cached_hub_model(value)):  # a hub id in the local cache
        path = Path(snapshot)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".") and not (Path(root) == path and f == MODEL_CARD)):
            file = Path(root) / name
            digest.update(f"{file.relative_to(path)}\0{file_sha256(file)}\n".encode())
    if (path / ENSEMBLE_FILE).is_file():  # a reward-model ensemble: its members live beside it
        for member in json.loads((path / ENSEMBLE_FILE).read_text()).get("members", []):
            digest.update(f"{member}\0{content_id(str(path / member))}\n".encode())
    return digest.hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def fingerprint(cfg) -> dict[str, Any]:
    """{"settings": {dotted key: value}, "inputs": {dotted key: content sha256}} of a stage config (a dataclass)."""
    settings = {key: value for key, value in _flatten(to_dict(cfg)).items() if not IGNORED & set(key.split("."))}
    inputs = {}
    for key, value in settings.items():
        if key.split(".")[-1] in INPUTS and isinstance(value, str) and (digest := content_id(value)) is not None:
            inputs[key] = digest
    return json.loads(json.dumps({"settings": settings, "inputs": inputs}))  # as it reads back from the file


_UNSET = object()


def _show(value: Any) -> str:
    return "unset" if value is _UNSET else value if isinstance(value, str) else json.dumps(value)


@functools.cache
def default_settings(cls: type) -> dict[str, Any]:
    """The flattened defaults of config class `cls` ({dotted key: value}, as `fingerprint` records settings), read from
    its fields (a class whose own defaults do not validate, such as BoNConfig without a reward, still has them)."""
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if isinstance(value, list):  # a list of sections (PPO's default `reward`) is recorded as a list of mappings
            value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        found.update(_flatten(to_dict(value) if dataclasses.is_dataclass(value) else value, f"{f.name}."))
    return json.loads(json.dumps(found))


def changes(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> list[str]:
    """What differs from fingerprint `old` to `new`, one phrase each: 'optim.lr changed (0.001 -> 0.002)', 'the content
    of data (/x/demos.jsonl) changed'. An input named by another path but with the same content is no change; keys in
    `ignore` are not compared. With `defaults` (`default_settings` of the config class), a setting that `old` does not
    have (one added to tether since) is no change while it holds its default, and one that `new` no longer has (removed
    since) is none either. A key `old` recorded before it moved into a section (config.MOVED_KEYS: `fsdp`, now
    `parallel.fsdp`) is compared under its new name."""
    settings, inputs = (_moved(old.get("settings", {})), new.get("settings", {})), (old.get("inputs", {}), new.get("inputs", {}))
    found = []
    for key in list(settings[1]) + [k for k in settings[0] if k not in settings[1]]:
        if key in ignore:
            continue
        a, b = settings[0].get(key, _UNSET), settings[1].get(key, _UNSET)
        if defaults is not None and (b is _UNSET or (a is _UNSET and key in defaults and b == defaults[key])):
            continue
        if key in inputs[0] and key in inputs[1]:  # both name a file or folder: its content decides
            if inputs[0][key] != inputs[1][key]:
                found.append(f"{key} changed ({_show(a)} -> {_show(b)})" if a != b else f"the content of {key} ({_show(b)}) changed")
        elif a != b:
            found.append(f"{key} changed ({_show(a)} -> {_show(b)})")
    return found


def _moved(settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings with each key that has since moved into a section under its new name ('sft.fsdp' -> 'sft.parallel.fsdp')."""
    out = {}
    for key, value in settings.items():
        head, _, leaf = key.rpartition(".")
        moved = MOVED_KEYS.get(leaf)
        out[key if moved is None or key.endswith(moved) else f"{head}.{moved}".lstrip(".")] = value
    return out


def write_fingerprint(folder: str | os.PathLike, fp: dict[str, Any]) -> None:
    path = Path(folder) / FINGERPRINT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(fp, indent=1) + "\n")
    os.replace(tmp, path)


def read_fingerprint(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The fingerprint recorded in `folder`, or None (none recorded: a folder written before fingerprints, or unreadable)."""
    path = Path(folder) / FINGERPRINT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def recorded_changes(cfg) -> list[str] | None:
    """How `cfg` differs from what its output_dir was computed with: [] for nothing, None when nothing is recorded there."""
    recorded = read_fingerprint(cfg.output_dir)
    return None if recorded is None else changes(recorded, fingerprint(cfg), defaults=default_settings(type(cfg)))
