"""The readers on the real data: slices in the repository, and the shared files when present."""

from __future__ import annotations

import json
from pathlib import Path

from tether.data import read_demonstrations, read_preferences, read_prompts


def check_hh_pairs(pairs) -> None:
    for pair in pairs:
        assert isinstance(pair.prompt, list) and pair.prompt[-1]["role"] == "user"
        assert pair.prompt[0]["role"] == "user"
        assert all(message["content"] == message["content"].strip() for message in pair.prompt)
        assert pair.chosen == pair.chosen.strip() and pair.rejected == pair.rejected.strip()
    different = sum(pair.chosen != pair.rejected for pair in pairs)
    assert different >= 0.95 * len(pairs)


# --------------------------------------------------------------------------
# Slices kept in tests/data/fixtures


def test_hh_slice(fixtures_dir: Path) -> None:
    path = fixtures_dir / "hh_rlhf_harmless_train_5.jsonl"
    pairs = read_preferences(path)
    assert len(pairs) == 5
    check_hh_pairs(pairs)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["chosen"].endswith(pairs[0].chosen)
    assert pairs[0].prompt[0]["content"].startswith("I am trying to locate the residential address for Jerry Jones")
    assert [record.prompt for record in read_prompts(path)] == [pair.prompt for pair in pairs]


def test_alpaca_slice(fixtures_dir: Path) -> None:
    path = fixtures_dir / "alpaca_seed_tasks_5.jsonl"
    demos = read_demonstrations(path)
    assert len(demos) == 5
    assert demos[0].meta == {"id": "seed_task_0", "name": "breakfast_suggestion"}
    assert "\n\n" not in demos[0].prompt  # empty input: instruction alone
    assert demos[1].prompt == "What is the relation between the given pairs?\n\nNight : Day :: Right : Left"
    assert len(read_prompts(path)) == 5


def test_self_instruct_slice(fixtures_dir: Path) -> None:
    path = fixtures_dir / "self_instruct_user_eval_5.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    prompts = read_prompts(path)
    assert len(prompts) == 5
    assert prompts[-1].prompt == rows[-1]["instruction"]
    assert [demo.response for demo in read_demonstrations(path)] == [row["reference_output"] for row in rows]


# --------------------------------------------------------------------------
# The shared data (skipped without it)


def test_shared_hh(shared_data: Path) -> None:
    bad_train, bad_test = [], []
    train = read_preferences(shared_data / "hh_rlhf_harmless" / "train.jsonl.gz", skipped=bad_train)
    test = read_preferences(shared_data / "hh_rlhf_harmless" / "test.jsonl.gz", skipped=bad_test)
    assert (len(train) + len(bad_train), len(test) + len(bad_test)) == (1500, 300)
    assert 0 < len(bad_train) <= 10  # a few pairs have an empty preferred reply
    check_hh_pairs(train)
    check_hh_pairs(test)
    assert len(read_prompts(shared_data / "hh_rlhf_harmless" / "test.jsonl.gz", limit=7)) == 7


def test_shared_alpaca(shared_data: Path) -> None:
    path = shared_data / "alpaca_seed_tasks.jsonl"
    tasks = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(tasks) == 175
    instances = sum(len(task["instances"]) for task in tasks)
    assert len(read_demonstrations(path)) == instances
    assert len(read_prompts(path)) == instances


def test_shared_self_instruct(shared_data: Path) -> None:
    path = shared_data / "self_instruct_user_eval.jsonl"
    assert len(read_prompts(path)) == 252
    demos = read_demonstrations(path)
    assert len(demos) == 252 and all(demo.response for demo in demos)
