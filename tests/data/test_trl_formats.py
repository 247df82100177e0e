"""Every dataset format TRL documents, plain and conversational, from JSONL, parquet, a save_to_disk folder and memory.

Each row type gives the same records whatever holds it; a row of another type than a reader takes is refused with
what was found and what is needed; a hub id that is not in the local cache fails naming the id.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no network here: a hub id is read from the local cache or not at all

datasets = pytest.importorskip("datasets")

from tether.config import ConfigError, DatasetSettings, SFTConfig, load_config  # noqa: E402
from tether.data import (  # noqa: E402
    DataError,
    Demonstration,
    PreferencePair,
    encode_demonstration,
    read_demonstrations,
    read_preferences,
    read_prompts,
)

USER = [{"role": "user", "content": "What colour is the sky?"}]
SAY = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731

# TRL's types (https://huggingface.co/docs/trl/dataset_formats), plain and conversational
LM = [{"text": "The sky is blue."}]
LM_CHAT = [{"messages": USER + SAY("It is blue.")}]
PROMPT_ONLY = [{"prompt": "The sky is"}]
PROMPT_ONLY_CHAT = [{"prompt": USER}]
COMPLETION = [{"prompt": "The sky is", "completion": " blue."}]
COMPLETION_CHAT = [{"prompt": USER, "completion": SAY("It is blue.")}]
PREFERENCE = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]
PREFERENCE_CHAT = [{"prompt": USER, "chosen": SAY("It is blue."), "rejected": SAY("It is green.")}]
IMPLICIT = [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]
IMPLICIT_CHAT = [{"chosen": USER + SAY("It is blue."), "rejected": USER + SAY("It is green.")}]
UNPAIRED = [{"prompt": "The sky is", "completion": " blue.", "label": True}]
UNPAIRED_CHAT = [{"prompt": USER, "completion": SAY("It is green."), "label": False}]


def _jsonl(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _parquet(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def _saved(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


def _memory(tmp_path: Path, rows: list[dict]):
    return datasets.Dataset.from_list(rows)


HOLDERS = [_jsonl, _parquet, _saved, _memory]


@pytest.mark.parametrize("holder", HOLDERS, ids=lambda h: h.__name__.strip("_"))
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (LM, [Demonstration("", "The sky is blue.")]),
        (LM_CHAT, [Demonstration(USER, "It is blue.")]),
        (COMPLETION, [Demonstration("The sky is", " blue.")]),
        (COMPLETION_CHAT, [Demonstration(USER, "It is blue.")]),
    ],
    ids=["text", "messages", "prompt-completion", "prompt-completion-chat"],
)
def test_demonstrations(tmp_path: Path, holder, rows, expected) -> None:
    assert read_demonstrations(holder(tmp_path, rows)) == expected


@pytest.mark.parametrize("holder", HOLDERS, ids=lambda h: h.__name__.strip("_"))
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (PREFERENCE, [PreferencePair("The sky is", " blue.", " green.")]),
        (PREFERENCE_CHAT, [PreferencePair(USER, "It is blue.", "It is green.")]),
        (IMPLICIT, [PreferencePair("The sky is", " blue.", " green.")]),  # TRL's extract_prompt split
        (IMPLICIT_CHAT, [PreferencePair(USER, "It is blue.", "It is green.")]),
    ],
    ids=["explicit", "explicit-chat", "implicit", "implicit-chat"],
)
def test_preferences(tmp_path: Path, holder, rows, expected) -> None:
    assert read_preferences(holder(tmp_path, rows)) == expected


@pytest.mark.parametrize("holder", HOLDERS, ids=lambda h: h.__name__.strip("_"))
@pytest.mark.parametrize(
    ("rows", "prompt"),
    [
        (PROMPT_ONLY, "The sky is"),
        (PROMPT_ONLY_CHAT, USER),
        (COMPLETION_CHAT, USER),
        (PREFERENCE, "The sky is"),
        (IMPLICIT_CHAT, USER),
        (UNPAIRED, "The sky is"),
        (UNPAIRED_CHAT, USER),
        (LM_CHAT, USER),
    ],
)
def test_prompts_from_any_row_with_a_prompt(tmp_path: Path, holder, rows, prompt) -> None:
    assert [record.prompt for record in read_prompts(holder(tmp_path, rows))] == [prompt]


@pytest.mark.parametrize("holder", [_jsonl, _parquet, _saved], ids=["jsonl", "parquet", "save_to_disk"])
@pytest.mark.parametrize(
    ("rows", "reader", "found", "needed"),
    [
        (
            PREFERENCE,
            read_demonstrations,
            'a preference row {"prompt", "chosen", "rejected"} (TRL\'s preference type, explicit prompt)',
            "SFT needs demonstrations",
        ),
        (IMPLICIT_CHAT, read_demonstrations, "(TRL's preference type, implicit prompt)", "SFT needs demonstrations"),
        (UNPAIRED, read_demonstrations, "an unpaired preference row", "SFT needs demonstrations"),
        (COMPLETION, read_preferences, "a prompt-completion row", "reward models and DPO need preference pairs"),
        (LM_CHAT, read_preferences, "a conversational language-modeling row", "reward models and DPO need preference pairs"),
        (
            UNPAIRED,
            read_preferences,
            'an unpaired preference row {"prompt", "completion", "label"}',
            "reward models and DPO need preference pairs",
        ),
        (LM, read_prompts, 'a language-modeling row {"text"}', "prompts (for rollouts and evaluation) come from rows with a prompt"),
    ],
)
def test_a_row_of_another_type_is_refused(tmp_path: Path, holder, rows, reader, found, needed) -> None:
    source = holder(tmp_path, rows)
    with pytest.raises(DataError) as caught:
        reader(source)
    message = str(caught.value)
    assert message.startswith(f"{source}:1: found ") and found in message and f"but {needed}" in message


def test_text_rows_train_on_every_token(tiny_tokenizer) -> None:
    """A text row is the response to no prompt: every token is a target but the first (no BOS to predict it from here)."""
    example = encode_demonstration(tiny_tokenizer, Demonstration("", "The sky is blue."), 16, 32)
    text_ids = tiny_tokenizer("The sky is blue.", add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == text_ids + [tiny_tokenizer.eos_token_id]
    assert example["labels"] == example["input_ids"]  # the model shifts them: token t+1 is predicted from tokens up to t


def test_columns_rename_your_columns(tmp_path: Path) -> None:
    rows = [{"question": "Why?", "good": "Because.", "bad": "No.", "id": 7}]
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    assert read_preferences(_parquet(tmp_path, rows), columns=columns) == [PreferencePair("Why?", "Because.", "No.", meta={"id": 7})]
    assert read_demonstrations(_jsonl(tmp_path, [{"content": "Just text."}]), columns={"text": "content"}) == [
        Demonstration("", "Just text.")
    ]
    with pytest.raises(DataError, match=r"rows\.jsonl:1: field 'content': expected the column given as dataset\.columns\.text"):
        read_demonstrations(_jsonl(tmp_path, [{"body": "x"}]), columns={"text": "content"})


def test_splits_of_a_saved_dataset_dict(tmp_path: Path) -> None:
    path = tmp_path / "saved"
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(PREFERENCE), "test": datasets.Dataset.from_list(PREFERENCE_CHAT)})
    both.save_to_disk(str(path))
    assert read_preferences(both, split="test") == read_preferences(path, split="test")  # the same in memory
    assert read_preferences(path)[0].prompt == "The sky is"
    assert read_preferences(path, split="test")[0].prompt == USER
    with pytest.raises(DataError, match=r"saved: field 'split': expected one of 'train', 'test' \(set dataset\.split\), got \"dev\""):
        read_preferences(path, split="dev")


def test_a_list_of_rows_and_a_csv_file(tmp_path: Path) -> None:
    assert read_demonstrations(COMPLETION) == [Demonstration("The sky is", " blue.")]
    path = tmp_path / "rows.csv"
    datasets.Dataset.from_list(PREFERENCE).to_csv(str(path))
    assert read_preferences(path) == [PreferencePair("The sky is", " blue.", " green.")]
    with pytest.raises(DataError, match=r"<list>:1: found a prompt-completion row"):
        read_preferences(COMPLETION)


def test_a_hub_id_not_in_the_cache_is_named(monkeypatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # also when datasets was imported before this module
    with pytest.raises(DataError) as caught:
        read_preferences("nobody-here/no-such-dataset", subset="harmless")
    message = str(caught.value)
    assert message.startswith("nobody-here/no-such-dataset: no such file or folder, and the Hugging Face dataset")
    assert "'nobody-here/no-such-dataset' (subset 'harmless') could not be loaded: it is not in the local cache" in message


def _cache_as_hub(cache: Path, repo: str, rows: list[dict]) -> None:
    """Put ``rows`` in the datasets cache ``cache`` as if ``load_dataset(repo)`` had downloaded them (subset 'default')."""
    source = cache.parent / "rows.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(source))
    datasets.load_dataset("parquet", data_files={"train": str(source)}, cache_dir=str(cache))
    (prepared,) = (cache / "parquet").glob("default-*/0.0.0/*/")
    target = cache / repo.replace("/", "___") / "default" / "0.0.0" / prepared.name
    shutil.copytree(prepared, target)
    for arrow in target.glob("parquet-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("parquet-", repo.split("/")[1] + "-")))


def test_a_hub_id_in_the_cache_is_read_offline(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    _cache_as_hub(cache, "tether-tests/tiny-prefs", PREFERENCE_CHAT)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert read_preferences("tether-tests/tiny-prefs") == [PreferencePair(USER, "It is blue.", "It is green.")]
    assert read_preferences("tether-tests/tiny-prefs", split="train", subset="default") == read_preferences("tether-tests/tiny-prefs")
    with pytest.raises(DataError, match=r"^tether-tests/tiny-prefs: field 'split': expected one of 'train'"):
        read_preferences("tether-tests/tiny-prefs", split="test")
    with pytest.raises(DataError, match=r"the Hugging Face dataset 'tether-tests/tiny-prefs' \(subset 'other'\) could not be loaded"):
        read_preferences("tether-tests/tiny-prefs", subset="other")


def test_native_files_read_the_same_through_datasets(tmp_path: Path) -> None:
    """tether's own rows give the same records from JSONL and from parquet."""
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad", "margin": 2.0},
        {"prompt": "q2", "chosen": "fine", "rejected": "poor"},
    ]
    assert read_preferences(_parquet(tmp_path, rows)) == read_preferences(_jsonl(tmp_path, rows))


def test_dataset_settings_are_checked() -> None:
    assert SFTConfig(dataset=DatasetSettings(split="train")).dataset.read_args() == {"split": "train", "subset": None, "columns": {}}
    assert DatasetSettings().read_args(held_out=True)["split"] == "test"
    with pytest.raises(ConfigError, match="dataset.columns.prompt must be a column name that no other field uses, got 'q'"):
        load_config(SFTConfig, None, ["dataset.columns.prompt=q", "dataset.columns.chosen=q"])
    with pytest.raises(ConfigError, match=r"unknown key 'dataset\.columns\.promt'.*prompt"):
        load_config(SFTConfig, None, ["dataset.columns.promt=q"])
