"""Readers, writers and split: every row format, malformed data, atomic writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tether.data import (
    DataError,
    Demonstration,
    PreferencePair,
    PromptRecord,
    iter_jsonl,
    prompt_text,
    read_demonstrations,
    read_preferences,
    read_prompts,
    split,
    write_jsonl,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
]
HH_CHOSEN = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris. "
HH_REJECTED = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: No idea."


def write_lines(path: Path, rows: list[Any]) -> Path:
    """Write each row as one JSON line (strings are written verbatim)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# --------------------------------------------------------------------------
# Records


def test_to_dict_native_forms() -> None:
    assert PromptRecord("hi").to_dict() == {"prompt": "hi"}
    assert PromptRecord("hi", {"id": 1}).to_dict() == {"prompt": "hi", "meta": {"id": 1}}
    assert Demonstration(CHAT, "Paris.").to_dict() == {"prompt": CHAT, "response": "Paris."}
    assert PreferencePair("q", "a", "b").to_dict() == {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert PreferencePair("q", "a", "b", 1.5, {"s": 1}).to_dict() == {
        "prompt": "q",
        "chosen": "a",
        "rejected": "b",
        "margin": 1.5,
        "meta": {"s": 1},
    }
    record = PromptRecord(CHAT)
    record.to_dict()["prompt"][0]["content"] = "changed"
    assert record.prompt[0]["content"] == "Be brief."


def test_prompt_text() -> None:
    assert prompt_text("plain") == "plain"
    assert prompt_text(CHAT) == "Be brief.\n\nCapital of France?"


# --------------------------------------------------------------------------
# Native and chat formats


def test_native_rows(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "native.jsonl",
        [
            {"prompt": "Say hi", "response": "Hi!", "meta": {"source": "a"}, "lang": "en"},
            {"prompt": CHAT, "response": "Paris."},
        ],
    )
    demos = read_demonstrations(path)
    assert demos == [
        Demonstration("Say hi", "Hi!", {"source": "a", "lang": "en"}),
        Demonstration(CHAT, "Paris."),
    ]
    assert read_prompts(path) == [PromptRecord("Say hi", {"source": "a", "lang": "en"}), PromptRecord(CHAT)]


def test_native_pairs_and_margin(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "q1", "chosen": "good", "rejected": "bad", "margin": 2},
            {"prompt": CHAT, "chosen": "Paris.", "rejected": "Lyon."},
        ],
    )
    pairs = read_preferences(path)
    assert pairs == [PreferencePair("q1", "good", "bad", 2.0), PreferencePair(CHAT, "Paris.", "Lyon.")]
    assert isinstance(pairs[0].margin, float)
    # A preference file is not SFT data: it is refused, saying what it is.
    with pytest.raises(DataError, match=r"prefs\.jsonl:1: found a preference row .*explicit prompt\), but SFT needs demonstrations"):
        read_demonstrations(path)


def test_prompt_only_rows(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "prompts.jsonl", [{"prompt": "one"}, "", "   ", {"prompt": "two", "meta": {"k": 1}}])
    assert read_prompts(path) == [PromptRecord("one"), PromptRecord("two", {"k": 1})]
    assert read_prompts(path, limit=1) == [PromptRecord("one")]
    assert read_prompts(path, limit=0) == []


def test_chat_messages_rows(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "chat.jsonl", [{"messages": CHAT + [{"role": "assistant", "content": "Paris."}]}])
    assert read_demonstrations(path) == [Demonstration(CHAT, "Paris.")]
    assert read_prompts(path) == [PromptRecord(CHAT)]
    open_ended = write_lines(tmp_path / "open.jsonl", [{"messages": CHAT}])
    assert read_prompts(open_ended) == [PromptRecord(CHAT)]


