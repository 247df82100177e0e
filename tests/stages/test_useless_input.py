"""Input with nothing to learn from ends in one clear error, never a hang, a traceback or a run that trains nothing.

Every command that reads a data file refuses one with no usable row (naming the file, the rows it read and why each
kind was dropped); a held-out split, tie rule or truncation that leaves nothing to train on, and a setting that leaves
nothing trainable (freeze_layers, LoRA target_modules), are errors naming the setting. Pairs that become identical
once cut to max_response_tokens are left out and counted.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.cli import app
from tether.config import CollectConfig, ConfigError, DPOConfig, EvalConfig, RewardConfig, SFTConfig, load_config
from tether.data.readers import DataError
from tether.stages.collect import collect
from tether.stages.dpo import train_dpo
from tether.stages.evaluate import evaluate
from tether.stages.reward import train_reward
from tether.stages.sft import train_sft
from tether.training import group_stream, index_stream

FNS = Path(__file__).resolve().parent / "reward_fns.py"
GEN = ["generation.max_new_tokens=4", "generation.batch_size=4"]
runner = CliRunner()


def write_rows(path: Path, rows: list) -> Path:
    """One row a line: a dict as JSON, a string as written (e.g. "" for a blank line or broken JSON)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def said(capsys, text: str) -> bool:
    """Whether the stages printed `text` so far (their console writes to stderr), wherever the console wrapped it."""
    return "".join(text.split()) in "".join(capsys.readouterr().err.split())


