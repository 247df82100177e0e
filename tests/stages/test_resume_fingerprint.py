"""Resume only what the same settings and inputs started (issue 25, classes 3 and 7): an interrupted SFT run rerun with
another model, data, learning rate or LoRA setting stops and names the change; resume=false starts again; an unchanged
rerun resumes bit for bit, also after a crash tore the last line of metrics.jsonl; a finished stage removes its checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tether.config import ConfigError, SFTConfig, load_config
from tether.data.readers import DataError
from tether.stages.sft import train_sft

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["max_steps=3", "batch_size=2", "save_every=0", "eval_fraction=0.2", "precision=fp32", "optim.warmup_ratio=0.0"]


def sft(model, data, out, *extra):
    return train_sft(load_config(SFTConfig, None, [f"model={model}", f"data={data}", f"output_dir={out}", *COMMON, *extra]))


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    """The final models of runs `a` and `b` are the same, bit for bit."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def interrupted(tiny_model_dir, tiny_data, tmp_path_factory):
    """An SFT run stopped after step 1 of 3 (its data in a file of its own, to be rewritten by a test), and the same run unbroken."""
    root = tmp_path_factory.mktemp("resume")
    data = root / "demos.jsonl"
    shutil.copy(tiny_data["demos"], data)
    full = sft(tiny_model_dir, data, root / "full")
    assert sft(tiny_model_dir, data, root / "run", "interrupt_after=1") is None
    assert (root / "run" / "checkpoint" / "fingerprint.json").exists()
    return root, data, full


@pytest.mark.parametrize(
    "change, message",
    [
        (["optim.lr=1e-3"], r"optim\.lr changed \(2e-05 -> 0\.001\)"),
        (["lora.enabled=true", "lora.r=4"], r"lora\.enabled changed \(false -> true\); lora\.r changed \(16 -> 4\)"),
        (["max_steps=4"], r"max_steps changed \(3 -> 4\)"),
        (["model={other_model}"], r"model changed \(\S*tiny-model\S* -> \S*other-tiny-model\S*\)"),
        (["data={other_data}"], r"data changed \(\S*demos\.jsonl -> \S*other\.jsonl\)"),
    ],
)
def test_a_changed_rerun_stops_and_names_the_change(interrupted, other_tiny_model_dir, tiny_model_dir, change, message):
    root, data, _ = interrupted
    other = root / "other.jsonl"
    other.write_text(json.dumps({"prompt": "Name a colour.", "response": "Blue."}) + "\n" + data.read_text())
    before = snapshot(root / "run")
    settings = [c.format(other_model=other_tiny_model_dir, other_data=other) for c in change]
    with pytest.raises(ConfigError, match=message) as e:
        sft(tiny_model_dir, data, root / "run", *settings)  # a later model= or data= wins
    assert "resume=false" in str(e.value) and "output_dir" in str(e.value) and str(root / "run" / "checkpoint") in str(e.value)
    assert snapshot(root / "run") == before  # nothing written, nothing lost


def test_data_rewritten_in_place_stops_the_resume_and_a_moved_copy_does_not(interrupted, tiny_model_dir, tmp_path):
    root, data, _ = interrupted
    moved = tmp_path / "moved.jsonl"  # the same bytes under another name: the same input
    shutil.copy(data, moved)
    shutil.copytree(root / "run", tmp_path / "run")
    assert sft(tiny_model_dir, moved, tmp_path / "run")["eval_loss_before"] is None  # resumed
    own = tmp_path / "own.jsonl"
    shutil.copy(data, own)
    assert sft(tiny_model_dir, own, tmp_path / "edited", "interrupt_after=1") is None
    own.write_text("".join(data.read_text().splitlines(keepends=True)[:-1]))  # one demonstration fewer, same path
    with pytest.raises(ConfigError, match=rf"the content of data \({own}\) changed"):
        sft(tiny_model_dir, own, tmp_path / "edited")


def test_resume_false_discards_the_checkpoint_and_starts_again(interrupted, tiny_model_dir, tmp_path):
    root, data, _ = interrupted
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    fresh = sft(tiny_model_dir, data, tmp_path / "fresh", "optim.lr=1e-3")
    again = sft(tiny_model_dir, data, run, "optim.lr=1e-3", "resume=false")
    assert steps(run) == steps(tmp_path / "fresh") == [1, 2, 3, 3]  # no step of the old run left in metrics.jsonl
    assert again["eval_loss_before"] == fresh["eval_loss_before"] is not None  # measured again: the run started at step 0
    assert_same_weights(tmp_path / "fresh", run)


def test_an_unchanged_rerun_resumes_bit_for_bit_past_a_torn_metrics_line(interrupted, tiny_model_dir, tmp_path):
    root, data, full = interrupted
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "train/lo')  # a crash in the middle of writing step 2's row
    resumed = sft(tiny_model_dir, data, run, "save_every=5", "parallel.activation_checkpointing=true")  # neither changes the numbers
    assert resumed["eval_loss"] == full["eval_loss"] and resumed["eval_loss_before"] is None  # resumed, not started again
    assert steps(run) == steps(root / "full")
    assert_same_weights(root / "full", run)


