"""The RLVR example: the exact-match arithmetic checker and the problem generator."""

import json

import pytest

from tether.data.readers import read_prompts
from tether.rewards.arithmetic import exact_match, last_number, make_problems, number_only, write_problem_files
from tether.rewards.functions import RewardFunctionError


@pytest.mark.parametrize(
    "text,value",
    [
        ("82", 82.0),
        ("The answer is 82.", 82.0),
        ("37 + 45 = 82", 82.0),
        ("-8", -8.0),
        ("1,234 apples", 1234.0),
        ("3.5", 3.5),
        ("no number here", None),
        ("", None),
    ],
)
def test_last_number(text, value):
    assert last_number(text) == value


def test_exact_match_reads_the_last_number():
    meta = [{"answer": 82}] * 5
    completions = ["82", "37 + 45 = 82", "82 is not 83", "Let me think: 37 + 45", "eighty-two"]
    assert exact_match([""] * 5, completions, meta) == [1.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(RewardFunctionError, match="no numeric 'answer'"):
        exact_match([""], ["82"], [{}])


def test_number_only_checks_the_form():
    completions = ["82", " 82. ", "-8", "1,234", "3.5", "82 apples", "The answer is 82", "37 + 45 = 82", ""]
    assert number_only([""] * 9, completions, [{}] * 9) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_problems_are_seeded_distinct_and_correct():
    rows = make_problems(300, seed=3)
    assert rows == make_problems(300, seed=3) and rows != make_problems(300, seed=4)
    keys = {(r["meta"]["a"], r["meta"]["op"], r["meta"]["b"]) for r in rows}
    assert len(keys) == 300
    for r in rows:
        a, op, b, answer = r["meta"]["a"], r["meta"]["op"], r["meta"]["b"], r["meta"]["answer"]
        assert 10 <= a <= 99 and 10 <= b <= 99 and answer == (a + b if op == "+" else a - b) and answer >= 0
        assert r["prompt"] == f"What is {a} {op} {b}? Answer with the number only."
    with pytest.raises(ValueError, match="only 8 "):
        make_problems(9, low=1, high=2)  # 2 * 2 operand pairs * 2 ops = 8 problems exist


def test_files_split_disjoint_and_meta_reaches_the_checker(tmp_path):
    train, held_out = write_problem_files(tmp_path, n_train=50, n_held_out=20, seed=0)
    a, b = read_prompts(str(train)), read_prompts(str(held_out))
    assert len(a) == 50 and len(b) == 20 and not {r.prompt for r in a} & {r.prompt for r in b}
    # the answer travels in the prompt row's meta to the reward function's metadata
    answers = [json.loads(line)["meta"]["answer"] for line in held_out.read_text().splitlines()]
    assert exact_match([r.prompt for r in b], [str(x) for x in answers], [r.meta for r in b]) == [1.0] * 20
