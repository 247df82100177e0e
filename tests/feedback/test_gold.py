"""Tests for the gold scorer, with the expected values worked out by hand."""

from __future__ import annotations

import pytest

from tether.feedback.gold import (
    GOLD_WEIGHTS,
    content_words,
    gold_features,
    gold_score,
    gold_scores,
    stem,
)

HAIKU = "Write a haiku about autumn"
TIPS = "Give three tips for staying healthy."


def test_weights_are_documented_values_and_read_only() -> None:
    assert dict(GOLD_WEIGHTS) == {
        "relevance": 2.0,
        "complete": 1.0,
        "repetition": -2.0,
        "length": 1.0,
        "empty": -2.0,
    }
    with pytest.raises(TypeError):
        GOLD_WEIGHTS["relevance"] = 5.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("staying", "stay"),  # strip "ing": "stay" keeps 4 letters
        ("classes", "class"),  # strip "es"
        ("trees", "tree"),  # "es" would leave "tre" (3), so strip "s" instead
        ("played", "play"),  # strip "ed"
        ("tips", "tips"),  # "tip" would be 3 letters: unchanged
        ("sing", "sing"),  # "s" would be 1 letter: unchanged
        ("healthy", "healthy"),  # no suffix
    ],
)
def test_stem(word: str, expected: str) -> None:
    assert stem(word) == expected


def test_content_words() -> None:
    # "write" and "about" are stopwords, "a" is too short.
    assert content_words(HAIKU) == {"haiku", "autumn"}
    # "give" is a stopword, "for" too short; "staying" -> "stay".
    assert content_words(TIPS) == {"three", "tips", "stay", "healthy"}


def test_relevance_counts_stemmed_prompt_content_words() -> None:
    # Prompt content words {three, tips, stay, healthy}; the response has
    # "stay" and "healthy" but not "three" or "tips": 2 / 4.
    response = "Stay active, sleep well, and eat healthy food."
    assert gold_features(TIPS, response)["relevance"] == pytest.approx(0.5)
    # "Stays" stems to "stay" as well; "tips" and "three" now present: 4 / 4.
    response = "Here are three tips: sleep, eat healthy food, and stays active."
    assert gold_features(TIPS, response)["relevance"] == pytest.approx(1.0)


def test_relevance_is_half_without_prompt_content_words() -> None:
    # "Why?" has no word of >= 4 letters, so there is no evidence either way.
    assert gold_features("Why?", "Because it is.")["relevance"] == 0.5


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Hello.", 1.0),
        ("Really?!", 1.0),
        ('He said "hi."', 1.0),  # closing quote after the period
        ("(See above.)", 1.0),  # closing bracket after the period
        ("*Leaves fall.*", 1.0),  # Markdown emphasis after the period
        ("Done!  \n\n", 1.0),  # trailing whitespace is stripped
        ("```python\nprint(1)\n```", 1.0),  # closing code fence
        ("Autumn leaves drift down and the", 0.0),  # cut off mid-sentence
        ("Here are three tips:", 0.0),
        ("", 0.0),
    ],
)
def test_complete(response: str, expected: float) -> None:
    assert gold_features(HAIKU, response)["complete"] == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # 3-grams: (the cat sat) (cat sat the) (sat the cat) (the cat sat);
        # only the 4th repeats an earlier one: 1/4.
        ("the cat sat the cat sat", 1 / 4),
        # 7 3-grams; the first three are new, the last four all repeat: 4/7.
        ("the cat sat the cat sat the cat sat", 4 / 7),
        # Case and edge punctuation are ignored: same as the first example.
        ("The cat sat. The cat, sat!", 1 / 4),
        # 8 words, 6 3-grams, each distinct: 0.
        ("one two three four five six seven eight", 0.0),
        # "a a a a": 3-grams (a a a) (a a a): 1/2.
        ("a a a a", 1 / 2),
        ("too short", 0.0),  # fewer than 3 words
    ],
)
def test_repetition(response: str, expected: float) -> None:
    assert gold_features(HAIKU, response)["repetition"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n_words", "expected"),
    [
        (0, 0.0),
        (10, 0.4),  # 10 / 25
        (25, 1.0),  # saturated
        (120, 1.0),  # still no penalty
        (180, 0.5),  # 1 - 60 / 120
        (240, 0.0),  # 1 - 120 / 120
        (300, -0.5),  # 1 - 180 / 120
    ],
)
def test_length(n_words: int, expected: float) -> None:
    response = " ".join(f"w{i}" for i in range(n_words))
    assert gold_features(HAIKU, response)["length"] == pytest.approx(expected)


