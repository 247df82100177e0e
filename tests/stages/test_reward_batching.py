"""Reward-model batching: the pairs of a prompt stay together and each response is scored once."""

from tether.data.records import PreferencePair
from tether.stages.reward import pair_stream, unique_responses


def pairs_for(prompt: str, responses: list[str]) -> list[PreferencePair]:
    return [PreferencePair(prompt=prompt, chosen=a, rejected=b) for i, a in enumerate(responses) for b in responses[i + 1:]]


def test_unique_responses_scores_each_response_once():
    batch = pairs_for("p", ["a", "b", "c", "d"])  # 4 choose 2 = 6 pairs over 4 responses
    prompts, responses, chosen, rejected = unique_responses(batch)
    assert responses == ["a", "b", "c", "d"] and prompts == ["p"] * 4
    assert [(responses[c], responses[r]) for c, r in zip(chosen, rejected)] == [(p.chosen, p.rejected) for p in batch]


def test_same_text_under_two_prompts_is_two_responses():
    batch = [PreferencePair("p", "x", "y"), PreferencePair([{"role": "user", "content": "q"}], "x", "y")]
    _, responses, chosen, rejected = unique_responses(batch)
    assert len(responses) == 4 and chosen == [0, 1] and rejected == [2, 3]  # chosen slots are filled first


def test_pair_stream_keeps_groups_adjacent_and_covers_every_pair():
    pairs = pairs_for("p1", ["a", "b", "c"]) + pairs_for("p2", ["d", "e", "f"]) + pairs_for("p3", ["g", "h", "i"])
    stream = pair_stream(pairs, seed=0, n_needed=9, group_by_prompt=True)
    assert sorted(stream) == list(range(9))
    prompts = [pairs[i].prompt for i in stream]
    assert all(len(set(prompts[k:k + 3])) == 1 for k in range(0, 9, 3))  # three blocks of one prompt each
    assert pair_stream(pairs, seed=0, n_needed=9, group_by_prompt=True) == stream  # deterministic
    assert len(pair_stream(pairs, seed=0, n_needed=20, group_by_prompt=True)) == 20  # wraps into a second epoch


def test_held_out_pairs_never_share_a_prompt_with_training_pairs():
    from tether.stages.reward import split_by_prompt

    pairs = [q for i in range(10) for q in pairs_for(f"prompt {i}", ["a", "b", "c"])]
    train, held_out = split_by_prompt(pairs, eval_fraction=0.2, seed=0)
    assert len(train) + len(held_out) == 30 and len(held_out) == 6  # 2 of 10 prompts, 3 pairs each
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}