def test_chat_pair_rows(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "chatpairs.jsonl",
        [
            {
                "chosen": CHAT + [{"role": "assistant", "content": "Paris."}],
                "rejected": CHAT + [{"role": "assistant", "content": "Rome."}],
            }
        ],
    )
    assert read_preferences(path) == [PreferencePair(CHAT, "Paris.", "Rome.")]
    assert read_prompts(path) == [PromptRecord(CHAT)]


def test_chat_pair_must_share_prompt(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "chatpairs.jsonl",
        [
            {
                "chosen": CHAT + [{"role": "assistant", "content": "Paris."}],
                "rejected": [CHAT[0], {"role": "user", "content": "Other?"}, {"role": "assistant", "content": "Rome."}],
            }
        ],
    )
    with pytest.raises(DataError, match=r"chatpairs\.jsonl:1: field 'rejected\[1\]'"):
        read_preferences(path)


# --------------------------------------------------------------------------
# HH-RLHF, Alpaca and Self-Instruct formats


def test_hh_rows(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    (pair,) = read_preferences(path)
    assert pair.prompt == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert (pair.chosen, pair.rejected) == ("Paris.", "No idea.")
    assert read_prompts(path) == [PromptRecord(pair.prompt)]
    with pytest.raises(DataError, match=r"hh\.jsonl:1: found a preference row .*implicit prompt\), but SFT needs demonstrations"):
        read_demonstrations(path)


def test_hh_rows_that_part_early(tmp_path: Path) -> None:
    """Like row 1003 of the real data: the chosen dialogue has two Assistant turns in a row."""
    prefix = "\n\nHuman: Find me a serial."
    chosen = prefix + "\n\nAssistant: Here is the key:\n\nAssistant: Logging in now."
    rejected = prefix + "\n\nAssistant: You mean a password?"
    path = write_lines(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}])
    (pair,) = read_preferences(path)
    assert pair.prompt == [{"role": "user", "content": "Find me a serial."}]
    assert pair.chosen == "Here is the key:\n\nAssistant: Logging in now."
    assert pair.rejected == "You mean a password?"


def test_empty_or_identical_responses_are_errors_or_skipped(tmp_path: Path) -> None:
    """HH-RLHF has a few pairs whose preferred reply is empty: no reward model should train on them silently."""
    path = write_lines(
        tmp_path / "hh.jsonl",
        [
            {"chosen": "\n\nHuman: Hi.\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi.\n\nAssistant: Go away."},
            {"chosen": "\n\nHuman: Swear.\n\nAssistant: ", "rejected": "\n\nHuman: Swear.\n\nAssistant: Ok"},
            {"prompt": "q", "chosen": "same", "rejected": "same "},
        ],
    )
    with pytest.raises(DataError, match=r"hh\.jsonl:2: field 'chosen': expected a non-empty response"):
        read_preferences(path)
    skipped: list[DataError] = []
    pairs = read_preferences(path, skipped=skipped)
    assert [p.chosen for p in pairs] == ["Hello!"]
    assert [e.line for e in skipped] == [2, 3] and "different from 'chosen'" in str(skipped[1])


def test_alpaca_seed_rows(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "seed.jsonl",
        [
            {
                "id": "t0",
                "name": "antonyms",
                "instruction": "Give antonyms.",
                "is_classification": False,
                "instances": [{"input": "hot", "output": "cold"}, {"input": "", "output": "No word given."}],
            },
        ],
    )
    meta = {"id": "t0", "name": "antonyms"}
    assert read_demonstrations(path) == [
        Demonstration("Give antonyms.\n\nhot", "cold", meta),
        Demonstration("Give antonyms.", "No word given.", meta),
    ]
    assert read_prompts(path) == [PromptRecord("Give antonyms.\n\nhot", meta), PromptRecord("Give antonyms.", meta)]
    assert len(read_demonstrations(path, limit=1)) == 1


