"""Fingerprints (issue 25, classes 3 and 4): what decides a stage's result, and `tether run` rerunning exactly the stages
whose settings or inputs changed and every stage after them, like make; stage settings the run's wiring replaces are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tether.cli import app
from tether.config import ConfigError, PPOConfig, RunConfig, SFTConfig, load_config
from tether.fingerprint import changes, content_id, default_settings, fingerprint
from tether.pipeline import check_wiring

DEMO = Path(__file__).resolve().parents[1] / "src" / "tether" / "configs" / "demo.yaml"
STAGES = ["sft", "collect", "reward", "ppo", "eval"]


def sft_fp(*overrides: str) -> dict:
    return fingerprint(load_config(SFTConfig, None, list(overrides)))


# --------------------------------------------------------------------------- what a fingerprint holds


def test_keys_that_do_not_change_the_result_are_left_out():
    base = sft_fp("data=a.jsonl")
    same = sft_fp(
        "data=a.jsonl",
        "output_dir=elsewhere",
        "interrupt_after=3",
        "save_every=1",
        "tracker=tensorboard",
        "resume=false",
        "keep_checkpoint=true",
        "parallel.activation_checkpointing=true",
    )
    assert changes(base, same) == []
    ppo = fingerprint(load_config(PPOConfig, None, []))
    assert changes(ppo, fingerprint(load_config(PPOConfig, None, ["micro_batch_size=1", "offload_frozen=true", "samples_every=1"]))) == []
    assert changes(base, sft_fp("data=a.jsonl", "optim.lr=1e-3", "lora.r=4")) == [
        "optim.lr changed (2e-05 -> 0.001)",
        "lora.r changed (16 -> 4)",
    ]
    assert changes(base, sft_fp("data=a.jsonl", "seed=1")) == ["seed changed (0 -> 1)"]


def test_a_setting_added_or_removed_since_is_no_change_at_its_default():
    """A run recorded before tether had a setting (here: a fingerprint without `bucket_by_length`, and with a setting
    since removed) resumes and skips unchanged while the new setting holds its default; set otherwise, it is a change."""
    new = sft_fp("data=a.jsonl")
    old = {**new, "settings": {k: v for k, v in new["settings"].items() if k != "bucket_by_length"}}
    old["settings"]["a_removed_setting"] = 3
    defaults = default_settings(SFTConfig)
    assert changes(old, new, defaults=defaults) == []
    assert changes(old, sft_fp("data=a.jsonl", "bucket_by_length=false"), defaults=defaults) == [
        "bucket_by_length changed (unset -> false)"
    ]
    assert changes(old, new) == ["bucket_by_length changed (unset -> true)", "a_removed_setting changed (3 -> unset)"]  # without defaults


def test_a_setting_recorded_before_it_moved_into_a_section_is_compared_under_its_new_name():
    """A checkpoint written when `fsdp` and `zero_stage` were top-level keys resumes under `parallel.fsdp` and
    `parallel.zero_stage` (config.MOVED_KEYS) with the same values; another value is a change, named by its new key."""
    sharded = sft_fp("data=a.jsonl", "lora.enabled=false", "parallel.fsdp=true", "parallel.zero_stage=2")
    old = {**sharded, "settings": {k.removeprefix("parallel."): v for k, v in sharded["settings"].items()}}
    assert "fsdp" in old["settings"] and "parallel.fsdp" not in old["settings"]
    defaults = default_settings(SFTConfig)
    assert changes(old, sharded, defaults=defaults) == [] and changes(old, sharded) == []
    assert changes(old, sft_fp("data=a.jsonl", "lora.enabled=false", "parallel.fsdp=true"), defaults=defaults) == [
        "parallel.zero_stage changed (2 -> 3)"
    ]


def test_inputs_are_known_by_their_content(tmp_path, tiny_model_dir):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"prompt": "x", "response": "y"}\n')
    shutil.copy(a, b)
    first = sft_fp(f"data={a}", f"model={tiny_model_dir}")
    assert set(first["inputs"]) == {"data", "model"}
    assert changes(first, sft_fp(f"data={b}", f"model={tiny_model_dir}")) == []  # moved: the same bytes
    a.write_text('{"prompt": "x", "response": "z"}\n')
    assert changes(first, sft_fp(f"data={a}", f"model={tiny_model_dir}")) == [f"the content of data ({a}) changed"]
    assert changes(first, sft_fp(f"data={b}")) == [f"model changed ({tiny_model_dir} -> default)"]  # 'default': known by its name
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    assert content_id(str(model)) == content_id(str(tiny_model_dir))  # a model folder: every file in it
    (model / "config.json").write_text((model / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 33'))
    assert content_id(str(model)) != content_id(str(tiny_model_dir))


def test_reward_functions_and_sources_are_inputs(tmp_path):
    fn = tmp_path / "score.py"
    fn.write_text("def score(prompts, completions, metadata):\n    return [1.0] * len(prompts)\n")
    cfg = load_config(PPOConfig, None, [f"reward=[{{type: function, path: '{fn}:score'}}]", f"early_stop.prompts={fn}"])
    fp = fingerprint(cfg)
    assert fp["inputs"]["reward.0.path"] == content_id(str(fn)) == fp["inputs"]["early_stop.prompts"]


# --------------------------------------------------------------------------- tether run: like make


def tether(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny(out, model, data, *extra):
    """The whole line at the smallest sizes."""
    return [
        "run",
        f"output_dir={out}",
        f"model={model}",
        "precision=fp32",
        f"sft.data={data['demos']}",
        "sft.max_steps=1",
        f"collect.prompts={data['prompts']}",
        "collect.limit=3",
        "collect.responses_per_prompt=2",
        "collect.generation.max_new_tokens=5",
        "reward.max_steps=1",
        "reward.batch_size=2",
        f"ppo.prompts={data['prompts']}",
        "ppo.steps=2",
        "ppo.batch_size=2",
        "ppo.mini_batch_size=2",
        "ppo.generation.max_new_tokens=5",
        f"eval.prompts={data['prompts']}",
        "eval.limit=3",
        "eval.generation.max_new_tokens=5",
        *extra,
    ]


def summaries(run: Path) -> dict[str, str]:
    return {stage: (run / stage / "summary.json").read_text() for stage in STAGES}


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("make") / "run"
    result = tether(*tiny(run, tiny_model_dir, tiny_data))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return run


def rerun(base_run, tmp_path, tiny_model_dir, tiny_data, *extra):
    """The base run copied to a new folder (a moved run is the same run), then `tether run` into it with `extra`."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = summaries(run)
    result = tether(*tiny(run, tiny_model_dir, tiny_data, *extra))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return run, before, " ".join(result.output.split())


