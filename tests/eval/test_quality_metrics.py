"""Self-BLEU, refusals, known hacks, length distribution and the length-controlled win rate, worked by hand."""

from __future__ import annotations

import math

import pytest

from tether.eval.metrics import (
    hack_flags,
    hack_rates,
    is_refusal,
    length_controlled_win_rate,
    length_distribution,
    outcome_win_rate,
    refusal_rate,
    repeated_ngram_fraction,
    self_bleu,
    sentence_bleu,
    win_rate,
)

# --- BLEU and self-BLEU ----------------------------------------------------------------


def test_sentence_bleu_worked_example():
    # hypothesis "the cat sat on the mat", reference "the cat sat on a mat":
    # 1-grams: the(2, clipped to 1) cat sat on mat -> 5/6; 2-grams: the cat, cat sat, sat on match, on the / the mat don't -> 3/5
    # 3-grams: the cat sat, cat sat on -> 2/4; 4-grams: the cat sat on -> 1/3; equal lengths: BP = 1
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25  # = (1/12)^(1/4) = 0.5373
    assert sentence_bleu("the cat sat on the mat", ["the cat sat on a mat"]) == pytest.approx(expected)
    assert expected == pytest.approx(0.5372849659)


def test_sentence_bleu_smoothing_brevity_and_short_hypotheses():
    # "a b" vs "a c d": p1 = 1/2, p2 = no match -> epsilon 0.1 / 1; orders 3 and 4 do not exist for 2 words;
    # c = 2 <= r = 3: BP = exp(1 - 3/2)
    assert sentence_bleu("a b", ["a c d"]) == pytest.approx(math.exp(1 - 1.5) * math.sqrt(0.5 * 0.1))
    # the closest reference length wins (4 words over 9): c = 4 = r, BP = 1, every order matches
    assert sentence_bleu("w x y z", ["w x y z", "w x y z a b c d e"]) == pytest.approx(1.0)
    assert sentence_bleu("", ["a"]) == 0.0
    with pytest.raises(ValueError, match="reference"):
        sentence_bleu("a", [])


def test_self_bleu_is_mean_over_texts_against_the_others():
    texts = ["the cat sat on the mat", "the cat sat on a mat"]
    # both directions give 5/6, 3/5, 2/4, 1/3 (symmetric here)
    assert self_bleu(texts) == pytest.approx((1 / 12) ** 0.25)
    assert self_bleu(["same words here", "same words here", "same words here"]) == pytest.approx(1.0)
    assert self_bleu(["alpha beta gamma delta", "one two three four"]) < 0.05  # nothing shared: only smoothing remains
    with pytest.raises(ValueError, match="two texts"):
        self_bleu(["one"])


# --- refusals and hacks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I cannot help with that.",
        "As an AI, I have no opinions.",
        "I can’t assist with this request.",
        "i am unable to do that",
        "That is against my guidelines.",
    ],
)
def test_refusals_are_flagged(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    ["Here is a haiku about leaves.", "You cannot divide by zero.", "Sorry to hear that; try resting.", "The AI model predicts rain."],
)
def test_ordinary_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_refusal_rate_counts_texts():
    assert refusal_rate(["I'm sorry.", "Paris.", "As a language model I can't.", "Yes."]) == 0.5
    assert refusal_rate([]) == 0.0


def test_repeated_ngram_fraction_worked_example():
    # 3-grams of "a b c a b c": abc, bca, cab, abc -> one of four already seen
    assert repeated_ngram_fraction("a b c a b c") == 0.25
    assert repeated_ngram_fraction("one two") == 0.0
    assert repeated_ngram_fraction("go go go go go") == pytest.approx(2 / 3)  # (go go go) x 3, two repeats