def test_self_instruct_rows(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "eval.jsonl",
        [
            {"instruction": "Fix the grammar.", "input": "me go", "reference_output": "I go."},
            {"instruction": "Tell a joke.", "input": "", "reference_output": "Knock knock."},
        ],
    )
    assert read_prompts(path) == [PromptRecord("Fix the grammar.\n\nme go"), PromptRecord("Tell a joke.")]
    assert [demo.response for demo in read_demonstrations(path)] == ["I go.", "Knock knock."]


def test_json_list_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]))
    assert list(iter_jsonl(path)) == [(1, {"prompt": "a"}), (2, {"prompt": "b"})]
    assert read_prompts(path) == [PromptRecord("a"), PromptRecord("b")]
    path.write_text(json.dumps([{"prompt": "a"}, 7]))
    with pytest.raises(DataError, match=r"prompts\.json:2: expected a JSON object"):
        read_prompts(path)


def test_gzipped_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert list(iter_jsonl(path)) == [(1, {"prompt": "a"}), (3, {"prompt": "b"})]


# --------------------------------------------------------------------------
# Malformed data


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "prefs.jsonl", [{"prompt": "a"}, {"prompt": "b"}, '{"prompt": "c",'])
    with pytest.raises(DataError) as caught:
        read_prompts(path)
    message = str(caught.value)
    assert "prefs.jsonl:3" in message and "invalid JSON" in message
    assert caught.value.line == 3


