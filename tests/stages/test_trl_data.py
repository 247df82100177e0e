"""The training stages on TRL-format data (parquet, save_to_disk folders, JSONL with other column names) give the same
numbers as on tether's own files; a file of the wrong type is refused before any training."""

import json
from pathlib import Path

import pytest

from tether.config import DPOConfig, GRPOConfig, RewardConfig, SFTConfig, load_config
from tether.data import DataError
from tether.stages.dpo import train_dpo
from tether.stages.grpo import train_grpo
from tether.stages.reward import train_reward
from tether.stages.sft import train_sft

datasets = pytest.importorskip("datasets")

FNS = Path(__file__).with_name("reward_fns.py")


def native(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(out: Path) -> list[float]:
    """The training losses of a run, step by step (no timings)."""
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    found = [row["train/loss"] for row in rows if "train/loss" in row]
    assert found and all(loss == loss for loss in found)  # some steps, none NaN
    return found


def run(cls, train, out: Path, *overrides: str) -> list[float]:
    train(load_config(cls, None, [f"output_dir={out}", "precision=fp32", "save_every=0", *overrides]))
    return losses(out)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_sft_on_trl_prompt_completion_parquet_and_renamed_columns(tiny_model_dir, tiny_data, tmp_path):
    common = [f"model={tiny_model_dir}", "max_steps=3", "batch_size=4", "eval_fraction=0.25", "optim.lr=1e-3"]
    expected = run(SFTConfig, train_sft, tmp_path / "native", f"data={tiny_data['demos']}", *common)
    rows = [{"prompt": r["prompt"], "completion": r["response"]} for r in native(tiny_data["demos"])]
    parquet = tmp_path / "demos.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    assert run(SFTConfig, train_sft, tmp_path / "parquet", f"data={parquet}", *common) == expected
    conversational = tmp_path / "chat"  # conversational prompt-completion rows with the user's own column names
    datasets.Dataset.from_list([{"question": user(r["prompt"]), "answer": assistant(r["completion"])} for r in rows]).save_to_disk(
        str(conversational)
    )
    renamed = ["dataset.columns.prompt=question", "dataset.columns.completion=answer"]
    assert run(SFTConfig, train_sft, tmp_path / "chat-run", f"data={conversational}", *renamed, *common) == expected


def test_sft_refuses_a_preference_file(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(DataError, match=r"prefs\.jsonl:1: found a preference row .*explicit prompt\), but SFT needs demonstrations"):
        run(SFTConfig, train_sft, tmp_path / "s", f"model={tiny_model_dir}", f"data={tiny_data['prefs']}", "max_steps=1")
    assert not (tmp_path / "s" / "summary.json").exists()


def test_reward_on_trl_conversational_preferences_in_a_saved_dataset(tiny_model_dir, tiny_data, tmp_path):
    common = [f"model={tiny_model_dir}", "max_steps=3", "batch_size=4", "optim.lr=1e-3"]
    expected = run(RewardConfig, train_reward, tmp_path / "native", f"data={tiny_data['prefs']}", *common)
    rows = [
        {"prompt": user(r["prompt"]), "chosen": assistant(r["chosen"]), "rejected": assistant(r["rejected"])}
        for r in native(tiny_data["prefs"])
    ]
    saved = tmp_path / "prefs"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(saved))
    assert run(RewardConfig, train_reward, tmp_path / "saved", f"data={saved}", "dataset.split=train", *common) == expected


def test_dpo_on_trl_implicit_prompt_jsonl(tiny_model_dir, tiny_data, tmp_path):
    common = [f"policy={tiny_model_dir}", "max_steps=2", "batch_size=4", "eval_fraction=0.25", "optim.lr=1e-2"]
    expected = run(DPOConfig, train_dpo, tmp_path / "native", f"data={tiny_data['prefs']}", *common)
    implicit = tmp_path / "implicit.jsonl"
    implicit.write_text(
        "".join(
            json.dumps({"chosen": user(r["prompt"]) + assistant(r["chosen"]), "rejected": user(r["prompt"]) + assistant(r["rejected"])})
            + "\n"
            for r in native(tiny_data["prefs"])
        )
    )
    assert run(DPOConfig, train_dpo, tmp_path / "implicit", f"data={implicit}", *common) == expected


def test_grpo_prompts_from_parquet_with_another_column_name(tiny_model_dir, tiny_data, tmp_path):
    common = [
        f"policy={tiny_model_dir}",
        f"reward=[{{type: function, path: '{FNS}:letter_e'}}]",
        "lora.enabled=false",
        "generation.max_new_tokens=4",
        "samples_every=0",
        "steps=1",
        "prompts_per_step=2",
        "group_size=2",
        "mini_batch_size=4",
        "micro_batch_size=4",
    ]
    expected = run(GRPOConfig, train_grpo, tmp_path / "native", f"prompts={tiny_data['prompts']}", *common)
    parquet = tmp_path / "prompts.parquet"
    datasets.Dataset.from_list([{"question": r["prompt"]} for r in native(tiny_data["prompts"])]).to_parquet(str(parquet))
    assert run(GRPOConfig, train_grpo, tmp_path / "parquet", f"prompts={parquet}", "dataset.columns.prompt=question", *common) == expected


def test_a_hub_id_not_in_the_cache_stops_the_stage_naming_it(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network here
    with pytest.raises(
        DataError, match=r"^nobody-here/no-pairs: no such file or folder, and the Hugging Face dataset 'nobody-here/no-pairs'"
    ):
        run(RewardConfig, train_reward, tmp_path / "r", f"model={tiny_model_dir}", "data=nobody-here/no-pairs", "max_steps=1")