def test_an_unchanged_rerun_skips_every_stage(base_run, tmp_path, tiny_model_dir, tiny_data):
    run, before, output = rerun(base_run, tmp_path, tiny_model_dir, tiny_data, "tracker=none")  # the tracker is no change
    assert output.count("already complete") == 5 and "rerunning" not in output
    assert summaries(run) == before


def test_a_new_model_reruns_every_stage(base_run, tmp_path, tiny_model_dir, other_tiny_model_dir, tiny_data):
    run, before, output = rerun(base_run, tmp_path, tiny_model_dir, tiny_data, f"model={other_tiny_model_dir}")
    assert f"sft: model changed ({tiny_model_dir} -> {other_tiny_model_dir}); rerunning sft and the 4 stages after it" in output
    assert "already complete" not in output
    after = summaries(run)
    assert all(after[stage] != before[stage] for stage in STAGES)
    assert json.loads(after["sft"])["base_model"] == str(other_tiny_model_dir)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == str(other_tiny_model_dir)


def test_new_stage_data_reruns_that_stage_and_the_ones_after_it(base_run, tmp_path, tiny_model_dir, tiny_data):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(reversed(Path(tiny_data["prompts"]).read_text().splitlines(keepends=True))))
    run, before, output = rerun(base_run, tmp_path, tiny_model_dir, tiny_data, f"collect.prompts={prompts}")
    assert f"collect: prompts changed ({tiny_data['prompts']} -> {prompts}); rerunning collect and the 3 stages after it" in output
    after = summaries(run)
    assert after["sft"] == before["sft"] and output.count("already complete") == 1
    assert all(after[stage] != before[stage] for stage in STAGES[1:])


def test_a_changed_ppo_setting_reruns_ppo_from_the_start_and_eval(base_run, tmp_path, tiny_model_dir, tiny_data):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    interrupted = tether(*tiny(run, tiny_model_dir, tiny_data, "ppo.steps=3", "ppo.interrupt_after=1"))
    assert interrupted.exit_code == 1 and (run / "ppo" / "checkpoint").is_dir(), interrupted.output
    assert "ppo: steps changed (2 -> 3); rerunning ppo and the 1 stage after it" in " ".join(interrupted.output.split())
    (run / "ppo" / "stale.txt").write_text("a file of the old run")
    result = tether(*tiny(run, tiny_model_dir, tiny_data, "ppo.steps=3", "ppo.kl.init_beta=0.1"))
    assert result.exit_code == 0, result.output + repr(result.exception)
    output = " ".join(result.output.split())
    # the checkpoint of the interrupted run (other settings) is not resumed: ppo starts again
    assert "ppo: kl.init_beta changed (0.05 -> 0.1); rerunning ppo and the 1 stage after it" in output and "resuming" not in output
    assert output.count("already complete") == 3
    assert not (run / "ppo" / "stale.txt").exists() and not (run / "ppo" / "checkpoint").exists()
    rows = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "rollout/reward" in r] == [1, 2, 3]
    assert yaml.safe_load((run / "ppo" / "config.yaml").read_text())["steps"] == 3


