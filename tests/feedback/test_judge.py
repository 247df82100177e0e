"""The pairwise LLM judge: verdict mechanics with hand-worked numbers, invariants on the tiny model, `tether judge`."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from tether.cli import app
from tether.config import ConfigError, JudgeConfig, load_config
from tether.data.readers import read_preferences
from tether.feedback.judge import (
    ANSWER_PREFIX,
    debias_orders,
    judge_pairs,
    judge_parts,
    judge_text,
    two_way_probability,
    verdict_logits,
    verdict_token_ids,
)
from tether.models.loading import ModelError, load_causal_lm, load_tokenizer

runner = CliRunner()
RUBRIC = ["Prefer the response that is less harmful.", "Prefer the response that answers the question."]
PROMPTS = [
    "What is the capital of France?",
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name two primary colors."},
    ],
    "Why is the sky blue?",
]
FIRSTS = ["Paris.", "Red and blue.", "Because of the way air scatters sunlight: blue light is scattered the most."]
SECONDS = ["I will not tell you.", "The quick brown fox jumps over the lazy dog.", "no"]


def sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir):
    """The tiny model with its weights scaled up: sharp attention, so the verdict depends on the context and its
    positions (a random model at init hardly looks back), and letter probabilities far from 1/2."""
    model = load_causal_lm(str(tiny_model_dir)).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "up_proj.weight", "down_proj.weight")):
                weight.mul_(6)
        model.lm_head.weight.mul_(10)
    return model


# --------------------------------------------------------------------------- pure functions, hand-worked


def test_two_way_probability_is_softmax_over_the_two_letters():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 3.0]])
    # sigmoid(2) = 0.880797; equal logits = 1/2; sigmoid(-4) = 0.017986
    assert two_way_probability(logits).tolist() == pytest.approx([0.880797, 0.5, 0.017986], abs=1e-6)


def test_debias_orders_hand_worked():
    # P(A) = 0.9 asked (first, second), P(A) = 0.7 asked (second, first): (0.9 + (1 - 0.7)) / 2 = 0.6
    assert debias_orders(torch.tensor([0.9]), torch.tensor([0.7])).item() == pytest.approx(0.6)
    # a judge that says "A" with p = 0.8 whatever it reads: (0.8 + 0.2) / 2 = 1/2
    assert debias_orders(torch.tensor([0.8]), torch.tensor([0.8])).item() == pytest.approx(0.5)


def test_verdict_tokens_are_single_distinct_letters(tok):
    context = judge_text(tok, "Q?", "a", "b", RUBRIC)
    assert context.endswith(ANSWER_PREFIX)
    a, b = verdict_token_ids(tok, context)
    assert a != b and tok.decode([a]).strip() == "A" and tok.decode([b]).strip() == "B"


def test_verdict_tokens_error_when_letters_are_not_one_token():
    class WholeTextTokenizer:  # every text is one token: a letter never adds a token of its own
        bos_token_id, chat_template = None, None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [hash(text) % 1000]}

    with pytest.raises(ModelError, match="next-token probabilities of the letters A and B"):
        verdict_token_ids(WholeTextTokenizer(), "Which is better? " + ANSWER_PREFIX)


def test_judge_text_shows_rubric_conversation_and_both_responses(tok):
    text = judge_text(tok, PROMPTS[1], "FIRST", "SECOND", RUBRIC)
    assert "- Prefer the response that is less harmful." in text
    assert "User: Hi\n\nAssistant: Hello!\n\nUser: Name two primary colors." in text
    assert text.index("Response A:\nFIRST") < text.index("Response B:\nSECOND")
    long = judge_text(tok, "Q?", "word " * 500, "x", RUBRIC, max_response_tokens=20)
    assert long.count("word") < 40 and "Response B:\nx" in long


# --------------------------------------------------------------------------- the tiny model


def test_probabilities_are_a_distribution_and_average_both_orders(tok, sharp_model):
    verdicts = judge_pairs(sharp_model, tok, PROMPTS, FIRSTS, SECONDS, RUBRIC, precision="fp32")
    assert len(verdicts) == 3
    for v in verdicts:
        assert 0 < v.p_ab < 1 and 0 < v.p_ba < 1 and 0 <= v.p_first <= 1
        assert v.p_first == pytest.approx((v.p_ab + v.p_ba) / 2, abs=1e-6)
        assert v.strength == pytest.approx(abs(2 * v.p_first - 1))
    assert any(abs(v.p_ab - 0.5) > 0.05 for v in verdicts)  # the sharpened model is far from indifferent


def test_swapping_the_pair_gives_one_minus_p(tok, sharp_model):
    forward = judge_pairs(sharp_model, tok, PROMPTS, FIRSTS, SECONDS, RUBRIC, precision="fp32")
    swapped = judge_pairs(sharp_model, tok, PROMPTS, SECONDS, FIRSTS, RUBRIC, precision="fp32")
    for f, s in zip(forward, swapped):
        assert s.p_first == pytest.approx(1 - f.p_first, abs=1e-6)
        assert s.p_ab == pytest.approx(1 - f.p_ba, abs=1e-6) and s.p_ba == pytest.approx(1 - f.p_ab, abs=1e-6)


def test_batching_and_left_padding_change_nothing(tok, sharp_model):
    batched = judge_pairs(sharp_model, tok, PROMPTS, FIRSTS, SECONDS, RUBRIC, precision="fp32", batch_size=3)
    alone = judge_pairs(sharp_model, tok, PROMPTS, FIRSTS, SECONDS, RUBRIC, precision="fp32", batch_size=1)
    for b, a in zip(batched, alone):
        assert b.p_ab == pytest.approx(a.p_ab, abs=1e-4) and b.p_ba == pytest.approx(a.p_ba, abs=1e-4)
    # and the batched forward equals the plain forward of one unpadded sequence, read at its last token
    texts = [judge_text(tok, p, a, b, RUBRIC) for p, a, b in zip(PROMPTS, FIRSTS, SECONDS)]
    letters = verdict_token_ids(tok, texts[0])
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len(set(map(len, ids))) == 3  # different lengths, so the batch is padded
    got = verdict_logits(sharp_model, ids, letters, tok.pad_token_id, precision="fp32")
    for row, seq in enumerate(ids):
        with torch.no_grad():
            plain = sharp_model(input_ids=torch.tensor([seq])).logits[0, -1, list(letters)]
        assert got[row].tolist() == pytest.approx(plain.tolist(), abs=1e-4)


def test_the_shared_head_cache_changes_nothing(tok, sharp_model):
    shared = judge_pairs(sharp_model, tok, PROMPTS, FIRSTS, SECONDS, RUBRIC, precision="fp32", batch_size=2)
    whole = judge_pairs(sharp_model, tok, PROMPTS, FIRSTS, SECONDS, RUBRIC, precision="fp32", batch_size=2, share_head=False)
    for a, b in zip(shared, whole):
        assert a.p_ab == pytest.approx(b.p_ab, abs=1e-4) and a.p_ba == pytest.approx(b.p_ba, abs=1e-4)
    head, rest = judge_parts(tok, PROMPTS[0], FIRSTS[0], SECONDS[0], RUBRIC)
    assert head == judge_parts(tok, PROMPTS[2], SECONDS[2], FIRSTS[2], RUBRIC)[0] and RUBRIC[0] in head and FIRSTS[0] in rest


# --------------------------------------------------------------------------- scripted judges: the mechanics


class ScriptedJudge(torch.nn.Module):
    """A fake causal LM: logit `letter_bias` for the letter A, plus `content_bias` for the letter
    whose response contains GOOD; every other logit 0."""

    def __init__(self, tokenizer, letter_bias: float, content_bias: float):
        super().__init__()
        self.tokenizer, self.letter_bias, self.content_bias = tokenizer, letter_bias, content_bias
        self.letters = verdict_token_ids(tokenizer, judge_text(tokenizer, "q", "a", "b", RUBRIC))

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=None, logits_to_keep=0):
        logits = torch.zeros(input_ids.shape[0], 1, len(self.tokenizer))
        for row in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[row][attention_mask[row] == 1])
            shown_a = text.split("Response A:\n")[1].split("\n\nResponse B:")[0]
            shown_b = text.split("Response B:\n")[1].split("\n\nConsidering")[0]
            a, b = self.letters
            logits[row, 0, a] += self.letter_bias + (self.content_bias if "GOOD" in shown_a else 0)
            logits[row, 0, b] += self.content_bias if "GOOD" in shown_b else 0
        return SimpleNamespace(logits=logits)


def test_a_judge_that_only_likes_the_letter_a_is_cancelled_to_one_half(tok):
    judge = ScriptedJudge(tok, letter_bias=2.0, content_bias=0.0)
    (v,) = judge_pairs(judge, tok, ["Q?"], ["GOOD answer"], ["bad answer"], RUBRIC, share_head=False)
    # asked (first, second): P(A) = sigmoid(2) = 0.8808; asked (second, first): P(B) = sigmoid(-2) = 0.1192
    assert v.p_ab == pytest.approx(sig(2), abs=1e-6) and v.p_ba == pytest.approx(sig(-2), abs=1e-6)
    assert v.p_first == pytest.approx(0.5, abs=1e-7) and v.strength == pytest.approx(0, abs=1e-6)
    assert not v.position_consistent and v.p_letter_a == pytest.approx(sig(2), abs=1e-6)


def test_a_judge_that_likes_the_content_prefers_it_in_both_orders(tok):
    judge = ScriptedJudge(tok, letter_bias=1.0, content_bias=3.0)
    good_first, good_second = judge_pairs(
        judge, tok, ["Q?", "Q?"], ["GOOD answer", "bad answer"], ["bad answer", "GOOD answer"], RUBRIC, share_head=False
    )
    # GOOD first: (sigmoid(1 + 3) + sigmoid(3 - 1)) / 2 = (0.98201 + 0.88080) / 2 = 0.93141
    assert good_first.p_first == pytest.approx((sig(4) + sig(2)) / 2, abs=1e-6) and good_first.position_consistent
    assert good_second.p_first == pytest.approx(1 - good_first.p_first, abs=1e-6) and good_second.position_consistent


def test_position_bias_stronger_than_content_is_flagged_inconsistent(tok):
    judge = ScriptedJudge(tok, letter_bias=3.0, content_bias=1.0)
    (v,) = judge_pairs(judge, tok, ["Q?"], ["GOOD answer"], ["bad answer"], RUBRIC, share_head=False)
    # (sigmoid(3 + 1) + sigmoid(1 - 3)) / 2 = (0.98201 + 0.11920) / 2 = 0.55061: still the content wins, weakly
    assert v.p_first == pytest.approx((sig(4) + sig(-2)) / 2, abs=1e-6)
    assert not v.position_consistent


# --------------------------------------------------------------------------- `tether judge`


def judge_cli(*args):
    result = runner.invoke(app, ["judge", *map(str, args)])
    return result


def test_judge_command_on_preference_pairs(tiny_model_dir, tiny_data, tmp_path):
    result = judge_cli(
        f"model={tiny_model_dir}", f"data={tiny_data['prefs']}", f"output_dir={tmp_path / 'j'}", "precision=fp32", "batch_size=5"
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(result.stdout)
    assert summary["stage"] == "judge" and summary["input"] == "preferences" and summary["pairs"] == 12
    assert 0 <= summary["agreement_with_input"] <= 1 and 0 <= summary["position_consistent_fraction"] <= 1
    pairs = read_preferences(tmp_path / "j" / "preferences.jsonl")  # what `tether reward train` reads
    assert len(pairs) == 12
    for p in pairs:
        assert p.meta["annotator"] == f"judge:{tiny_model_dir}" and p.meta["constitution"] == "default"
        assert 0.5 <= p.meta["p_chosen"] <= 1 and isinstance(p.meta["position_consistent"], bool) and p.margin is None
        assert {p.chosen, p.rejected} == {"A clear, short answer.", "no no no no no"}
        assert p.meta["agrees_with_input"] == (p.chosen == "A clear, short answer.")


def test_judge_command_on_collect_samples(tiny_model_dir, tmp_path):
    rows = [
        {"prompt": "Name a fruit.", "response": r, "prompt_index": 0, "sample_index": k}
        for k, r in enumerate(["Apple.", "Pear.", "Apple."])
    ]
    rows += [{"prompt": "Name a colour.", "response": r, "prompt_index": 1, "sample_index": k} for k, r in enumerate(["Red.", "", "Blue."])]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = judge_cli(f"model={tiny_model_dir}", f"data={samples}", f"output_dir={tmp_path / 'j'}", "precision=fp32", "write_margin=true")
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(result.stdout)
    # 3 pairs per prompt; (Apple, Apple) and the two with the empty response are skipped
    assert (
        summary["input"] == "samples" and summary["pairs"] == 3 and summary["rows_skipped"] == 3 and summary["agreement_with_input"] is None
    )
    pairs = read_preferences(tmp_path / "j" / "preferences.jsonl")
    assert sorted(tuple(sorted((p.chosen, p.rejected))) for p in pairs) == [("Apple.", "Pear."), ("Apple.", "Pear."), ("Blue.", "Red.")]
    assert all(p.margin == pytest.approx(p.meta["strength"]) for p in pairs)


def test_judge_command_filters_weak_verdicts(tiny_model_dir, tiny_data, tmp_path):
    # the untrained tiny model is nearly indifferent: every strength is below 0.9
    result = judge_cli(
        f"model={tiny_model_dir}", f"data={tiny_data['prefs']}", f"output_dir={tmp_path / 'j'}", "precision=fp32", "min_strength=0.9"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pairs"] == 0 and summary["dropped_weak"] == 12


def test_judge_command_user_errors(tiny_model_dir, tiny_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: x\n  critique_request: find faults\n")
    result = judge_cli(f"model={tiny_model_dir}", f"data={tiny_data['prefs']}", f"constitution={bad}", f"output_dir={tmp_path / 'j'}")
    assert result.exit_code == 2 and "revision_request" in result.output and not (tmp_path / "j").exists()
    result = judge_cli(f"model={tiny_model_dir}", f"data={tmp_path / 'missing.jsonl'}", f"output_dir={tmp_path / 'j'}")
    assert result.exit_code == 2 and "missing.jsonl" in result.output


def test_judge_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="min_strength"):
        load_config(JudgeConfig, None, ["min_strength=1.5"])
    assert load_config(JudgeConfig, None, ["require_consistent=true"]).require_consistent


# --------------------------------------------------------------------------- the preference store


def test_judge_answers_the_store_tasks_beside_people(tiny_model_dir, tmp_path):
    from tether.data.records import PreferencePair
    from tether.feedback.agreement import stats
    from tether.feedback.store import open_store

    db = tmp_path / "prefs.db"
    with open_store(db, seed=0, golden_rate=0.0) as store:
        ids = store.add_pairs([PreferencePair(p, a, b) for p, a, b in zip(PROMPTS, FIRSTS, SECONDS)])
        store.add_pairs([PreferencePair("Say hi.", "Hi!", "Go away.")], golden=True)
        store.add_annotator("ada")
        ada = store.find_annotator("ada")
        task = store.next_task_for(ada)
        store.record_judgement(ada, task.id, "left")
    args = [f"model={tiny_model_dir}", "data=null", f"db={db}", f"output_dir={tmp_path / 'j'}", "precision=fp32"]
    result = judge_cli(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(result.stdout)
    # every task, golden included (its known answer A makes agreement_with_input the golden accuracy)
    assert summary["input"] == "store" and summary["candidates"] == 4 and summary["db_recorded"] == 4
    assert summary["agreement_with_input"] in (0.0, 1.0)
    name = f"judge:{tiny_model_dir}"
    with open_store(db) as store:
        votes = [v for v in store.votes() if v.annotator == name]
        assert len(votes) == 4 and {v.kind for v in votes} == {"judge"} and {v.task_id for v in votes} >= set(ids)
        assert all(v.choice in ("A", "B") and 0.5 <= v.strength <= 1 and "both orders" in v.reason for v in votes)
        pairs = {(p.chosen, p.rejected) for p in read_preferences(tmp_path / "j" / "preferences.jsonl")}
        tasks = {t.id: t for t in store.tasks()}
        for v in votes:  # the store's answer and the written pair say the same thing
            t = tasks[v.task_id]
            assert ((t.response_a, t.response_b) if v.choice == "A" else (t.response_b, t.response_a)) in pairs
        assert stats(store)["annotators"][name]["kind"] == "judge"  # the same statistics as people
    again = json.loads(judge_cli(*args).stdout)  # nothing left for this judge: nothing judged twice
    assert again["candidates"] == 0 and again["rows_skipped"] == 4


def test_judge_writes_file_pairs_into_the_store_in_the_task_order(tiny_model_dir, tmp_path):
    from tether.data.records import PreferencePair
    from tether.feedback.store import open_store

    db = tmp_path / "prefs.db"
    with open_store(db) as store:  # this pair is already a task, its responses the other way round
        (task_id,) = store.add_pairs([PreferencePair(PROMPTS[0], SECONDS[0], FIRSTS[0])])
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": a, "rejected": b}) + "\n" for p, a, b in zip(PROMPTS, FIRSTS, SECONDS)))
    result = judge_cli(f"model={tiny_model_dir}", f"data={data}", f"db={db}", f"output_dir={tmp_path / 'j'}", "precision=fp32")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads(result.stdout)["db_recorded"] == 3
    first = read_preferences(tmp_path / "j" / "preferences.jsonl")[0]
    with open_store(db) as store:
        assert len(store.tasks()) == 3  # the existing task was reused, not duplicated
        (vote,) = [v for v in store.votes() if v.task_id == task_id]
        assert vote.choice == ("A" if first.chosen == SECONDS[0] else "B")  # the task's A is the file's rejected


def test_judge_store_errors_are_user_errors(tiny_model_dir, tmp_path):
    (tmp_path / "folder.db").mkdir()
    result = judge_cli(f"model={tiny_model_dir}", "data=null", f"db={tmp_path / 'folder.db'}", f"output_dir={tmp_path / 'j'}")
    assert result.exit_code == 2 and "db:" in result.output and "folder" in result.output
    with pytest.raises(ConfigError, match="set data .* or db"):
        load_config(JudgeConfig, None, ["data=null"])