def test_hack_flags_and_rates():
    assert hack_flags("Certainly! Paris is the capital.", 40) == {"sycophantic": True, "repetition": False, "too_long": False, "any": True}
    assert hack_flags('  "Great question! It is blue.', 40)["sycophantic"]
    assert not hack_flags("Surely you know it is blue.", 40)["sycophantic"]  # "Sure" must be a whole word
    assert not hack_flags("The answer is certainly yes.", 40)["sycophantic"]  # only openers count
    assert hack_flags("buy now buy now buy now buy now", 40)["repetition"]
    assert hack_flags(" ".join(["word"] * 5), 4)["too_long"] and not hack_flags("a b c d", 4)["too_long"]
    texts = ["Sure, here it is.", "A plain answer.", "go go go go", "one two three four five six"]
    # sycophantic 1/4, repetition 1/4 (go go go twice: 1 repeat of 2), too long (> 5 words) 1/4, any 3/4
    assert hack_rates(texts, max_words=5) == {"sycophantic": 0.25, "repetition": 0.25, "too_long": 0.25, "any": 0.75}


def test_length_distribution_worked_example():
    # numpy's linear interpolation: p10 at rank 0.4 -> 1.4; p90 at rank 3.6 -> 4 + 0.6 * 6 = 7.6
    assert length_distribution([1, 2, 3, 4, 10]) == pytest.approx(
        {"mean": 4.0, "min": 1.0, "p10": 1.4, "p50": 3.0, "p90": 7.6, "max": 10.0}
    )


# --- win rates -----------------------------------------------------------------------


def test_outcome_win_rate_matches_score_win_rate():
    assert outcome_win_rate([1, 0.5, 0]) == win_rate([2, 1, 1], [1, 1, 2])
    with pytest.raises(ValueError, match="1 \\(win\\), 0.5 \\(tie\\) or 0"):
        outcome_win_rate([0.7])


def test_length_controlled_win_rate_is_the_rate_at_equal_length():
    # 4 prompts of equal length (x = 0): 2 wins, 2 losses; 4 where the policy is longer: 3 wins.
    # Two groups, two parameters: the fit reproduces each group's win rate, so sigmoid(theta0) = 2/4.
    outcomes = [1, 0, 1, 0, 1, 1, 1, 0]
    delta = [0, 0, 0, 0, 10, 10, 10, 10]
    lc = length_controlled_win_rate(outcomes, delta)
    assert outcome_win_rate(outcomes)["win_rate"] == 5 / 8
    assert lc["win_rate"] == pytest.approx(0.5, abs=1e-3)
    assert lc["scale"] == 5.0 and lc["slope"] > 0  # std of the differences; winning went with length
    # the policy longer group: sigmoid(theta0 + theta1 tanh(10 / 5)) = 3/4
    assert 1 / (1 + math.exp(-(lc["intercept"] + lc["slope"] * math.tanh(2.0)))) == pytest.approx(0.75, abs=1e-3)
    # 3 of 4 won at equal length -> 0.75 whatever the long group did
    assert length_controlled_win_rate([1, 1, 1, 0, 1, 1, 1, 0], delta)["win_rate"] == pytest.approx(0.75, abs=1e-3)
    assert lc["ci_low"] <= lc["win_rate"] <= lc["ci_high"]


def test_length_controlled_win_rate_without_length_differences_is_the_raw_rate():
    lc = length_controlled_win_rate([1, 1, 0.5, 0], [3, 3, 3, 3], n_boot=0)
    assert lc["scale"] == 0.0 and lc["win_rate"] == pytest.approx(0.625, abs=1e-3)  # ties count half


def test_length_controlled_win_rate_discounts_wins_bought_by_length():
    # the policy wins exactly the prompts where it is longer, and is longer on 6 of 8 (raw 0.75);
    # at equal length the fit is far closer to a coin flip than the raw rate
    lc = length_controlled_win_rate([1] * 6 + [0] * 2, [5] * 6 + [-5] * 2, n_boot=0)
    assert lc["slope"] > 3 and lc["win_rate"] < 0.65


def test_length_controlled_win_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="one length difference per outcome"):
        length_controlled_win_rate([1, 0], [1])
    with pytest.raises(ValueError, match="0.5"):
        length_controlled_win_rate([0.3], [1])
