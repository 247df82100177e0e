"""The Python API (tether.api): SFT, a reward model and DPO trained from in-memory `datasets.Dataset` objects in TRL's
formats give the numbers the command line gives on tether's own files; settings are checked as a file's are; rows and
models in memory are written into the run's folder, so the run records them and a rerun finds them."""

import json
import re
import tempfile
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

import tether
from tether import ConfigError, DPOConfig, RewardConfig, SFTConfig
from tether.cli import app

runner = CliRunner()


def native(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def metrics(out: Path) -> list[dict]:
    """Every logged row of a run without its timings and memory readings."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("sys/") and "time" not in k and "per_s" not in k} for row in rows]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def same_run(a: Path, b: Path) -> None:
    """Two runs computed the same numbers: every logged metric and every final weight."""
    assert metrics(a) == metrics(b) and metrics(a)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def cli(*argv: str) -> None:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == 0, result.output


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_sft_reward_and_dpo_from_datasets_match_the_command_line(tiny_model_dir, tiny_data, tmp_path):
    demos, prefs = native(tiny_data["demos"]), native(tiny_data["prefs"])
    common = ["precision=fp32", "save_every=0", "batch_size=4", "optim.lr=1e-3"]

    # SFT: TRL's conversational prompt-completion rows in memory, against tether's own file through the CLI
    cli("sft", f"model={tiny_model_dir}", f"data={tiny_data['demos']}", f"output_dir={tmp_path / 'cli-sft'}", "max_steps=3", *common)
    rows = datasets.Dataset.from_list([{"prompt": user(r["prompt"]), "completion": assistant(r["response"])} for r in demos])
    settings = {"precision": "fp32", "save_every": 0, "batch_size": 4, "optim": {"lr": 1e-3}}
    summary = tether.sft(SFTConfig(model=str(tiny_model_dir), max_steps=3), data=rows, output_dir=tmp_path / "api-sft", **settings)
    assert summary["stage"] == "sft"
    same_run(tmp_path / "cli-sft", tmp_path / "api-sft")

    # reward model: TRL's implicit-prompt preference rows (the whole exchange in chosen and rejected)
    cli(
        "reward",
        "train",
        f"model={tiny_model_dir}",
        f"data={tiny_data['prefs']}",
        f"output_dir={tmp_path / 'cli-rm'}",
        "max_steps=3",
        *common,
    )
    rows = datasets.Dataset.from_list(
        [{"chosen": user(r["prompt"]) + assistant(r["chosen"]), "rejected": user(r["prompt"]) + assistant(r["rejected"])} for r in prefs]
    )
    tether.reward(
        RewardConfig(model=str(tiny_model_dir), data="unused.jsonl", max_steps=3), data=rows, output_dir=tmp_path / "api-rm", **settings
    )
    same_run(tmp_path / "cli-rm", tmp_path / "api-rm")

    # DPO: explicit-prompt preference rows as a plain list of dicts, the held-out pairs as a second dataset
    cli(
        "dpo",
        f"policy={tiny_model_dir}",
        f"data={tiny_data['prefs']}",
        f"eval_data={tiny_data['prefs']}",
        f"output_dir={tmp_path / 'cli-dpo'}",
        "max_steps=2",
        *common,
    )
    tether.dpo(
        policy=tiny_model_dir,
        data=prefs,
        eval_data=datasets.Dataset.from_list(prefs),
        output_dir=tmp_path / "api-dpo",
        max_steps=2,
        **settings,
    )
    same_run(tmp_path / "cli-dpo", tmp_path / "api-dpo")

    # the run records what it read: config.yaml names the files written under inputs/, holding the rows given
    recorded = json.loads(json.dumps(__import__("yaml").safe_load((tmp_path / "api-dpo" / "config.yaml").read_text())))
    data_file = Path(recorded["data"])
    assert data_file.parent == tmp_path / "api-dpo" / "inputs" and data_file.name.startswith("data-") and native(data_file) == prefs
    assert Path(recorded["eval_data"]).name.startswith("eval_data-")


def test_a_loaded_model_trains_as_its_folder_does(tiny_model_dir, tiny_data, tmp_path):
    common = {"data": tiny_data["demos"], "max_steps": 2, "precision": "fp32", "save_every": 0, "batch_size": 4}
    tether.sft(model=tiny_model_dir, output_dir=tmp_path / "folder", **common)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    tether.sft(model=model, tokenizer=tokenizer, output_dir=tmp_path / "object", **common)
    same_run(tmp_path / "folder", tmp_path / "object")
    (saved,) = (tmp_path / "object" / "inputs").iterdir()
    assert saved.name.startswith("model-") and (saved / "config.json").is_file()
    # the same weights again: the same folder, so the rerun's fingerprint is unchanged
    tether.sft(model=model, tokenizer=tokenizer, output_dir=tmp_path / "object", **common)
    assert [p.name for p in (tmp_path / "object" / "inputs").iterdir()] == [saved.name]


def test_settings_are_checked_as_a_files_keys_are(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"'batch_size': expected an integer, got 'eight'"):
        SFTConfig(batch_size="eight")
    with pytest.raises(ConfigError, match=r"unknown key 'lr' \(did you mean 'optim.lr'\?\)"):
        tether.sft(model=tiny_model_dir, lr=1e-4, output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"SFTConfig keywords: optim.lr must be >= 0, got -1.0"):
        tether.sft(model=tiny_model_dir, optim={"lr": -1.0}, output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"data: a DatasetDict holds several splits \(train, test\); pass one, e.g. data=ds\['train'\]"):
        split = datasets.Dataset.from_list(native(tiny_data["demos"]))
        tether.sft(model=tiny_model_dir, data=datasets.DatasetDict({"train": split, "test": split}), output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"model: a model object needs its tokenizer"):
        tether.sft(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"expected a SFTConfig \(or keywords\), got a DPOConfig"):
        tether.sft(DPOConfig())
    assert not (tmp_path / "a").exists()  # nothing written for a config that failed its checks


def test_a_bad_row_in_memory_is_named_by_its_line_in_the_written_file(tiny_model_dir, tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "chosen": "d", "rejected": "e"}]
    with pytest.raises(tether.DataError, match=r"inputs/data-[0-9a-f]{12}\.jsonl:2: "):
        tether.sft(model=tiny_model_dir, data=rows, output_dir=tmp_path / "bad", max_steps=1)


def test_the_public_names():
    for name in tether.api.__all__:  # each defined in tether.api, and the same object from tether
        assert name in vars(tether.api) and getattr(tether, name) is vars(tether.api)[name]
    with pytest.raises(AttributeError, match="has no attribute 'sftt'"):
        tether.sftt  # noqa: B018


# --------------------------------------------------------------------------- docs/python-api.md, run as written

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def doc_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)


def test_the_python_api_page_runs_as_written(tiny_model_dir, tmp_path, monkeypatch):
    """Every Python block of docs/python-api.md, in order, in one namespace, as a reader runs them: only the default
    model is the tiny one ("default" is the only model value the page names that is not a folder it made)."""
    blocks = doc_blocks()
    assert len(blocks) >= 9 and all(f"{name}(" in DOC.read_text() for name in tether.api.__all__ if name[0].islower())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        code = block.replace('"default"', repr(str(tiny_model_dir)))
        exec(compile(code, f"{DOC} (python block {number})", "exec"), namespace)
    for stage in [
        "sft",
        "sft-short",
        "sft-more",
        "collect",
        "reward",
        "ppo",
        "eval",
        "grpo",
        "dpo",
        "bon",
        "rs",
        "judge",
        "revise",
        "line",
    ]:
        assert (tmp_path / "runs" / stage / "summary.json").is_file() or (tmp_path / "runs" / stage / "report.md").is_file(), stage


def test_a_loaded_model_is_not_left_behind_when_a_setting_fails(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"unknown key 'max_step'"):
        tether.sft(model=model, tokenizer=tokenizer, max_step=2, output_dir=tmp_path / "run")
    assert not list((tmp_path / "tmp").iterdir()) and not (tmp_path / "run").exists()