def test_a_rerun_that_fails_early_keeps_the_earlier_results(base_run, tmp_path, tiny_model_dir, tiny_data):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = {p: p.read_bytes() for p in sorted((run / "sft").rglob("*")) if p.is_file()}
    result = tether(*tiny(run, tmp_path / "no-such-model", tiny_data))  # a typo in model=
    assert result.exit_code == 2 and "no-such-model" in result.output and "rerunning sft" in result.output
    assert {p: p.read_bytes() for p in sorted((run / "sft").rglob("*")) if p.is_file()} == before
    assert not (run / ".sft.replaced").exists()
    again = tether(*tiny(run, tiny_model_dir, tiny_data))
    assert again.exit_code == 0 and " ".join(again.output.split()).count("already complete") == 5


# --------------------------------------------------------------------------- stage settings the wiring replaces


def test_settings_the_wiring_replaces_are_refused_by_name(tmp_path, tiny_data):
    out = tmp_path / "run"
    result = tether(
        "run",
        f"output_dir={out}",
        f"reward.data={tiny_data['prefs']}",
        "sft.precision=fp32",
        "ppo.seed=3",
        "eval.output_dir=elsewhere",
        "collect.model=other",
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    output = " ".join(result.output.split())
    for fragment in [
        f"reward.data={tiny_data['prefs']} (`tether run` sets it to {out / 'collect' / 'preferences.jsonl'}",
        "sft.precision=fp32 (`tether run` sets it to bf16: set the top-level precision= instead)",
        "ppo.seed=3 (`tether run` sets it to 0: set the top-level seed= instead)",
        f"eval.output_dir=elsewhere (`tether run` sets it to {out / 'eval'}: set the top-level output_dir= instead)",
        f"collect.model=other (`tether run` sets it to {out / 'sft' / 'model'}",
    ]:
        assert fragment in output, fragment
    assert not out.exists()  # refused before anything was written


def test_values_the_wiring_agrees_with_are_accepted():
    check_wiring(load_config(RunConfig, DEMO))  # the shipped config sets no wired key
    check_wiring(
        load_config(
            RunConfig,
            None,
            ["ppo.seed=0", "seed=3", "sft.seed=3", "precision=fp32", "eval.precision=fp32", "ppo.tracker=tensorboard", "eval.seed=7"],
        )
    )
    with pytest.raises(
        ConfigError, match=r"sft\.tracker=wandb \(`tether run` sets it to tensorboard: set the top-level tracker= instead\)"
    ):
        check_wiring(load_config(RunConfig, None, ["tracker=tensorboard", "sft.tracker=wandb"]))
    with pytest.raises(ConfigError, match=r"sft\.model=/x \(`tether run` sets it to default: set the top-level model= instead\)"):
        check_wiring(load_config(RunConfig, None, ["sft.model=/x"]))


def test_rs_refuses_the_sft_settings_it_sets_every_round():
    from tether.config import RSConfig

    fn = "reward=[{type: function, path: 'x.py:f'}]"
    load_config(RSConfig, None, [fn, "sft.seed=0", "sft.max_steps=3"])  # a default value, a setting it keeps
    with pytest.raises(
        ConfigError, match=r"sft\.seed=3, sft\.precision=fp32: `tether rs` sets each round's SFT .* set the top-level seed= or precision="
    ):
        load_config(RSConfig, None, [fn, "sft.seed=3", "sft.precision=fp32"])


def test_an_ensemble_folder_is_known_by_its_members(tmp_path, tiny_model_dir):
    from tether.models.reward_model import save_ensemble_manifest

    for i in range(2):
        shutil.copytree(tiny_model_dir, tmp_path / f"member_{i}" / "model")
    save_ensemble_manifest(tmp_path / "model", [f"../member_{i}/model" for i in range(2)])
    before = content_id(str(tmp_path / "model"))
    weights = tmp_path / "member_1" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert content_id(str(tmp_path / "model")) != before
