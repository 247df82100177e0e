"""Read and write record files and datasets, in tether's formats and in every format TRL documents.

A reader takes a path, a Hugging Face hub id or rows already in memory:

* ``.jsonl`` / ``.jsonl.gz`` (one JSON object a line) and ``.json`` / ``.json.gz``
  (one JSON list of objects) are read here, so an error names the file and line;
* ``.csv``, ``.parquet`` and ``.arrow`` files, dataset folders (``save_to_disk``
  or a folder of data files) and hub ids ``org/name`` (from the local Hugging
  Face cache; ``split`` and ``subset`` choose the part) are loaded with
  Hugging Face ``datasets``, and an error names the row (1-based) instead;
* a ``datasets.Dataset`` or any iterable of dict rows is read as it is.

``columns`` renames your columns to the names below first (e.g.
``{"prompt": "question"}``). Every row's type is then told from its keys, so one
file may mix them; TRL's names for the types, plain (text) and
conversational (lists of ``{"role", "content"}`` messages):

* **language modeling** -- ``{"text"}``, or ``{"messages": [...]}``. A ``text`` row
  is a demonstration with no prompt: SFT trains on every token of the text (and
  its EOS), as TRL does. For ``messages`` the final assistant message is the
  response and the messages before it are the prompt (only the last turn is
  trained on); a conversation ending with a user message is a prompt.
* **prompt-only** -- ``{"prompt"}``.
* **prompt-completion** -- ``{"prompt", "completion"}``; conversational rows hold
  a prompt ending with a user message and a completion of one assistant message.
  tether's own ``{"prompt", "response"}`` rows are the same.
* **preference** (explicit prompt) -- ``{"prompt", "chosen", "rejected"[, "margin"]}``;
  conversational rows hold one assistant message in each of chosen and rejected.
* **preference with an implicit prompt** -- ``{"chosen", "rejected"}`` each holding the
  whole exchange: message lists that share all but their final assistant message;
  HH-RLHF dialogues ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (the turns before the final
  Assistant turn become the prompt messages, the final Assistant turn of each
  dialogue its response); or plain texts, whose common beginning is the prompt
  (TRL's ``extract_prompt``).
* **unpaired preference** -- ``{"prompt", "completion", "label"}``: no tether stage
  trains on single labelled replies, so only their prompts are read.
* **Alpaca seed tasks** -- ``{"instruction", "instances": [{"input", "output"}]}``:
  one record per instance; the prompt is the instruction, followed by a blank
  line and the input when the input is not empty.
* **Self-Instruct evaluation** -- ``{"instruction", "input", "reference_output"}``
  (``"output"`` is accepted too): the prompt as for Alpaca, the response is
  the reference output.

Detection is strict: :func:`read_demonstrations` (SFT) takes language-modeling,
prompt-completion, Alpaca and Self-Instruct rows; :func:`read_preferences` (reward
models, DPO) the two preference types; :func:`read_prompts` (rollouts) any row with
a prompt. A row of another type is refused with a :class:`DataError` that names the
type found and the types wanted. Keys that a type does not read (and a ``"meta"``
object) are kept in the record's ``meta``.

Prompts must be non-empty; responses must be strings but may be empty (an
empty reply is something a policy can produce, and HH-RLHF holds a few pairs
where the annotator preferred it). A malformed row raises :class:`DataError`
naming the file, the line, the field and what was expected (or, with
``skipped``, is dropped); so does a file that gives no record at all, saying
how many rows it read and why each kind was dropped. A :class:`ReadReport`
keeps those counts for a stage's log and summary.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import secrets
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from tether.config import HUB_ID, did_you_mean
from tether.data.records import (
    MISSING,
    Demonstration,
    PreferencePair,
    Prompt,
    PromptRecord,
    messages_problem,
)

__all__ = [
    "DataError",
    "ReadReport",
    "Source",
    "iter_jsonl",
    "iter_rows",
    "row_type",
    "source_name",
    "read_prompts",
    "read_demonstrations",
    "read_preferences",
    "write_jsonl",
    "split",
]

PathLike = str | os.PathLike[str]
T = TypeVar("T")
_Want = Literal["prompt", "demonstration", "preference"]


class _Said:
    """A description to print as is after "got", rather than a JSON value."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _describe(value: Any) -> str:
    """Describe a JSON value briefly, for an error message."""
    if value is MISSING:
        return "nothing (the field is missing)"
    if isinstance(value, _Said):
        return value.text
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if not value:
            return "an empty string"
        if not value.strip():
            return "a blank string"
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, list):
        if not value:
            return "an empty list"
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        if not value:
            return "an empty object"
        keys = ", ".join(repr(key) for key in list(value)[:8])
        more = ", ..." if len(value) > 8 else ""
        return f"an object with keys {keys}{more}"
    return repr(value)


