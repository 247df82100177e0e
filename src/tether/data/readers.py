"""Read and write record files: JSON Lines (optionally gzipped) or a JSON list.

Every reader detects each row's format on its own, so one file may mix them:

* **native** -- ``{"prompt": text | messages, "response": str}``,
  ``{"prompt", "chosen", "rejected"[, "margin": number]}`` or ``{"prompt"}``;
  any other keys (and a ``"meta"`` object) are kept in the record's ``meta``.
* **chat** -- ``{"messages": [...]}`` (the final assistant message is the
  response, the messages before it the prompt) and
  ``{"chosen": [messages], "rejected": [messages]}`` (the two lists share all
  but their final assistant message).
* **HH-RLHF** -- ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``:
  the turns before the final Assistant turn become the prompt messages, the
  final Assistant turn of each dialogue its response.
* **Alpaca seed tasks** -- ``{"instruction", "instances": [{"input", "output"}]}``:
  one record per instance; the prompt is the instruction, followed by a blank
  line and the input when the input is not empty.
* **Self-Instruct evaluation** -- ``{"instruction", "input", "reference_output"}``
  (``"output"`` is accepted too): the prompt as for Alpaca, the response is
  the reference output.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from tether.config import did_you_mean
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
    "iter_jsonl",
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
        raise DataError(name, None, None, text=f"no such file{did_you_mean(file)}; expected a .jsonl, .jsonl.gz or .json data file")
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
# Interpreting rows

_SHAPES: dict[_Want, str] = {
    "prompt": (
        'a prompt row: {"prompt": text or messages}, {"messages": [...]}, a preference pair '
        '{"chosen", "rejected"} (message lists or HH-RLHF dialogues), an Alpaca seed task '
        '{"instruction", "instances"} or a Self-Instruct row {"instruction", "input"}'
    ),
    "demonstration": (
        'a demonstration row: {"prompt", "response"}, {"messages": [..., assistant message]}, '
        'a preference pair {"chosen", "rejected"} (chosen is taken as the response), an Alpaca '
        'seed task {"instruction", "instances": [{"input", "output"}]} or a Self-Instruct row '
        '{"instruction", "input", "reference_output"}'
    ),
    "preference": (
        'a preference row: {"prompt", "chosen", "rejected"[, "margin"]}, '
        '{"chosen": [messages], "rejected": [messages]} or HH-RLHF dialogues '
        '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}'
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


def _parse_row(row: _Row, want: _Want) -> list[PromptRecord] | list[Demonstration] | list[PreferencePair]:
    """Turn one row into the records ``want`` asks for (an Alpaca task may give several)."""
    data = row.row
    if "prompt" in data:
        return [_parse_native(row, want)]
    if "messages" in data:
        return [_parse_chat(row, want)]
    if "chosen" in data or "rejected" in data:
        if isinstance(data.get("chosen"), list) or isinstance(data.get("rejected"), list):
            pair = _parse_chat_pair(row)
        else:
            pair = _parse_hh_pair(row)
        return [_from_pair(pair, want)]
    if "instruction" in data:
        if "instances" in data:
            return _parse_alpaca(row, want)
        return [_parse_self_instruct(row, want)]
    raise row.wrong_shape(want)


def _from_pair(pair: PreferencePair, want: _Want) -> Any:
    """A pair as the record kind ``want`` asks for (chosen is the demonstration)."""
    if want == "preference":
        return pair
    if want == "demonstration":
        return Demonstration(pair.prompt, pair.chosen, pair.meta)
    return PromptRecord(pair.prompt, pair.meta)


def _parse_native(row: _Row, want: _Want) -> Any:
    """``{"prompt", ...}`` rows in tether's own format."""
    prompt = row.prompt("prompt")
    data = row.row
    if want == "prompt":
        return PromptRecord(prompt, row.meta())
    if want == "demonstration":
        if "response" in data:
            return Demonstration(prompt, row.text("response", non_empty=False), row.meta())
        if "chosen" in data:
            return Demonstration(prompt, row.text("chosen", non_empty=False), row.meta())
        raise row.error("response", "a string (the response to imitate)", MISSING)
    if "chosen" not in data and "rejected" not in data:
        raise row.wrong_shape(want)
    return PreferencePair(
        prompt,
        row.text("chosen", non_empty=False),
        row.text("rejected", non_empty=False),
        row.margin(),
        row.meta(),
    )


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