def test_length_ignores_pure_punctuation_tokens() -> None:
    # "Yes" and "indeed" are words; the lone dash is not: 2 / 25.
    assert gold_features(HAIKU, "Yes - indeed.")["length"] == pytest.approx(2 / 25)


@pytest.mark.parametrize(
    ("response", "expected"),
    [("", 1.0), ("   ", 1.0), ("123 !!! 4.5", 1.0), ("ok", 0.0), ("42 cats", 0.0)],
)
def test_empty(response: str, expected: float) -> None:
    assert gold_features(HAIKU, response)["empty"] == expected


def test_gold_score_worked_example() -> None:
    # Content words {haiku, autumn}; the response has "autumn": relevance 1/2.
    # Ends with ".": complete 1. 4 words, 2 distinct 3-grams: repetition 0,
    # length 4/25 = 0.16. Score = 2*0.5 + 1*1 - 2*0 + 1*0.16 - 2*0 = 2.16.
    response = "Autumn leaves fall softly."
    assert gold_features(HAIKU, response) == pytest.approx(
        {"relevance": 0.5, "complete": 1.0, "repetition": 0.0, "length": 0.16, "empty": 0.0}
    )
    assert gold_score(HAIKU, response) == pytest.approx(2.16)


def test_gold_score_extremes() -> None:
    # 25 distinct words covering both content words, finished: 2 + 1 + 1 = 4.
    best = "Autumn haiku " + " ".join(f"word{i}" for i in range(23)) + "."
    assert gold_score(HAIKU, best) == pytest.approx(4.0)
    # Empty string: only the empty penalty applies.
    assert gold_score(HAIKU, "") == pytest.approx(-2.0)
    # ... plus 2 * 0.5 relevance when the prompt has no content words.
    assert gold_score("Why?", "") == pytest.approx(-1.0)


def test_gold_score_is_weighted_sum_of_features() -> None:
    for response in ["", "Autumn leaves.", "the cat sat the cat sat", "Eat well, sleep"]:
        features = gold_features(TIPS, response)
        expected = sum(GOLD_WEIGHTS[k] * features[k] for k in GOLD_WEIGHTS)
        assert gold_score(TIPS, response) == pytest.approx(expected)


def test_gold_prefers_helpful_over_degenerate_answers() -> None:
    good = "Here are three tips for staying healthy: eat vegetables, sleep eight hours, and walk daily."
    cut_off = "Here are three tips for staying healthy: eat vegetables, sleep eight hours, and"
    looping = "healthy healthy healthy healthy healthy healthy healthy healthy healthy."
    off_topic = "Autumn leaves fall softly on the quiet river."
    scores = gold_scores([TIPS] * 4, [good, cut_off, looping, off_topic])
    assert scores[0] > scores[1]
    assert scores[0] > scores[2]
    assert scores[0] > scores[3]


def test_gold_scores_pairs_by_index_and_checks_lengths() -> None:
    assert gold_scores([HAIKU, TIPS], ["", "Stay healthy."]) == [
        gold_score(HAIKU, ""),
        gold_score(TIPS, "Stay healthy."),
    ]
    with pytest.raises(ValueError, match="one response per prompt"):
        gold_scores([HAIKU], ["a", "b"])