def test_a_bad_line_before_the_last_is_an_error_naming_it(interrupted, tiny_model_dir, tmp_path):
    root, data, _ = interrupted
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text('{"step": 0, "oops\n' + good)
    with pytest.raises(DataError, match=rf"{run / 'metrics.jsonl'}:1: not a JSON row"):
        sft(tiny_model_dir, data, run)


def test_a_finished_stage_removes_its_checkpoint_unless_asked_to_keep_it(interrupted, tiny_model_dir, tmp_path):
    root, data, _ = interrupted
    assert not (root / "full" / "checkpoint").exists()  # save_every=0: none was written
    sft(tiny_model_dir, data, tmp_path / "a", "save_every=1")
    assert (tmp_path / "a" / "summary.json").exists() and not (tmp_path / "a" / "checkpoint").exists()
    assert not list((tmp_path / "a").glob(".checkpoint*"))
    sft(tiny_model_dir, data, tmp_path / "b", "save_every=1", "keep_checkpoint=true")
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists()
    run = tmp_path / "run"  # a resumed run removes the checkpoint it resumed from
    shutil.copytree(root / "run", run)
    sft(tiny_model_dir, data, run)
    assert (run / "summary.json").exists() and not (run / "checkpoint").exists()


def test_an_ensemble_rerun_with_other_settings_trains_its_members_again(tiny_model_dir, tiny_data, tmp_path):
    from tether.config import RewardConfig
    from tether.stages.reward import train_reward

    def ensemble(*extra):
        return train_reward(
            load_config(
                RewardConfig,
                None,
                [
                    f"model={tiny_model_dir}",
                    f"data={tiny_data['prefs']}",
                    f"output_dir={tmp_path}",
                    "batch_size=4",
                    "max_steps=1",
                    "precision=fp32",
                    "ensemble=2",
                    *extra,
                ],
            )
        )

    def members():
        return [(tmp_path / f"member_{i}" / "summary.json").stat().st_mtime_ns for i in range(2)]

    ensemble()
    first = members()
    ensemble()
    assert members() == first  # the same settings: the members are reused
    ensemble("optim.lr=1e-3")
    assert all(a != b for a, b in zip(members(), first))
    assert all(yaml.safe_load((tmp_path / f"member_{i}" / "config.yaml").read_text())["optim"]["lr"] == 1e-3 for i in range(2))


FNS = Path(__file__).resolve().parent / "reward_fns.py"


def test_online_dpo_goes_on_only_from_rounds_made_with_its_settings(tiny_model_dir, tiny_data, tmp_path):
    from tether.config import DPOConfig
    from tether.stages.dpo import run_dpo

    def online(*extra):
        return run_dpo(
            load_config(
                DPOConfig,
                None,
                [
                    f"policy={tiny_model_dir}",
                    f"prompts={tiny_data['prompts']}",
                    f"output_dir={tmp_path}",
                    "precision=fp32",
                    "online=true",
                    f"reward=[{{type: function, path: '{FNS}:letter_e'}}]",
                    "prompts_per_round=4",
                    "generation.max_new_tokens=6",
                    "batch_size=2",
                    "max_steps=1",
                    "eval_fraction=0",
                    "save_every=0",
                    *extra,
                ],
            )
        )

    online("rounds=1")
    made = (tmp_path / "round_1" / "round.json").stat().st_mtime_ns
    assert online("rounds=2")["rounds"][1]["round"] == 2  # more rounds go on from the last
    assert (tmp_path / "round_1" / "round.json").stat().st_mtime_ns == made
    before = snapshot(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"holds rounds made with other settings \(round_1, round_2\): generation\.max_new_tokens "
        r"changed \(6 -> 5\)\. To go on, rerun with resume=false",
    ):
        online("rounds=2", "generation.max_new_tokens=5")
    assert snapshot(tmp_path) == before
    online("rounds=1", "generation.max_new_tokens=5", "resume=false")
    assert not (tmp_path / "round_2").exists() and (tmp_path / "round_1" / "round.json").stat().st_mtime_ns != made


def test_rejection_sampling_goes_on_only_from_rounds_made_with_its_settings(tiny_model_dir, tiny_data, tmp_path):
    from tether.config import RSConfig
    from tether.stages.bon import rejection_sampling

    def rs(*extra):
        return rejection_sampling(
            load_config(
                RSConfig,
                None,
                [
                    f"policy={tiny_model_dir}",
                    f"prompts={tiny_data['prompts']}",
                    f"output_dir={tmp_path}",
                    f"reward=[{{type: function, path: '{FNS}:letter_e'}}]",
                    "generation.max_new_tokens=6",
                    "precision=fp32",
                    "rounds=1",
                    "n=2",
                    "eval_samples=1",
                    "limit=4",
                    "sft.max_steps=1",
                    "sft.batch_size=2",
                    *extra,
                ],
            )
        )

    rs()
    with pytest.raises(
        ConfigError, match=r"\(round_0, round_1\): sft\.optim\.lr changed \(2e-05 -> 0\.01\)\. To go on, choose a new output_dir"
    ):
        rs("sft.optim.lr=1e-2")