def _read(
    path: PathLike,
    want: _Want,
    limit: int | None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
) -> list[Any]:
    """Read up to ``limit`` records of kind ``want`` from ``path``.

    With ``skipped`` (a list), a malformed row is appended to it as its DataError and
    skipped instead of stopping the read (``skip_bad_rows``); a missing or unreadable
    file is always an error. ``report`` (when given) is filled in with the rows read,
    the records kept and the rows dropped by reason. Unless ``allow_empty``, a file
    that gives no record at all is an error that says what was read and dropped
    (``limit=0`` asks for nothing and gets nothing).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a whole number >= 0, got {limit!r}.")
    name = os.fspath(path)
    if report is None:
        report = ReadReport()
    report.path, report.kind = name, want
    records: list[Any] = []
    rows = iter_jsonl(name, report, skipped)
    if limit == 0:
        next(rows, None)  # still report a missing or unreadable file
        return records
    for line, data in rows:
        try:
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
    path: PathLike,
    limit: int | None = None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
) -> list[PromptRecord]:
    """Read prompts from any supported file (see the module docstring).

    Demonstration and preference files give their prompts; an Alpaca seed
    task gives one prompt per instance.

    Args:
        path: a ``.jsonl``, ``.jsonl.gz`` or ``.json`` file.
        limit: stop after this many records (None: read all).
        skipped: when given, malformed rows are appended here as DataErrors and skipped.
        report: when given, filled in with the rows read, kept and dropped (see :class:`ReadReport`).
        allow_empty: return ``[]`` for a file with no usable row instead of raising.

    Raises:
        DataError: the file is missing, a row is malformed (and ``skipped`` is None),
            or no row gives a record (and not ``allow_empty``).
    """
    return _read(path, "prompt", limit, skipped, report, allow_empty)


def read_demonstrations(
    path: PathLike,
    limit: int | None = None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
) -> list[Demonstration]:
    """Read demonstrations (prompt and response) from any supported file.

    Preference files give their prompt with the chosen reply as the response;
    an Alpaca seed task gives one demonstration per instance.

    Args:
        path: a ``.jsonl``, ``.jsonl.gz`` or ``.json`` file.
        limit: stop after this many records (None: read all).
        skipped: when given, malformed rows are appended here as DataErrors and skipped.
        report: when given, filled in with the rows read, kept and dropped (see :class:`ReadReport`).
        allow_empty: return ``[]`` for a file with no usable row instead of raising.

    Raises:
        DataError: the file is missing, a row is malformed (and ``skipped`` is None),
            or no row gives a record (and not ``allow_empty``).
    """
    return _read(path, "demonstration", limit, skipped, report, allow_empty)


def read_preferences(
    path: PathLike,
    limit: int | None = None,
    skipped: list[DataError] | None = None,
    report: ReadReport | None = None,
    allow_empty: bool = False,
) -> list[PreferencePair]:
    """Read preference pairs: native, chat-message or HH-RLHF rows.

    A pair must hold two non-empty, different responses: training on anything else is
    training on garbage.

    Args:
        path: a ``.jsonl``, ``.jsonl.gz`` or ``.json`` file.
        limit: stop after this many records (None: read all).
        skipped: when given, malformed rows are appended here as DataErrors and skipped.
        report: when given, filled in with the rows read, kept and dropped (see :class:`ReadReport`).
        allow_empty: return ``[]`` for a file with no usable row instead of raising.

    Raises:
        DataError: the file is missing, a row is malformed (and ``skipped`` is None),
            or no row gives a pair (and not ``allow_empty``).
    """
    return _read(path, "preference", limit, skipped, report, allow_empty)


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