def refused(out: Path, *args) -> str:
    """Run `tether ARGS`; assert exit code 2, one error line and no traceback; return the output."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "error:" in result.output and "Traceback" not in result.output
    assert not (out / "summary.json").exists()
    return " ".join(result.output.split())  # the message, whatever the terminal's wrapping


# --------------------------------------------------------------------------- an empty file, every command

COMMANDS = {  # command line after `tether`, with {model}, {empty}, {out}, {fns}, {rm} filled in
    "sft max_steps=1": ["sft", "model={model}", "data={empty}", "output_dir={out}", "max_steps=1"],
    "sft": ["sft", "model={model}", "data={empty}", "output_dir={out}"],
    "reward train": ["reward", "train", "model={model}", "data={empty}", "output_dir={out}"],
    "ppo": [
        "ppo",
        "policy={model}",
        "prompts={empty}",
        "reward=[{{type: function, path: '{fns}:letter_e'}}]",
        "output_dir={out}",
        "steps=1",
        "batch_size=2",
        "mini_batch_size=2",
    ],
    "grpo": ["grpo", "policy={model}", "prompts={empty}", "reward=[{{type: function, path: '{fns}:letter_e'}}]", "output_dir={out}"],
    "dpo": ["dpo", "policy={model}", "data={empty}", "output_dir={out}"],
    "dpo online": [
        "dpo",
        "policy={model}",
        "online=true",
        "prompts={empty}",
        "reward=[{{type: function, path: '{fns}:letter_e'}}]",
        "output_dir={out}",
    ],
    "collect": ["collect", "model={model}", "prompts={empty}", "output_dir={out}"],
    "eval": ["eval", "policy={model}", "baseline={model}", "prompts={empty}", "output_dir={out}"],
    "bon": ["bon", "policy={model}", "prompts={empty}", "reward=[{{type: function, path: '{fns}:letter_e'}}]", "output_dir={out}"],
    "rs": ["rs", "policy={model}", "prompts={empty}", "reward=[{{type: function, path: '{fns}:letter_e'}}]", "output_dir={out}"],
    "generate": ["generate", "model={model}", "prompts={empty}", "output={out}/samples.jsonl"],
    "judge": ["judge", "model={model}", "data={empty}", "output_dir={out}"],
    "revise": ["revise", "model={model}", "prompts={empty}", "output_dir={out}"],
    "reward eval": ["reward", "eval", "--model", "{rm}", "--data", "{empty}"],
    "reward score": ["reward", "score", "--model", "{rm}", "--data", "{empty}", "--out", "{out}/scored.jsonl"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_empty_file_is_refused_naming_it(command, tiny_model_dir, tmp_path, request):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rm = request.getfixturevalue("frozen_layer_rm") if command.startswith("reward ") and command != "reward train" else ""
    out = tmp_path / "out"
    args = [a.format(model=tiny_model_dir, empty=empty, out=out, fns=FNS, rm=rm) for a in COMMANDS[command]]
    message = refused(out, *args)
    kind = (
        "prompt"
        if "prompts={empty}" in COMMANDS[command]
        else "demonstration"
        if command in ("sft", "sft max_steps=1", "reward score")
        else "preference pair"
    )
    assert f"{empty}: no usable {kind} in 0 rows read (the file is empty)" in message, message
    assert not (out / "model").exists() and not (out / "samples.jsonl").exists()


@pytest.mark.timeout(60)
def test_blank_and_skipped_rows_are_counted_by_reason(tiny_model_dir, tmp_path):
    blank = write_rows(tmp_path / "blank.jsonl", ["", "   "])
    message = refused(tmp_path / "o", "sft", f"model={tiny_model_dir}", f"data={blank}", f"output_dir={tmp_path / 'o'}")
    assert f"{blank}: no usable demonstration in 2 rows read: 2 blank;" in message
    bad = write_rows(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "q", "chosen": "same", "rejected": "same"},
            "{oops",
            "",
            {"prompt": "q", "chosen": "", "rejected": "b"},
            {"prompt": "q", "response": "r"},
        ],
    )
    message = refused(
        tmp_path / "r", "reward", "train", f"model={tiny_model_dir}", f"data={bad}", f"output_dir={tmp_path / 'r'}", "skip_bad_rows=true"
    )
    assert (
        f"{bad}: no usable preference pair in 5 rows read: 1 with the same 'chosen' and 'rejected' (line 1), "
        "1 not valid JSON (line 2), 1 blank, 1 with an empty 'chosen' (line 4), 1 of type demonstration (line 5)"
    ) in message


@pytest.mark.timeout(120)
def test_one_bad_line_among_good_ones_is_dropped_and_reported(tiny_model_dir, tiny_data, tmp_path, capsys):
    good = [json.loads(line) for line in tiny_data["prefs"].read_text().splitlines()]
    data = write_rows(tmp_path / "prefs.jsonl", good[:6] + ["{not json", ""] + good[6:])
    summary = train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={data}",
                f"output_dir={tmp_path / 'rm'}",
                "skip_bad_rows=true",
                "max_steps=1",
                "batch_size=4",
                "precision=fp32",
            ],
        )
    )
    assert summary["skipped_rows"] == 1 and summary["train_pairs"] + summary["eval_pairs"] == 12
    assert summary["data"] == {"path": str(data), "rows_read": 14, "records": 12, "dropped": {"not valid JSON": 1, "blank": 1}}
    assert said(capsys, f"reward: 12 preference pairs from {data} (14 rows read: 1 not valid JSON (line 7), 1 blank)")
    demos = write_rows(tmp_path / "demos.jsonl", [""] + [json.loads(x) for x in tiny_data["demos"].read_text().splitlines()])
    summary = train_sft(
        load_config(
            SFTConfig, None, [f"model={tiny_model_dir}", f"data={demos}", f"output_dir={tmp_path / 'sft'}", "max_steps=1", "precision=fp32"]
        )
    )
    assert summary["steps"] == 1 and summary["data"]["dropped"] == {"blank": 1} and summary["data"]["records"] == 12


# --------------------------------------------------------------------------- nothing left to train on


@pytest.mark.timeout(60)
def test_a_split_that_holds_out_everything_names_eval_fraction(tiny_model_dir, tmp_path):
    one = write_rows(tmp_path / "one.jsonl", [{"prompt": "Say hi", "response": "Hi!"}])
    with pytest.raises(
        DataError,
        match=r"one\.jsonl: no usable demonstration left to train on: eval_fraction=0\.9 holds out all 1 "
        r"of them; lower eval_fraction or add data \(1 row read\)",
    ):
        train_sft(
            load_config(SFTConfig, None, [f"model={tiny_model_dir}", f"data={one}", f"output_dir={tmp_path / 'sft'}", "eval_fraction=0.9"])
        )
    pairs = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": f"good {i}", "rejected": "bad"} for i in range(3)])
    with pytest.raises(
        DataError,
        match=r"pairs\.jsonl: no usable preference pair left to train on: eval_fraction=0\.9 holds out "
        r"every prompt \(3 pairs\).*\(3 rows read\)",
    ):
        train_reward(
            load_config(
                RewardConfig, None, [f"model={tiny_model_dir}", f"data={pairs}", f"output_dir={tmp_path / 'rm'}", "eval_fraction=0.9"]
            )
        )
    with pytest.raises(
        DataError,
        match=r"pairs\.jsonl: no usable preference pair left to train on after the held-out split "
        r"\(eval_fraction=0\.9\) and 0 ties were left out",
    ):
        train_dpo(
            load_config(
                DPOConfig, None, [f"policy={tiny_model_dir}", f"data={pairs}", f"output_dir={tmp_path / 'dpo'}", "eval_fraction=0.9"]
            )
        )


@pytest.mark.timeout(60)
def test_only_ties_with_ties_skip_is_an_error(tiny_model_dir, tmp_path):
    ties = write_rows(
        tmp_path / "ties.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "meta": {"tie": True}} for i in range(2)]
    )
    with pytest.raises(
        DataError,
        match=r"ties\.jsonl: no usable preference pair left to train on: all 2 training pairs are ties and "
        r"ties=skip; set ties=half",
    ):
        train_reward(
            load_config(
                RewardConfig,
                None,
                [f"model={tiny_model_dir}", f"data={ties}", f"output_dir={tmp_path / 'rm'}", "eval_fraction=0", "ties=skip"],
            )
        )


# the tiny tokenizer: both answers start with the same 3 tokens ("A", " clear", ","), so max_response_tokens=3 makes them one
SAME_AFTER_3 = {"chosen": "A clear, short answer.", "rejected": "A clear, long answer."}


@pytest.mark.timeout(120)
def test_pairs_identical_after_truncation_are_left_out_and_counted(tiny_model_dir, tiny_data, tmp_path, capsys):
    good = [json.loads(line) for line in tiny_data["prefs"].read_text().splitlines()]  # "A clear, short answer." vs "no no no ..."
    data = write_rows(tmp_path / "prefs.jsonl", good + [{"prompt": f"extra {i}", **SAME_AFTER_3} for i in range(3)])
    common = [f"data={data}", "max_response_tokens=3", "eval_fraction=0", "max_steps=1", "batch_size=4", "precision=fp32"]
    summary = train_reward(load_config(RewardConfig, None, [f"model={tiny_model_dir}", f"output_dir={tmp_path / 'rm'}", *common]))
    assert summary["pairs_identical_after_truncation"] == 3 and summary["train_pairs"] == 12
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["pairs_identical_after_truncation"] == 3
    assert said(
        capsys,
        "reward: left out 3 pairs whose chosen and rejected are the same after truncation to max_response_tokens=3 "
        "(3 training, 0 held-out)",
    )
    summary = train_dpo(load_config(DPOConfig, None, [f"policy={tiny_model_dir}", f"output_dir={tmp_path / 'dpo'}", *common]))
    assert summary["pairs_identical_after_truncation"] == 3 and summary["train_pairs"] == 12
    assert said(capsys, "dpo: left out 3 pairs whose chosen and rejected are the same after truncation to max_response_tokens=3")
    # with a budget that keeps them apart, nothing is left out
    wide = [c.replace("max_response_tokens=3", "max_response_tokens=16") for c in common]
    summary = train_reward(load_config(RewardConfig, None, [f"model={tiny_model_dir}", f"output_dir={tmp_path / 'rm16'}", *wide]))
    assert summary["pairs_identical_after_truncation"] == 0 and summary["train_pairs"] == 15


@pytest.mark.timeout(60)
def test_only_pairs_identical_after_truncation_is_an_error_naming_max_response_tokens(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "same.jsonl", [{"prompt": f"q{i}", **SAME_AFTER_3} for i in range(4)])
    expected = (
        r"same\.jsonl: no usable preference pair left to train on: the chosen and rejected of all 4 training pairs are the same "
        r"after truncation to max_response_tokens=3; raise max_response_tokens \(4 rows read\)"
    )
    with pytest.raises(DataError, match=expected):
        train_reward(
            load_config(
                RewardConfig,
                None,
                [f"model={tiny_model_dir}", f"data={data}", f"output_dir={tmp_path / 'rm'}", "max_response_tokens=3", "eval_fraction=0"],
            )
        )
    with pytest.raises(DataError, match=expected):
        train_dpo(
            load_config(
                DPOConfig,
                None,
                [f"policy={tiny_model_dir}", f"data={data}", f"output_dir={tmp_path / 'dpo'}", "max_response_tokens=3", "eval_fraction=0"],
            )
        )


# --------------------------------------------------------------------------- settings that leave nothing trainable


@pytest.mark.timeout(60)
def test_freeze_layers_of_every_block_is_an_error_in_every_stage(tiny_model_dir, tiny_data, tmp_path):
    message = refused(
        tmp_path / "rm",
        "reward",
        "train",
        f"model={tiny_model_dir}",
        f"data={tiny_data['prefs']}",
        f"output_dir={tmp_path / 'rm'}",
        "freeze_layers=2",
    )
    assert f"freeze_layers=2 leaves no block of {tiny_model_dir} to train: it has 2; freeze fewer" in message
    with pytest.raises(ConfigError, match="freeze_layers=3 leaves no block .* it has 2; freeze fewer"):
        train_dpo(
            load_config(
                DPOConfig,
                None,
                [f"policy={tiny_model_dir}", f"data={tiny_data['prefs']}", f"output_dir={tmp_path / 'dpo'}", "freeze_layers=3"],
            )
        )


@pytest.mark.timeout(60)
def test_lora_target_modules_that_match_nothing_is_an_error(tiny_model_dir, tiny_data, tmp_path):
    message = refused(
        tmp_path / "sft",
        "sft",
        f"model={tiny_model_dir}",
        f"data={tiny_data['demos']}",
        f"output_dir={tmp_path / 'sft'}",
        "lora.enabled=true",
        "lora.target_modules=qproj,vproj",
    )
    assert "lora.target_modules=qproj,vproj matches no module of the model, so LoRA would train nothing" in message
    assert "q_proj" in message  # the names it could have meant


# --------------------------------------------------------------------------- other stages, other ways to end up with nothing


@pytest.mark.timeout(60)
def test_eval_offset_past_the_prompts_is_an_error(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(
        DataError,
        match=r"prompts\.jsonl: no prompt left after offset=20 and limit=64: the file gives 12 "
        r"\(12 rows read\); lower offset",
    ):
        evaluate(
            load_config(
                EvalConfig,
                None,
                [
                    f"policy={tiny_model_dir}",
                    f"baseline={tiny_model_dir}",
                    f"prompts={tiny_data['prompts']}",
                    f"output_dir={tmp_path / 'ev'}",
                    "offset=20",
                    *GEN,
                ],
            )
        )


@pytest.mark.timeout(60)
def test_collect_with_nothing_to_label_is_an_error_and_keeps_its_samples(tiny_model_dir, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"prompt": "Say hi"}, {"prompt": "Say bye"}])
    # one near-greedy token per answer: every prompt's answers are the same text
    with pytest.raises(DataError, match=r"p\.jsonl: no pair to label: the 2 responses to each of the 2 prompts were all the same or empty"):
        collect(
            load_config(
                CollectConfig,
                None,
                [
                    f"model={tiny_model_dir}",
                    f"prompts={prompts}",
                    f"output_dir={tmp_path / 'c'}",
                    "generation.max_new_tokens=1",
                    "generation.temperature=0.0001",
                    "precision=fp32",
                ],
            )
        )
    assert len((tmp_path / "c" / "samples.jsonl").read_text().splitlines()) == 4


@pytest.mark.timeout(10)
def test_a_stream_over_no_examples_raises_instead_of_looping():
    with pytest.raises(ValueError, match="cannot draw 4 indices from no examples"):
        index_stream(0, seed=0, n_needed=4)
    with pytest.raises(ValueError, match="cannot draw 2 indices"):
        group_stream([[], []], seed=0, n_needed=2)
    assert index_stream(0, seed=0, n_needed=0) == [] and index_stream(2, seed=0, n_needed=3)[2] in (0, 1)


@pytest.mark.timeout(60)
def test_judge_with_no_pair_of_different_responses_is_an_error(tiny_model_dir, tmp_path):
    samples = write_rows(
        tmp_path / "samples.jsonl",
        [{"prompt": "q", "response": "same"}, {"prompt": "q", "response": "same"}, {"prompt": "r", "response": "alone"}],
    )
    message = refused(tmp_path / "j", "judge", f"model={tiny_model_dir}", f"data={samples}", f"output_dir={tmp_path / 'j'}")
    assert f"{samples}: no pair to judge: no prompt has two different, non-empty responses (1 pairs were the same text or empty)" in message


@pytest.mark.timeout(120)
def test_an_ensemble_leaves_identical_pairs_out_of_its_held_out_pairs_too(tiny_model_dir, tiny_data, tmp_path):
    held_out = write_rows(
        tmp_path / "eval.jsonl",
        [{"prompt": "q1", "chosen": "Paris.", "rejected": "no no no"}, {"prompt": "q2", **SAME_AFTER_3}, {"prompt": "q3", **SAME_AFTER_3}],
    )
    summary = train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={tiny_data['prefs']}",
                f"eval_data={held_out}",
                f"output_dir={tmp_path / 'rm'}",
                "ensemble=2",
                "max_response_tokens=3",
                "max_steps=1",
                "batch_size=4",
                "precision=fp32",
            ],
        )
    )
    assert summary["eval_pairs"] == 1 and summary["member_eval_accuracy"][0] is not None
    assert json.loads((tmp_path / "rm" / "member_0" / "summary.json").read_text())["pairs_identical_after_truncation"] == 2
