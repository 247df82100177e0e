"""Constitution files (the shipped one, clear errors for bad ones) and critique-and-revise, down to `tether revise`."""

import json

import pytest
from typer.testing import CliRunner

from tether.cli import app
from tether.config import ConfigError, GenerationSettings, ReviseConfig, load_config
from tether.data.readers import read_preferences
from tether.feedback.constitution import Principle, Revision, critique_and_revise, load_constitution, revision_pairs, shipped_constitution

runner = CliRunner()


def test_the_shipped_constitution_loads():
    c = load_constitution("default")
    assert c.name == "default" and c.source == str(shipped_constitution("default"))
    assert 8 <= len(c.principles) <= 12 and len({p.name for p in c.principles}) == len(c.principles)
    for p in c.principles:
        assert p.critique_request.strip() and p.revision_request.strip() and p.rubric
    assert c.rubric()[0].startswith("Prefer the response")
    assert load_constitution(shipped_constitution("default")) == c  # by path too


GOOD = "- name: kind\n  critique_request: Is it kind?\n  revision_request: Make it kinder.\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: kind\n", r"c\.yaml: expected a YAML list of principles.*got a mapping"),
        ("[]\n", r"c\.yaml: expected a YAML list of principles.*got an empty list"),
        ("- just a string\n", r"c\.yaml:1: principle 1: expected a mapping.*got 'just a string'"),
        (
            "- name: kind\n  critique_request: Is it kind?\n",
            r"c\.yaml:1: principle 1 \('kind'\), field 'revision_request': expected a non-empty string, got nothing",
        ),
        (
            GOOD + "- name: harsh\n  critique_request: 3\n  revision_request: x\n",
            r"c\.yaml:5: principle 2 \('harsh'\), field 'critique_request': expected a non-empty string, got 3",
        ),
        (GOOD + "  rubric: '  '\n", r"c\.yaml:4: principle 1 \('kind'\), field 'rubric': expected a non-empty string, got an empty string"),
        (GOOD + "  critique: typo\n", r"c\.yaml:4: principle 1 \('kind'\): unknown field 'critique'; valid fields: name, critique_request"),
        (GOOD + GOOD, r"c\.yaml:4: principle 2 \('kind'\), field 'name': expected a unique name, got one already used by principle 1"),
        ("- name: [unclosed\n", r"c\.yaml:2: not valid YAML"),
        (
            "- name: kind\n  critique_request: Is it kind?\n  revision_request: a\n  revision_request: b\n",
            r"c\.yaml:4: not valid YAML: duplicate key 'revision_request' \(first given on line 3\)",
        ),
    ],
)
def test_bad_constitution_files_name_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_constitution(path)


def test_missing_constitution_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"no such file .*shipped name: default"):
        load_constitution(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        load_constitution("nope")


def test_rubric_falls_back_to_the_critique_request(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    assert load_constitution(path).rubric() == ["Is it kind?"]


# --------------------------------------------------------------------------- critique and revise


def test_critique_and_revise_builds_the_conversation_of_bai_et_al(monkeypatch, tmp_path):
    """Answer, then critique with the principle's critique request, then revise with its revision request, in one chat."""
    import tether.feedback.constitution as gen

    seen = []

    def fake_sample(model, tokenizer, prompts, settings, seed, precision="bf16", progress=None):
        seen.append(list(prompts))
        return [{"response": f"out{len(seen)}-{i}", "finished": True, "n_tokens": 1} for i in range(len(prompts))]

    monkeypatch.setattr(gen, "sample_responses", fake_sample)
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Insult me."}]
    revs = critique_and_revise(None, None, ["Be rude.", chat], load_constitution(path), GenerationSettings(), rounds=2)
    assert len(seen) == 5  # answer, then (critique, revision) twice
    assert seen[0] == ["Be rude.", chat]
    assert seen[1][0] == [
        {"role": "user", "content": "Be rude."},
        {"role": "assistant", "content": "out1-0"},
        {"role": "user", "content": "Is it kind?"},
    ]
    assert seen[2][1] == chat + [
        {"role": "assistant", "content": "out1-1"},
        {"role": "user", "content": "Is it kind?"},
        {"role": "assistant", "content": "out2-1"},
        {"role": "user", "content": "Make it kinder."},
    ]
    assert seen[3][0][1]["content"] == "out3-0"  # round 2 critiques round 1's revision
    assert revs[0] == Revision(
        "out1-0",
        "out5-0",
        [
            {"principle": "kind", "critique": "out2-0", "revision": "out3-0"},
            {"principle": "kind", "critique": "out4-0", "revision": "out5-0"},
        ],
    )


def test_revision_pairs_skip_and_count_unusable_revisions():
    step = [{"principle": "kind", "critique": "It is rude.", "revision": "x"}]
    revs = [
        Revision("You fool.", "I'd rather not insult you.", step),
        Revision("Fine.", "  Fine. ", step),
        Revision("Rude.", " ", step),
        Revision("", "Hello.", step),
    ]
    pairs, skipped = revision_pairs(["a", "b", "c", "d"], revs, {"annotator": "revise:m"})
    assert skipped == {"unchanged": 1, "empty_revision": 1, "empty_original": 1}
    (p,) = pairs
    assert (p.prompt, p.chosen, p.rejected) == ("a", "I'd rather not insult you.", "You fool.")
    assert p.meta == {"annotator": "revise:m", "principle": "kind", "critique": "It is rude."}


def test_revise_command_writes_pairs_reward_training_reads(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "rev"
    result = runner.invoke(
        app,
        [
            "revise",
            f"model={tiny_model_dir}",
            f"prompts={tiny_data['prompts']}",
            f"output_dir={out}",
            "limit=4",
            "precision=fp32",
            "generation.max_new_tokens=6",
            "generation.batch_size=4",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(result.stdout)
    assert summary["stage"] == "revise" and summary["prompts"] == 4
    assert summary["pairs"] + summary["pairs_skipped"] == 4
    rows = [json.loads(line) for line in (out / "revisions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["steps"][0]["principle"] in {p.name for p in load_constitution().principles} for r in rows)
    pairs = read_preferences(out / "preferences.jsonl")
    assert len(pairs) == summary["pairs"]
    for p in pairs:
        assert p.meta["annotator"] == f"revise:{tiny_model_dir}" and "critique" in p.meta and "principle" in p.meta


def test_revise_config_rejects_zero_rounds():
    with pytest.raises(ConfigError, match="rounds must be at least 1"):
        load_config(ReviseConfig, None, ["rounds=0"])
    assert isinstance(Principle("n", "c", "r").rubric_text, str)