class DataError(ValueError):
    """A data file is missing, unreadable or holds a malformed row.

    The message names the file, the line (when there is one), the field (when
    there is one), what was expected and what was found, e.g.::

        data/prefs.jsonl:12: field 'chosen': expected a string, got 3

    Attributes:
        path: the file, as given.
        line: 1-based line number (item number for a ``.json`` list), or None
            for a problem with the whole file.
        field: the field at fault, e.g. ``"messages[2].role"``, or None.
        expected: what was expected, as a phrase.
        got: what was found (None: not shown).
        text: the whole sentence after the file's name, when "expected ..., got ..."
            does not fit (e.g. a file with no usable row); it replaces ``expected``.
        reason: a short phrase for a :class:`ReadReport` when the row is skipped,
            e.g. "without a 'response'" (None: made from the field and what was found).
    """

    def __init__(
        self,
        path: PathLike,
        line: int | None,
        field: str | None = None,
        expected: str = "",
        got: Any = None,
        *,
        text: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.expected = text if text is not None else expected
        self.got = got
        where = self.path if line is None else f"{self.path}:{line}"
        if reason is None:
            if field is None:
                reason = "of no accepted shape"
            elif got is MISSING:
                reason = f"without a '{field}'"
            else:
                reason = f"with a bad '{field}'"
        self.reason = reason
        if text is not None:
            super().__init__(f"{where}: {text}")
            return
        what = f"field '{field}': " if field is not None else ""
        found = f", got {_describe(got)}" if got is not None else ""
        super().__init__(f"{where}: {what}expected {expected}{found}")


_EXAMPLES = {
    "prompt": '{"prompt": "..."}',
    "demonstration": '{"prompt": "...", "response": "..."}',
    "preference": '{"prompt": "...", "chosen": "...", "rejected": "..."}',
}
_KIND_NAMES: dict[str, tuple[str, str]] = {
    "prompt": ("prompt", "prompts"),
    "demonstration": ("demonstration", "demonstrations"),
    "preference": ("preference pair", "preference pairs"),
}


class ReadReport:
    """What a reader made of one file: the rows it read, the records it kept, the rows it dropped and why.

    Hand a fresh one to a reader (``report=ReadReport()``) and it is filled in; a stage
    prints :meth:`describe` and puts :meth:`to_dict` in its summary, and may add its own
    drops (:meth:`drop`) before it checks that something is left.

    Attributes:
        path: the file, as given.
        kind: "prompt", "demonstration" or "preference".
        rows: rows read (for JSON Lines: every line, blank ones too; for a JSON list: its items).
        records: records kept (an Alpaca task gives one per instance).
        dropped: reason (e.g. "blank", "without a 'response'") -> the line of each row dropped
            for it (None where a record has no line, e.g. one dropped by a stage).
    """

    def __init__(self) -> None:
        self.path = ""
        self.kind: str = "prompt"
        self.rows = 0
        self.records = 0
        self.dropped: dict[str, list[int | None]] = {}

    def drop(self, reason: str, line: int | None = None, count: int = 1) -> None:
        """Count ``count`` rows (or records) dropped for ``reason``, at ``line`` when known."""
        self.dropped.setdefault(reason, []).extend([line] * count)

    def noun(self, count: int) -> str:
        """The kind of record, singular or plural for ``count``."""
        one, many = _KIND_NAMES.get(self.kind, (self.kind, self.kind + "s"))
        return one if count == 1 else many

    def describe(self) -> str:
        """E.g. ``"3 rows read: 2 blank, 1 without a 'response' (line 3)"``."""
        rows = f"{self.rows} row{'s' if self.rows != 1 else ''} read"
        if not self.rows:
            return rows + " (the file is empty)"
        if not self.dropped:
            return rows
        parts = []
        for reason, lines in self.dropped.items():
            known = [line for line in lines if line is not None]
            where = ""
            if known and reason != "blank":
                shown = ", ".join(str(line) for line in known[:3]) + (", ..." if len(known) > 3 else "")
                where = f" (line{'s' if len(known) > 1 else ''} {shown})"
            parts.append(f"{len(lines)} {reason}{where}")
        return f"{rows}: " + ", ".join(parts)

    def kept(self) -> str:
        """E.g. ``"12 demonstrations from data/demos.jsonl (13 rows read: 1 blank)"``, for a stage's log."""
        return f"{self.records} {self.noun(self.records)} from {self.path} ({self.describe()})"

    def to_dict(self) -> dict[str, Any]:
        """For a summary: ``{"path", "rows_read", "records", "dropped": {reason: count}}``."""
        return {
            "path": self.path,
            "rows_read": self.rows,
            "records": self.records,
            "dropped": {reason: len(lines) for reason, lines in self.dropped.items()},
        }

    def nothing_left(self, why: str | None = None) -> DataError:
        """The error for a file that gives nothing to use: the rows read and why each kind was dropped.

        ``why`` (e.g. "after 4 pairs identical after truncation to max_response_tokens=2 were
        left out; raise max_response_tokens") says what took the records the reader kept.
        """
        noun = self.noun(1)
        if why:
            text = f"no usable {noun} left {why} ({self.describe()})"
        else:
            text = f"no usable {noun} in {self.describe()}; expected at least one row such as {_EXAMPLES.get(self.kind, noun)}"
        return DataError(self.path, None, text=text, reason=f"no usable {noun}")


# --------------------------------------------------------------------------
# Reading rows


def iter_jsonl(
    path: PathLike, report: ReadReport | None = None, skipped: list[DataError] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for each JSON object in a data file.

    Reads ``.jsonl`` (one object a line; blank lines skipped), ``.jsonl.gz``
    (the same, gzipped), and ``.json`` / ``.json.gz`` holding one JSON list of
    objects (then ``line_number`` is the item's 1-based position).

    Args:
        report: when given, counts the rows read and the blank or bad ones dropped.
        skipped: when given, a line that is not valid JSON or not a JSON object is
            appended here as its DataError and skipped instead of stopping the read.

    Raises:
        DataError: the file is missing or unreadable, a line is not valid JSON,
            or a row is not a JSON object (unless ``skipped`` is given).
    """
    name = os.fspath(path)
    file = Path(name)
    if not file.exists():
        raise DataError(name, None, None, text=f"no such file{did_you_mean(file)}; expected {_WANTED_SOURCE}")
    if not file.is_file():
        raise DataError(name, None, None, "a .jsonl, .jsonl.gz or .json data file", _Said("a directory"))
    compressed = name.endswith(".gz")
    stem = name[:-3] if compressed else name
    try:
        if stem.endswith(".json"):
            yield from _iter_json_list(name, file, compressed, report, skipped)
        else:
            yield from _iter_json_lines(name, file, compressed, report, skipped)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(name, None, None, "a complete gzip file", _Said(f"a damaged one ({error})")) from error
    except PermissionError as error:
        raise DataError(name, None, None, "a readable file", _Said("one this user may not read")) from error


def _bad_line(error: DataError, report: ReadReport | None, skipped: list[DataError] | None) -> None:
    """Raise ``error``, or with ``skipped`` keep it there (and in ``report``) and go on."""
    if skipped is None:
        raise error
    skipped.append(error)
    if report is not None:
        report.drop(error.reason, error.line)


def _iter_json_lines(
    name: str, file: Path, compressed: bool, report: ReadReport | None, skipped: list[DataError] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield the rows of a JSON Lines file (see :func:`iter_jsonl`)."""
    opener: Callable[..., Any] = gzip.open if compressed else open
    with opener(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if report is not None:
                report.rows += 1
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                _bad_line(
                    DataError(name, number, None, "UTF-8 text", _Said("bytes that are not valid UTF-8"), reason="not UTF-8 text"),
                    report,
                    skipped,
                )
                continue
            if not text.strip():
                if report is not None:
                    report.drop("blank", number)
                continue
            try:
                row = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                _bad_line(
                    DataError(
                        name,
                        number,
                        None,
                        "one JSON object on the line",
                        _Said(f"invalid JSON ({error.msg} at column {error.colno})"),
                        reason="not valid JSON",
                    ),
                    report,
                    skipped,
                )
                continue
            if not isinstance(row, dict):
                _bad_line(DataError(name, number, None, "a JSON object {...}", row, reason="not a JSON object"), report, skipped)
                continue
            yield number, row


def _iter_json_list(
    name: str, file: Path, compressed: bool, report: ReadReport | None, skipped: list[DataError] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield the rows of a ``.json`` file holding a list of objects."""
    opener: Callable[..., Any] = gzip.open if compressed else open
    with opener(file, "rb") as handle:
        data = handle.read()
    try:
        rows = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DataError(name, None, None, "UTF-8 text", _Said("bytes that are not valid UTF-8")) from error
    except json.JSONDecodeError as error:
        raise DataError(
            name,
            error.lineno,
            None,
            "a JSON list of objects",
            _Said(f"invalid JSON ({error.msg} at column {error.colno})"),
        ) from error
    if not isinstance(rows, list):
        raise DataError(name, None, None, "a JSON list of objects [{...}, ...]", rows)
    for index, row in enumerate(rows):
        if report is not None:
            report.rows += 1
        if not isinstance(row, dict):
            _bad_line(DataError(name, index + 1, None, "a JSON object {...}", row, reason="not a JSON object"), report, skipped)
            continue
        yield index + 1, row


# --------------------------------------------------------------------------
# Rows from Hugging Face datasets and from memory

Source = PathLike | Iterable[dict[str, Any]]
"""What a reader reads: a path or hub id (see the module docstring), or rows in memory (a ``datasets.Dataset``, a list of dicts)."""

_DATASETS_FILES = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
_JSON_NAMES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".gz")
_WANTED_SOURCE = (
    "a .jsonl, .jsonl.gz, .json, .csv, .parquet or .arrow file, a dataset folder (save_to_disk) or a Hugging Face hub id org/name"
)


def source_name(source: Source) -> str:
    """How errors and reports name ``source``: the path or hub id as given, or e.g. ``<Dataset>`` for rows in memory."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__}>"


def iter_rows(
    source: Source,
    report: ReadReport | None = None,
    skipped: list[DataError] | None = None,
    *,
    split: str | None = None,
    subset: str | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_row_number, row)`` for each row of ``source`` (see the module docstring).

    JSON Lines and JSON files go through :func:`iter_jsonl` (line numbers); everything else
    through Hugging Face ``datasets`` or as given (row numbers, from 1). ``split`` and
    ``subset`` choose the part of a dataset folder or hub dataset (``split`` None: 'train',
    or the only split there is); a single file has one split.

    Raises:
        DataError: the source is missing, unreadable, not cached (a hub id), or a row is not
            a mapping (unless ``skipped`` is given).
    """
    if isinstance(source, Mapping) and source and all(hasattr(part, "column_names") for part in source.values()):
        source = _one_split(source_name(source), source, split)  # a DatasetDict in memory
    if not isinstance(source, (str, os.PathLike)):
        yield from _iter_memory(source, report, skipped)
        return
    name = os.fspath(source)
    file = Path(name)
    suffix = file.suffix.lower()
    if file.is_dir() or (file.is_file() and suffix in _DATASETS_FILES):
        yield from _iter_memory(_load_local(name, file, split), report, skipped, name)
    elif not file.exists() and HUB_ID.fullmatch(name) and suffix not in _DATASETS_FILES and not name.endswith(_JSON_NAMES):
        yield from _iter_memory(_load_hub(name, split, subset), report, skipped, name)
    else:
        yield from iter_jsonl(name, report, skipped)


def _iter_memory(
    rows: Any, report: ReadReport | None, skipped: list[DataError] | None, name: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``datasets.Dataset`` (or any iterable of mappings), numbered from 1.

    A ``None`` value stands for a missing field (a column store has a value for every
    column in every row), so those keys are left out.
    """
    name = name or source_name(rows)
    if isinstance(rows, (Mapping, str, bytes)):
        raise DataError(name, None, None, "rows: a datasets.Dataset or a list of dicts", _Said(f"a {type(rows).__name__}"))
    try:
        iterator = iter(rows)
    except TypeError as error:
        raise DataError(name, None, None, f"{_WANTED_SOURCE}, or rows in memory", _Said(f"a {type(rows).__name__}")) from error
    for number, row in enumerate(iterator, start=1):
        if report is not None:
            report.rows += 1
        if not isinstance(row, dict):
            _bad_line(DataError(name, number, None, "a row mapping {...}", row, reason="not a JSON object"), report, skipped)
            continue
        yield number, {key: value for key, value in row.items() if value is not None}


def _datasets(name: str) -> Any:
    """The ``datasets`` package, imported where a source needs it (it is slow to import)."""
    try:
        import datasets  # heavy: only for the sources it reads
    except ImportError as error:  # pragma: no cover - a dependency of tether
        raise DataError(name, None, text="reading this source needs Hugging Face datasets: pip install datasets") from error
    datasets.disable_progress_bars()
    return datasets


def _one_split(name: str, loaded: Any, split: str | None) -> Any:
    """The split ``split`` of a DatasetDict (None: 'train', or its only split)."""
    if not hasattr(loaded, "keys"):
        return loaded
    splits = list(loaded.keys())
    wanted = split or ("train" if "train" in splits or len(splits) != 1 else splits[0])
    if wanted not in splits:
        raise DataError(name, None, "split", f"one of {', '.join(map(repr, splits))} (set dataset.split)", wanted)
    return loaded[wanted]


def _load_local(name: str, file: Path, split: str | None) -> Any:
    """A local .csv / .parquet / .arrow file, a save_to_disk folder or a folder of data files, through ``datasets``."""
    datasets = _datasets(name)
    try:
        if file.is_file():
            return datasets.load_dataset(_DATASETS_FILES[file.suffix.lower()], data_files=name, split="train")
        if any((file / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return _one_split(name, datasets.load_from_disk(name), split)
        return _one_split(name, datasets.load_dataset(name), split)
    except DataError:
        raise
    except Exception as error:  # datasets raises many kinds; the user needs the file and the reason
        raise DataError(name, None, text=f"Hugging Face datasets could not read it: {type(error).__name__}: {error}") from error


def _load_hub(name: str, split: str | None, subset: str | None) -> Any:
    """A hub dataset ``org/name`` from the local Hugging Face cache (or the hub, when online and allowed)."""
    datasets = _datasets(name)
    try:
        loaded = datasets.load_dataset(name, subset)
    except Exception as error:
        part = f" (subset {subset!r})" if subset else ""
        raise DataError(
            name,
            None,
            text=(
                f"no such file or folder, and the Hugging Face dataset {name!r}{part} could not be loaded: it is not in the local "
                f"cache ({datasets.config.HF_DATASETS_CACHE}) and could not be fetched ({type(error).__name__}: {error}); "
                f"download it where there is a network (datasets.load_dataset({name!r})), or give {_WANTED_SOURCE}"
            ),
        ) from error
    return _one_split(name, loaded, split)


# --------------------------------------------------------------------------
# Interpreting rows

_SHAPES: dict[_Want, str] = {
    "prompt": (
        'a prompt row: {"prompt": text or messages} (any row with a prompt: prompt-completion, preference, ...), '
        '{"messages": [...]}, a preference pair {"chosen", "rejected"} (message lists, HH-RLHF dialogues or texts), '
        'an Alpaca seed task {"instruction", "instances"} or a Self-Instruct row {"instruction", "input"}'
    ),
    "demonstration": (
        'a demonstration row: {"text"}, {"messages": [..., assistant message]}, {"prompt", "completion"}, '
        '{"prompt", "response"}, an Alpaca seed task {"instruction", "instances": [{"input", "output"}]} or a '
        'Self-Instruct row {"instruction", "input", "reference_output"}'
    ),
    "preference": (
        'a preference row: {"prompt", "chosen", "rejected"[, "margin"]} (texts, or messages with one assistant message '
        'in chosen and rejected), {"chosen": [messages], "rejected": [messages]}, HH-RLHF dialogues '
        '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."} or texts that share their beginning'
    ),
}

_NATIVE_KEYS = frozenset({"prompt", "response", "chosen", "rejected", "margin", "meta", "messages"})
_HH_MARKERS = {"\n\nHuman:": "user", "\n\nAssistant:": "assistant"}


class _Row:
    """One row being interpreted: where it came from, and error helpers."""

    def __init__(self, path: str, line: int, row: dict[str, Any]) -> None:
        self.path = path
        self.line = line
        self.row = row

    def error(self, field: str | None, expected: str, got: Any) -> DataError:
        """A DataError about this row; ``got`` is the value found (a JSON null shows as "null")."""
        return DataError(self.path, self.line, field, expected, _Said("null") if got is None else got)

    def text(self, key: str, *, required: bool = True, non_empty: bool = True) -> str:
        """The string under ``key``; absent gives "" when not ``required``."""
        value = self.row.get(key, MISSING)
        if value is MISSING and not required:
            return ""
        wanted = "a non-empty string" if non_empty else "a string"
        if not isinstance(value, str) or (non_empty and not value.strip()):
            raise self.error(key, wanted, value)
        return value

    def prompt(self, key: str = "prompt") -> Prompt:
        """The prompt under ``key``: non-empty text, or messages ending with a user message."""
        value = self.row.get(key, MISSING)
        if isinstance(value, str):
            if not value.strip():
                raise self.error(key, "a non-empty string or a list of messages", value)
            return value
        if isinstance(value, list):
            self.check_messages(value, key, last_role="user")
            return [dict(message) for message in value]
        raise self.error(key, "a non-empty string or a list of messages ending with a user message", value)

    def check_messages(self, messages: Any, name: str, *, last_role: str | None) -> None:
        """Raise a DataError unless ``messages`` are well formed."""
        problem = messages_problem(messages, name, last_role=last_role)
        if problem is not None:
            raise self.error(*problem)

    def margin(self) -> float | None:
        """The optional ``margin``: a finite number, or None when absent or null."""
        value = self.row.get("margin")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error("margin", "a finite number (or no margin at all)", value)
        return float(value)

    def meta(self, known: Iterable[str] = _NATIVE_KEYS) -> dict[str, Any]:
        """The row's ``meta`` object, plus any keys that are not in ``known``."""
        meta = self.row.get("meta", {})
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise self.error("meta", "an object {...}", meta)
        meta = dict(meta)
        known = set(known)
        for key, value in self.row.items():
            if key not in known and key != "meta":
                meta.setdefault(key, value)
        return meta

    def wrong_shape(self, want: _Want) -> DataError:
        """The error for a row that fits none of the accepted shapes."""
        return self.error(None, _SHAPES[want], self.row)

    def wrong_type(self, kind: str, want: _Want) -> DataError:
        """The error for a row of a known type that this reader does not take: what it is and what is needed."""
        text = f"found {_TYPES[kind]}, but {_NEEDS[want]}"
        return DataError(self.path, self.line, text=text, reason=f"of type {kind}")


_TYPES: dict[str, str] = {
    "text": 'a language-modeling row {"text"} (TRL\'s language modeling type)',
    "messages": 'a conversational language-modeling row {"messages"} (TRL\'s language modeling type)',
    "prompt-only": 'a prompt-only row {"prompt"} (TRL\'s prompt-only type)',
    "prompt-completion": 'a prompt-completion row {"prompt", "completion"} (TRL\'s prompt-completion type)',
    "demonstration": 'a demonstration row {"prompt", "response"} (TRL\'s prompt-completion type)',
    "preference": 'a preference row {"prompt", "chosen", "rejected"} (TRL\'s preference type, explicit prompt)',
    "implicit preference": 'a preference row {"chosen", "rejected"} (TRL\'s preference type, implicit prompt)',
    "unpaired preference": 'an unpaired preference row {"prompt", "completion", "label"} (TRL\'s unpaired preference type)',
    "alpaca": 'an Alpaca seed task {"instruction", "instances"}',
    "self-instruct": 'a Self-Instruct row {"instruction", "input"}',
}
"""Each row type tether tells apart, as an error names it."""

_TAKES: dict[_Want, frozenset[str]] = {
    "prompt": frozenset(_TYPES) - {"text"},
    "demonstration": frozenset({"text", "messages", "prompt-completion", "demonstration", "alpaca", "self-instruct"}),
    "preference": frozenset({"preference", "implicit preference"}),
}
"""The row types each reader takes."""

_NEEDS: dict[_Want, str] = {
    "prompt": "prompts (for rollouts and evaluation) come from rows with a prompt, and a language-modeling text has none",
    "demonstration": (
        'SFT needs demonstrations: language-modeling rows {"text"} or {"messages"}, prompt-completion rows '
        '{"prompt", "completion"} (or "response"), Alpaca or Self-Instruct rows (preference pairs train reward models and DPO)'
    ),
    "preference": (
        'reward models and DPO need preference pairs: {"prompt", "chosen", "rejected"} or, with an implicit prompt, '
        '{"chosen", "rejected"} (message lists, HH-RLHF dialogues or texts)'
    ),
}
"""What each reader needs, after "but" in the error for a row of another type."""


def row_type(data: dict[str, Any]) -> str | None:
    """The type of a row, told from its keys (a key of :data:`_TYPES`), or None for no known type."""
    if "prompt" in data:
        if "completion" in data:
            return "unpaired preference" if "label" in data else "prompt-completion"
        if "chosen" in data or "rejected" in data:
            return "preference"
        return "demonstration" if "response" in data else "prompt-only"
    if "messages" in data:
        return "messages"
    if "chosen" in data or "rejected" in data:
        return "implicit preference"
    if "instruction" in data:
        return "alpaca" if "instances" in data else "self-instruct"
    if "text" in data:
        return "text"
    return None


def _parse_row(row: _Row, want: _Want) -> list[PromptRecord] | list[Demonstration] | list[PreferencePair]:
    """Turn one row into the records ``want`` asks for (an Alpaca task may give several)."""
    kind = row_type(row.row)
    if kind is None:
        raise row.wrong_shape(want)
    if kind not in _TAKES[want]:
        if kind == "prompt-only" and want == "demonstration":  # a demonstration without its reply, most likely
            raise row.error("response", "a string (the response to imitate)", MISSING)
        raise row.wrong_type(kind, want)
    if kind in ("prompt-only", "demonstration", "preference"):
        return [_parse_native(row, want)]
    if kind in ("prompt-completion", "unpaired preference"):
        return [_parse_completion(row, want)]
    if kind == "messages":
        return [_parse_chat(row, want)]
    if kind == "text":
        return [Demonstration("", row.text("text"), row.meta(_NATIVE_KEYS | {"text"}))]
    if kind == "implicit preference":
        chosen, rejected = row.row.get("chosen"), row.row.get("rejected")
        if isinstance(chosen, list) or isinstance(rejected, list):
            pair = _parse_chat_pair(row)
        elif isinstance(chosen, str) and isinstance(rejected, str) and not any(_is_hh(text) for text in (chosen, rejected)):
            pair = _parse_text_pair(row)
        else:
            pair = _parse_hh_pair(row)
        return [_from_pair(pair, want)]
    if kind == "alpaca":
        return _parse_alpaca(row, want)
    return [_parse_self_instruct(row, want)]


def _from_pair(pair: PreferencePair, want: _Want) -> Any:
    """A pair as the record kind ``want`` asks for: itself, or its prompt."""
    if want == "preference":
        return pair
    return PromptRecord(pair.prompt, pair.meta)


def _reply(row: _Row, key: str) -> str:
    """A reply under ``key``: a string, or (conversational) a list of one assistant message."""
    value = row.row.get(key, MISSING)
    if isinstance(value, list):
        row.check_messages(value, key, last_role="assistant")
        if len(value) != 1:
            raise row.error(key, "a list of one assistant message (the reply)", value)
        return value[0]["content"]
    return row.text(key, non_empty=False)


def _parse_native(row: _Row, want: _Want) -> Any:
    """``{"prompt"[, "response"]}`` and ``{"prompt", "chosen", "rejected"}`` rows (TRL's conversational ones too)."""
    prompt = row.prompt("prompt")
    if want == "prompt":
        return PromptRecord(prompt, row.meta())
    if want == "demonstration":
        return Demonstration(prompt, row.text("response", non_empty=False), row.meta())
    return PreferencePair(prompt, _reply(row, "chosen"), _reply(row, "rejected"), row.margin(), row.meta())


def _parse_completion(row: _Row, want: _Want) -> Any:
    """TRL's ``{"prompt", "completion"}`` rows (and their prompts from ``{"prompt", "completion", "label"}`` rows)."""
    prompt = row.prompt("prompt")
    known = _NATIVE_KEYS | {"completion", "label"}
    if want == "prompt":
        return PromptRecord(prompt, row.meta(known))
    return Demonstration(prompt, _reply(row, "completion"), row.meta(known))


def _is_hh(text: str) -> bool:
    """Whether ``text`` reads as an HH-RLHF dialogue (it has a Human or Assistant turn marker)."""
    return text.startswith(("Human:", "Assistant:")) or any(marker in text for marker in _HH_MARKERS)


def _parse_text_pair(row: _Row) -> PreferencePair:
    """TRL's plain implicit-prompt rows ``{"chosen": text, "rejected": text}``: the common beginning is the prompt.

    As TRL's ``extract_prompt``: the texts part at their first different character, and a
    space just before it goes with the responses ("The sky is" + " blue." / " green.").
    """
    chosen, rejected = row.text("chosen"), row.text("rejected")
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    if cut and chosen[cut - 1] == " ":
        cut -= 1
    if not chosen[:cut].strip():
        raise row.error(
            "rejected",
            "a text that begins as 'chosen' does (the shared beginning is the prompt), or an explicit \"prompt\"",
            _Said("texts with nothing in common at the start"),
        )
    return PreferencePair(chosen[:cut], chosen[cut:], rejected[cut:], row.margin(), row.meta())


def _parse_chat(row: _Row, want: _Want) -> Any:
    """``{"messages": [...]}`` rows."""
    if want == "preference":
        raise row.wrong_shape(want)
    messages = row.row["messages"]
    row.check_messages(messages, "messages", last_role=None)
    if want == "demonstration" or messages[-1]["role"] == "assistant":
        row.check_messages(messages, "messages", last_role="assistant")
        prompt = [dict(message) for message in messages[:-1]]
        if not prompt:
            raise row.error("messages", "a user message before the final assistant message", messages)
        row.check_messages(prompt, "messages", last_role="user")
        if want == "demonstration":
            return Demonstration(prompt, messages[-1]["content"], row.meta())
        return PromptRecord(prompt, row.meta())
    row.check_messages(messages, "messages", last_role="user")
    return PromptRecord([dict(message) for message in messages], row.meta())


def _parse_chat_pair(row: _Row) -> PreferencePair:
    """``{"chosen": [messages], "rejected": [messages]}`` rows."""
    data = row.row
    for key in ("chosen", "rejected"):
        row.check_messages(data.get(key, MISSING), key, last_role="assistant")
    chosen, rejected = data["chosen"], data["rejected"]
    prompt = [dict(message) for message in chosen[:-1]]
    if not prompt:
        raise row.error("chosen", "a user message before the final assistant message", chosen)
    row.check_messages(prompt, "chosen", last_role="user")
    if len(rejected) != len(chosen):
        raise row.error(
            "rejected",
            f"the same {len(chosen) - 1} messages as 'chosen' followed by one assistant message",
            rejected,
        )
    for index, (ours, theirs) in enumerate(zip(chosen[:-1], rejected[:-1])):
        if (ours["role"], ours["content"]) != (theirs["role"], theirs["content"]):
            raise row.error(
                f"rejected[{index}]",
                f"the same message as chosen[{index}] (the two share all but the final assistant message)",
                _Said("a different message"),
            )
    return PreferencePair(prompt, chosen[-1]["content"], rejected[-1]["content"], row.margin(), row.meta())


def _hh_turns(row: _Row, key: str) -> list[tuple[str, str]]:
    """Split an HH-RLHF dialogue string into ``(role, raw_text)`` turns."""
    text = row.row.get(key, MISSING)
    expected = 'a dialogue string "\\n\\nHuman: ...\\n\\nAssistant: ..." or a list of messages'
    if not isinstance(text, str):
        raise row.error(key, expected, text)
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    turns: list[tuple[str, str]] = []
    position = 0
    lead = ""
    while True:
        found = [(text.find(marker, position), marker) for marker in _HH_MARKERS]
        found = [(index, marker) for index, marker in found if index >= 0]
        end = min(found)[0] if found else len(text)
        if turns:
            turns[-1] = (turns[-1][0], text[position:end])
        else:
            lead = text[position:end]
        if not found:
            break
        index, marker = min(found)
        turns.append((_HH_MARKERS[marker], ""))
        position = index + len(marker)
    if lead.strip() or not turns:
        raise row.error(key, expected + ' starting with "\\n\\nHuman:"', text)
    if not any(role == "assistant" for role, _ in turns):
        raise row.error(key, expected + ' with an "\\n\\nAssistant:" turn', text)
    return turns


def _parse_hh_pair(row: _Row) -> PreferencePair:
    """HH-RLHF rows: two dialogue strings that share all but their last Assistant turn.

    The prompt is the turns the two dialogues share, up to the last Assistant
    turn where they part; each response is the rest of its dialogue. For a
    regular row that is the final Assistant turn. A few rows of the public
    data part earlier (an Assistant turn written twice in a row, or a
    "Human:" missing its blank line); their responses then keep the raw text
    that follows, markers and all, as TRL's hh-rlhf script does.
    """
    chosen = _hh_turns(row, "chosen")
    rejected = _hh_turns(row, "rejected")
    shared = 0
    while (
        shared < min(len(chosen), len(rejected))
        and chosen[shared][0] == rejected[shared][0]
        and chosen[shared][1].strip() == rejected[shared][1].strip()
    ):
        shared += 1
    start = min(shared, len(chosen) - 1, len(rejected) - 1)
    while start > 0 and not (chosen[start][0] == rejected[start][0] == "assistant" and chosen[start - 1][0] == "user"):
        start -= 1
    if start == 0:
        raise row.error(
            "rejected",
            "the same dialogue as 'chosen' up to a final \"\\n\\nAssistant:\" turn after a Human turn",
            _Said("dialogues that part before any Assistant turn"),
        )
    prompt = [{"role": role, "content": content.strip()} for role, content in chosen[:start]]
    row.check_messages(prompt, "chosen", last_role="user")

    def rest(turns: list[tuple[str, str]]) -> str:
        markers = {"user": "\n\nHuman:", "assistant": "\n\nAssistant:"}
        tail = turns[start][1] + "".join(markers[role] + content for role, content in turns[start + 1 :])
        return tail.strip()

    return PreferencePair(prompt, rest(chosen), rest(rejected), row.margin(), row.meta())


def _instruction_prompt(instruction: str, input_text: str) -> str:
    """Alpaca / Self-Instruct prompt text: the instruction, then the input if any."""
    if input_text.strip():
        return f"{instruction}\n\n{input_text}"
    return instruction


def _parse_alpaca(row: _Row, want: _Want) -> list[Any]:
    """Alpaca seed tasks: ``{"instruction", "instances": [{"input", "output"}]}``."""
    if want == "preference":
        raise row.wrong_shape(want)
    instruction = row.text("instruction")
    instances = row.row["instances"]
    if not isinstance(instances, list) or not instances:
        raise row.error("instances", 'a non-empty list of {"input", "output"} objects', instances)
    meta = {key: row.row[key] for key in ("id", "name") if key in row.row}
    records: list[Any] = []
    for index, instance in enumerate(instances):
        where = f"instances[{index}]"
        if not isinstance(instance, dict):
            raise row.error(where, 'an object {"input", "output"}', instance)
        input_text = instance.get("input", "")
        if not isinstance(input_text, str):
            raise row.error(f"{where}.input", "a string", input_text)
        prompt = _instruction_prompt(instruction, input_text)
        if want == "prompt":
            records.append(PromptRecord(prompt, dict(meta)))
            continue
        output = instance.get("output", MISSING)
        if not isinstance(output, str):
            raise row.error(f"{where}.output", "a string", output)
        records.append(Demonstration(prompt, output, dict(meta)))
    return records


def _parse_self_instruct(row: _Row, want: _Want) -> Any:
    """Self-Instruct evaluation rows: ``{"instruction", "input", "reference_output"}``."""
    if want == "preference":
        raise row.wrong_shape(want)
    known = {"instruction", "input", "reference_output", "output"}
    prompt = _instruction_prompt(row.text("instruction"), row.text("input", required=False, non_empty=False))
    if want == "prompt":
        return PromptRecord(prompt, row.meta(known))
    key = "reference_output" if "reference_output" in row.row or "output" not in row.row else "output"
    return Demonstration(prompt, row.text(key, non_empty=False), row.meta(known))


# --------------------------------------------------------------------------
# Public readers


def _check_pair(name: str, line: int, pair: PreferencePair) -> None:
    """A pair a reward model can learn from: two non-empty, different responses."""
    for field_name in ("chosen", "rejected"):
        if not getattr(pair, field_name).strip():
            raise DataError(
                name, line, field_name, "a non-empty response", getattr(pair, field_name), reason=f"with an empty '{field_name}'"
            )
    if pair.chosen.strip() == pair.rejected.strip():
        raise DataError(
            name, line, "rejected", "a response different from 'chosen'", pair.rejected, reason="with the same 'chosen' and 'rejected'"
        )


def _renamed(name: str, line: int, row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """``row`` with each column ``columns[field]`` renamed to ``field`` (``{"prompt": "question"}``: question -> prompt)."""
    for field_name, column in columns.items():
        if column not in row:
            raise DataError(name, line, column, f"the column given as dataset.columns.{field_name}", MISSING)
    values = {field_name: row[column] for field_name, column in columns.items()}
    return {**{key: value for key, value in row.items() if key not in columns.values()}, **values}


def _read(
    path: Source,
    want: _Want,
    limit: int | None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
    split: str | None = None,
    subset: str | None = None,
    columns: dict[str, str] | None = None,
) -> list[Any]:
    """Read up to ``limit`` records of kind ``want`` from ``path`` (any :data:`Source`).

    With ``skipped`` (a list), a malformed row is appended to it as its DataError and
    skipped instead of stopping the read (``skip_bad_rows``); a missing or unreadable
    file is always an error. ``report`` (when given) is filled in with the rows read,
    the records kept and the rows dropped by reason. Unless ``allow_empty``, a file
    that gives no record at all is an error that says what was read and dropped
    (``limit=0`` asks for nothing and gets nothing).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a whole number >= 0, got {limit!r}.")
    name = source_name(path)
    if report is None:
        report = ReadReport()
    report.path, report.kind = name, want
    records: list[Any] = []
    rows = iter_rows(path, report, skipped, split=split, subset=subset)
    if limit == 0:
        next(rows, None)  # still report a missing or unreadable file
        return records
    for line, data in rows:
        try:
            if columns:
                data = _renamed(name, line, data, columns)
            parsed = _parse_row(_Row(name, line, data), want)
            if want == "preference":
                for pair in parsed:
                    _check_pair(name, line, pair)
        except DataError as error:
            if skipped is None:
                raise
            skipped.append(error)
            report.drop(error.reason, line)
            continue
        for record in parsed:
            records.append(record)
            report.records += 1
            if limit is not None and len(records) >= limit:
                return records
    if not records and not allow_empty:
        raise report.nothing_left()
    return records


def read_prompts(
    path: Source,
    limit: int | None = None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
    *,
    split: str | None = None,
    subset: str | None = None,
    columns: dict[str, str] | None = None,
) -> list[PromptRecord]:
    """Read prompts from any supported file (see the module docstring).

    Every row with a prompt gives it (prompt-only, prompt-completion, preference,
    unpaired preference, conversations); an Alpaca seed task gives one prompt per
    instance. A language-modeling ``text`` row has no prompt and is refused.

    Args:
        path: a file, dataset folder or hub id, or rows in memory (a ``datasets.Dataset``, a list of dicts): see the module docstring.
        limit: stop after this many records (None: read all).
        skipped: when given, malformed rows are appended here as DataErrors and skipped.
        report: when given, filled in with the rows read, kept and dropped (see :class:`ReadReport`).
        allow_empty: return ``[]`` for a file with no usable row instead of raising.
        split: the split of a dataset folder or hub dataset (None: 'train', or the only one).
        subset: the subset (configuration) of a hub dataset (None: its default).
        columns: your column for each field read, e.g. ``{"prompt": "question"}`` (None: the fields' own names).

    Raises:
        DataError: the file is missing, a row is malformed (and ``skipped`` is None),
            or no row gives a record (and not ``allow_empty``).
    """
    return _read(path, "prompt", limit, skipped, report, allow_empty, split, subset, columns)


def read_demonstrations(
    path: Source,
    limit: int | None = None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
    *,
    split: str | None = None,
    subset: str | None = None,
    columns: dict[str, str] | None = None,
) -> list[Demonstration]:
    """Read demonstrations (prompt and response) for SFT from any supported source.

    Language-modeling rows (a ``text`` row is a response to no prompt, ``""``), prompt-completion,
    Alpaca and Self-Instruct rows; an Alpaca seed task gives one demonstration per instance.
    A preference row is refused (train a reward model or DPO on it, or give its chosen
    replies as prompt-completion rows).

    Args:
        path: a file, dataset folder or hub id, or rows in memory (a ``datasets.Dataset``, a list of dicts): see the module docstring.
        limit: stop after this many records (None: read all).
        skipped: when given, malformed rows are appended here as DataErrors and skipped.
        report: when given, filled in with the rows read, kept and dropped (see :class:`ReadReport`).
        allow_empty: return ``[]`` for a file with no usable row instead of raising.
        split: the split of a dataset folder or hub dataset (None: 'train', or the only one).
        subset: the subset (configuration) of a hub dataset (None: its default).
        columns: your column for each field read, e.g. ``{"prompt": "question"}`` (None: the fields' own names).

    Raises:
        DataError: the file is missing, a row is malformed (and ``skipped`` is None),
            or no row gives a record (and not ``allow_empty``).
    """
    return _read(path, "demonstration", limit, skipped, report, allow_empty, split, subset, columns)


def read_preferences(
    path: Source,
    limit: int | None = None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
    *,
    split: str | None = None,
    subset: str | None = None,
    columns: dict[str, str] | None = None,
) -> list[PreferencePair]:
    """Read preference pairs: TRL's preference rows with an explicit or implicit prompt (texts,
    messages or HH-RLHF dialogues).

    A pair must hold two non-empty, different responses: training on anything else is
    training on garbage.

    Args:
        path: a file, dataset folder or hub id, or rows in memory (a ``datasets.Dataset``, a list of dicts): see the module docstring.
        limit: stop after this many records (None: read all).
        skipped: when given, malformed rows are appended here as DataErrors and skipped.
        report: when given, filled in with the rows read, kept and dropped (see :class:`ReadReport`).
        allow_empty: return ``[]`` for a file with no usable row instead of raising.
        split: the split of a dataset folder or hub dataset (None: 'train', or the only one).
        subset: the subset (configuration) of a hub dataset (None: its default).
        columns: your column for each field read, e.g. ``{"prompt": "question"}`` (None: the fields' own names).

    Raises:
        DataError: the file is missing, a row is malformed (and ``skipped`` is None),
            or no row gives a pair (and not ``allow_empty``).
    """
    return _read(path, "preference", limit, skipped, report, allow_empty, split, subset, columns)


# --------------------------------------------------------------------------
# Writing and splitting


def write_jsonl(path: PathLike, rows: Iterable[Any]) -> int:
    """Write rows as JSON Lines, atomically; gzip when ``path`` ends in ``.gz``.

    Rows are dicts or records (converted with ``to_dict()``). The data go to a
    temporary file in the same folder, which is flushed, synced to disk and
    then renamed over ``path``: readers see the old file or the whole new one,
    never a part. Parent folders are created. If anything fails (including the
    ``rows`` iterator raising midway) the temporary file is removed and
    ``path`` is left untouched.

    Returns:
        The number of rows written.
    """
    target = Path(os.fspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open applies the umask, so the new file gets the usual permissions.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    count = 0
    try:
        with os.fdopen(descriptor, "wb") as raw:
            sink: Any = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if target.name.endswith(".gz") else raw
            try:
                for row in rows:
                    if hasattr(row, "to_dict"):
                        row = row.to_dict()
                    if not isinstance(row, dict):
                        raise TypeError(
                            f"write_jsonl: row {count + 1} is a {type(row).__name__}; expected a dict or a record with to_dict()."
                        )
                    sink.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
                    count += 1
            finally:
                if sink is not raw:
                    sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)
    return count


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the platform allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def split(records: Sequence[T], eval_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split records into ``(train, eval)`` by a seeded shuffle.

    The same records, fraction and seed always give the same split. Both parts
    come out in shuffled order. When ``eval_fraction > 0`` and there are at
    least two records, eval gets at least one and train keeps at least one.

    Args:
        records: the records to split.
        eval_fraction: share of records for evaluation, in ``[0, 1)``.
        seed: seed of the shuffle.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be at least 0 and below 1, got {eval_fraction!r}.")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    count = round(len(records) * eval_fraction)
    if eval_fraction > 0 and len(records) >= 2:
        count = min(max(count, 1), len(records) - 1)
    count = min(count, len(records))
    evaluation = [records[index] for index in order[:count]]
    train = [records[index] for index in order[count:]]
    return train, evaluation