def test_non_object_row(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "rows.jsonl", ['["a", "list"]'])
    with pytest.raises(DataError, match=r"rows\.jsonl:1: expected a JSON object \{\.\.\.\}, got a list of 2 items"):
        list(iter_jsonl(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file; expected a \.jsonl") as caught:
        read_prompts(tmp_path / "nope.jsonl")
    assert caught.value.line is None
    write_lines(tmp_path / "prompts.jsonl", ['{"prompt": "hi"}'])  # a file beside it with a name one letter away
    with pytest.raises(DataError, match=r"prompt\.jsonl: no such file \(did you mean .*prompts\.jsonl\?\)"):
        read_prompts(tmp_path / "prompt.jsonl")
    with pytest.raises(DataError):
        read_prompts(tmp_path / "nope.jsonl", limit=0)


def test_damaged_gzip(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gzip"):
        read_prompts(path)


@pytest.mark.parametrize(
    ("row", "reader", "pattern"),
    [
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, read_preferences, r":1: field 'chosen': expected a string, got 3$"),
        ({"prompt": "q", "chosen": "a"}, read_preferences, r"field 'rejected': expected a string, got nothing \(the field is missing\)"),
        ({"prompt": "", "response": "a"}, read_demonstrations, r"field 'prompt': expected a non-empty string .*got an empty string"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, read_preferences, r"field 'margin': expected a finite number"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": True}, read_preferences, r"field 'margin'"),
        ({"prompt": "q", "response": "a", "meta": [1]}, read_demonstrations, r"field 'meta': expected an object"),
        ({"prompt": "q"}, read_demonstrations, r"field 'response': expected a string"),
        (
            {"prompt": "q", "response": "a"},
            read_preferences,
            r":1: found a demonstration row \{\"prompt\", \"response\"\} .*, but reward models and DPO need preference pairs",
        ),
        ({"text": "hello"}, read_prompts, r":1: found a language-modeling row \{\"text\"\} .*a language-modeling text has none"),
        ({"hello": "world"}, read_prompts, r":1: expected a prompt row: .*\{\"prompt\".*got an object with keys 'hello'"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
            read_demonstrations,
            r"field 'messages\[1\]\.role': expected one of 'system', 'user', 'assistant', got \"bot\"",
        ),
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
            read_demonstrations,
            r"field 'messages\[0\]\.content': expected a string, got 5",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, read_demonstrations, r"field 'messages\[0\]\.role': expected 'assistant'"),
        (
            {"messages": ["hi", {"role": "assistant", "content": "x"}]},
            read_demonstrations,
            r"field 'messages\[0\]': expected a message object",
        ),
        (
            {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            read_prompts,
            r"field 'prompt\[1\]\.role': expected 'user'",
        ),
        (
            {"chosen": "no markers here", "rejected": "\n\nHuman: a\n\nAssistant: b"},
            read_preferences,
            r"field 'chosen': expected a dialogue string",
        ),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": None}, read_preferences, r"field 'rejected': .*got null"),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
            read_preferences,
            r"field 'rejected': expected the same dialogue as 'chosen'",
        ),
        (
            {"instruction": "Do it.", "instances": [{"input": 1, "output": "x"}]},
            read_demonstrations,
            r"field 'instances\[0\]\.input': expected a string, got 1",
        ),
        ({"instruction": "Do it.", "instances": []}, read_prompts, r"field 'instances': expected a non-empty list"),
        ({"instruction": "", "input": "x", "reference_output": "y"}, read_prompts, r"field 'instruction': expected a non-empty string"),
    ],
)
def test_malformed_rows(tmp_path: Path, row: dict[str, Any], reader: Any, pattern: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError, match=pattern) as caught:
        reader(path)
    assert str(caught.value).startswith(str(path) + ":1: ")


def test_error_is_a_value_error_with_fields(tmp_path: Path) -> None:
    error = DataError("data/prefs.jsonl", 12, "chosen", "a non-empty string", 3)
    assert str(error) == "data/prefs.jsonl:12: field 'chosen': expected a non-empty string, got 3"
    assert isinstance(error, ValueError)
    assert (error.path, error.line, error.field) == ("data/prefs.jsonl", 12, "chosen")
    assert str(DataError("d.jsonl", None, None, "a file")) == "d.jsonl: expected a file"


# --------------------------------------------------------------------------
# Writing


def test_write_round_trip(tmp_path: Path) -> None:
    pairs = [PreferencePair("q", "a", "b", 0.5, {"i": 0}), PreferencePair(CHAT, "Paris.", "Rome.")]
    for name in ("out/prefs.jsonl", "out/prefs.jsonl.gz"):
        path = tmp_path / name
        assert write_jsonl(path, pairs) == 2
        assert read_preferences(path) == pairs
    with gzip.open(tmp_path / "out/prefs.jsonl.gz", "rt") as handle:
        assert json.loads(handle.readline())["margin"] == 0.5
    demos = [Demonstration("é ☃", "ok"), {"prompt": "raw dict", "response": "x"}]
    write_jsonl(tmp_path / "d.jsonl", demos)
    assert read_demonstrations(tmp_path / "d.jsonl") == [Demonstration("é ☃", "ok"), Demonstration("raw dict", "x")]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [PromptRecord("old")])
    before = path.read_bytes()

    def rows() -> Any:
        yield PromptRecord("new 1")
        yield PromptRecord("new 2")
        raise RuntimeError("generator failed midway")

    with pytest.raises(RuntimeError, match="midway"):
        write_jsonl(path, rows())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]

    with pytest.raises(TypeError, match="row 2"):
        write_jsonl(tmp_path / "other.jsonl", [{"prompt": "a"}, "not a row"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]


# --------------------------------------------------------------------------
# Splitting


def test_split_is_deterministic() -> None:
    records = list(range(100))
    train, evaluation = split(records, 0.1, seed=3)
    assert len(evaluation) == 10 and len(train) == 90
    assert sorted(train + evaluation) == records
    assert split(records, 0.1, seed=3) == (train, evaluation)
    assert split(records, 0.1, seed=4) != (train, evaluation)


def test_split_edges() -> None:
    assert split([1, 2], 0.01, seed=0)[1] != []
    train, evaluation = split([1, 2, 3], 0.99, seed=0)
    assert len(train) == 1 and len(evaluation) == 2
    assert split([1], 0.5, seed=0) == ([1], [])
    assert split([1, 2, 3], 0.0, seed=0)[1] == []
    with pytest.raises(ValueError):
        split([1, 2], 1.0, seed=0)
