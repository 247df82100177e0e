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


# --------------------------------------------------------------------------- dataset: in the stages that only read data

GEN = ["generation.max_new_tokens=4", "generation.batch_size=4", "precision=fp32"]
RENAMED = ["dataset.split=validation", "dataset.columns.prompt=question"]
OTHER_SPLIT = "A prompt of the train split, which no stage here should read."


def cli(argv: list[str]) -> str:
    from typer.testing import CliRunner

    from tether.cli import app

    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def renamed(tiny_data, tmp_path) -> dict[str, Path]:
    """The tiny prompts and pairs as the 'validation' split of save_to_disk folders (whose 'train' split holds other rows),
    under the user's column names."""
    prompts, pairs = tmp_path / "prompts-ds", tmp_path / "pairs-ds"
    rows = [{"question": r["prompt"]} for r in native(tiny_data["prompts"])]
    other = datasets.Dataset.from_list([{"question": OTHER_SPLIT}] * 4)
    datasets.DatasetDict({"train": other, "validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(prompts))
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in native(tiny_data["prefs"])]
    other = datasets.Dataset.from_list([{"question": OTHER_SPLIT, "good": "a", "bad": "b"}] * 4)
    datasets.DatasetDict({"train": other, "validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(pairs))
    return {"prompts": prompts, "pairs": pairs, "first": native(tiny_data["prompts"])[0]["prompt"]}


def wrote(folder: Path, text: str) -> bool:
    """Whether the files the stage wrote under `folder` hold `text` (a prompt it read) and no row of the other split."""
    texts = [p.read_text(errors="replace") for p in folder.rglob("*.jsonl")]
    return any(text in t for t in texts) and not any(OTHER_SPLIT in t for t in texts)


def test_the_reading_stages_take_a_split_and_column_names(tiny_model_dir, renamed, tmp_path):
    m, p, out = str(tiny_model_dir), str(renamed["prompts"]), tmp_path / "runs"
    fn = f"reward=[{{type: function, path: '{FNS}:letter_e'}}]"
    runs = {
        "collect": ["collect", f"model={m}", "limit=2", "responses_per_prompt=2", *GEN],
        "eval": ["eval", f"policy={m}", f"baseline={m}", "limit=2", *GEN],
        "bon": ["bon", f"policy={m}", fn, "n=2", "limit=2", *GEN],
        "rs": ["rs", f"policy={m}", fn, "n=2", "rounds=1", "limit=2", "sft.max_steps=1", "sft.batch_size=2", *GEN],
        "revise": ["revise", f"model={m}", "limit=2", *GEN],
    }
    for name, argv in runs.items():
        cli([*argv, f"prompts={p}", f"output_dir={out / name}", *RENAMED])
        assert wrote(out / name, renamed["first"]), name
    cli(["generate", f"model={m}", f"prompts={p}", f"output={out / 'generate' / 'samples.jsonl'}", "limit=2", *GEN, *RENAMED])
    assert wrote(out / "generate", renamed["first"])

    pairs = [f"data={renamed['pairs']}", "dataset.split=validation", "dataset.columns.prompt=question"]
    pairs += ["dataset.columns.chosen=good", "dataset.columns.rejected=bad"]
    cli(["judge", f"model={m}", f"output_dir={out / 'judge'}", "limit=2", "precision=fp32", *pairs])
    assert wrote(out / "judge", renamed["first"])
    cli(["reward", "train", f"model={m}", f"output_dir={out / 'rm'}", "max_steps=1", "batch_size=2", "precision=fp32", *pairs])
    evaluated = cli(["reward", "eval", f"model={out / 'rm' / 'model'}", "--precision", "fp32", *pairs])
    assert '"n": 12' in evaluated, evaluated  # every pair of the 'validation' split, read under the user's names
    demos = tmp_path / "demos-ds"
    rows = [{"question": r["question"], "answer": r["good"]} for r in datasets.load_from_disk(str(renamed["pairs"]))["validation"]]
    other = datasets.Dataset.from_list([{"question": OTHER_SPLIT, "answer": "a"}])
    datasets.DatasetDict({"train": other, "validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(demos))
    scored = out / "scored.jsonl"
    cli(
        [
            "reward",
            "score",
            f"model={out / 'rm' / 'model'}",
            f"data={demos}",
            f"out={scored}",
            "--precision",
            "fp32",
            *RENAMED,
            "dataset.columns.response=answer",
        ]
    )
    assert len(scored.read_text().splitlines()) == 12 and wrote(out, renamed["first"])
