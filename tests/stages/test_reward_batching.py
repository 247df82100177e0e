"""Reward-model batching: the pairs of a prompt stay together and each response is scored once."""

import json

import pytest

from tether.data.records import PreferencePair
from tether.stages.reward import pair_stream, unique_responses


def pairs_for(prompt: str, responses: list[str]) -> list[PreferencePair]:
    return [PreferencePair(prompt=prompt, chosen=a, rejected=b) for i, a in enumerate(responses) for b in responses[i + 1 :]]


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
    assert all(len(set(prompts[k : k + 3])) == 1 for k in range(0, 9, 3))  # three blocks of one prompt each
    assert pair_stream(pairs, seed=0, n_needed=9, group_by_prompt=True) == stream  # deterministic
    assert len(pair_stream(pairs, seed=0, n_needed=20, group_by_prompt=True)) == 20  # wraps into a second epoch


def test_held_out_pairs_never_share_a_prompt_with_training_pairs():
    from tether.stages.reward import split_by_prompt

    pairs = [q for i in range(10) for q in pairs_for(f"prompt {i}", ["a", "b", "c"])]
    train, held_out = split_by_prompt(pairs, eval_fraction=0.2, seed=0)
    assert len(train) + len(held_out) == 30 and len(held_out) == 6  # 2 of 10 prompts, 3 pairs each
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}


def test_pack_shared_prompts_lays_out_prompt_once_then_each_response():
    from tether.data.collate import pack_shared_prompts

    packed = pack_shared_prompts([([5, 6, 7], [[8, 9], [10]]), ([11], [[12, 13, 14]])], pad_id=0)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]]
    # each response continues the positions of its prompt, as it would in a row of its own
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 3, 0, 0]]
    assert packed["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, -1, -1]]
    assert packed["ends"].tolist() == [[0, 4], [0, 5], [1, 3]]


def test_shared_prompt_mask_hides_other_responses_and_padding():
    import torch

    from tether.models.reward_model import shared_prompt_mask

    mask = shared_prompt_mask(torch.tensor([[0, 0, 1, 1, 2, -1]]))[0, 0].int()
    assert mask.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # the second response sees the prompt and itself, not the first response
        [0, 0, 0, 0, 0, 1],  # padding sees only itself (an all-false row would give NaN)
    ]


def test_packed_rewards_equal_separate_rows_in_input_order(tiny_model_dir):
    import torch

    from tether.models.loading import load_tokenizer
    from tether.models.reward_model import batch_rewards, can_pack, init_reward_model, score_texts

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = init_reward_model(str(tiny_model_dir), tokenizer.pad_token_id, seed=0)
    # prompts interleaved and of different lengths; responses of different lengths
    prompts = ["tell me a story about a cat", "hi", "tell me a story about a cat", [{"role": "user", "content": "hi"}], "hi"]
    responses = ["once upon a time", "hello there friend", "no", "hello", "hey"]
    with torch.no_grad():
        packed = batch_rewards(model, tokenizer, prompts, responses, 64, 32, pack=True)
        separate = batch_rewards(model, tokenizer, prompts, responses, 64, 32, pack=False)
    assert torch.allclose(packed, separate, atol=1e-5)
    assert len(set(separate.tolist())) == 5  # five different rewards, so a mix-up of the order would show
    scored = score_texts(model, tokenizer, prompts, responses, 64, 32, batch_size=2, precision="fp32")
    assert torch.allclose(scored, separate, atol=1e-5)
    assert can_pack(model, tokenizer, [PreferencePair("hi", "a", "b")], 64, 32)


def test_packed_training_gradients_match_separate_rows(tiny_model_dir):
    import torch

    from tether.models.loading import load_tokenizer
    from tether.models.reward_model import batch_rewards, init_reward_model

    tokenizer = load_tokenizer(str(tiny_model_dir))
    grads = []
    for pack in (True, False):
        model = init_reward_model(str(tiny_model_dir), tokenizer.pad_token_id, seed=0)
        r = batch_rewards(model, tokenizer, ["a question", "a question", "other"], ["yes", "no", "maybe"], 64, 32, pack=pack)
        (r[0] - r[1] + r[2]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_bucket_by_length_batches_similar_lengths_and_keeps_the_examples():
    from tether.training import bucket_by_length, index_stream

    lengths = [(i * 37) % 100 for i in range(64)]
    stream = index_stream(64, seed=0, n_needed=64)
    bucketed = bucket_by_length(stream, lambda i: lengths[i], batch_size=4, seed=0, window=8)
    assert bucketed == bucket_by_length(stream, lambda i: lengths[i], batch_size=4, seed=0, window=8)  # deterministic
    for start in range(0, 64, 32):  # each window holds the same examples as before
        assert sorted(bucketed[start : start + 32]) == sorted(stream[start : start + 32])

    def spread(s):
        return sum(max(lengths[i] for i in s[k : k + 4]) - min(lengths[i] for i in s[k : k + 4]) for k in range(0, 64, 4))

    assert spread(bucketed) < spread(stream) / 3
    # a short remainder stays at the end, so every earlier batch boundary holds
    tail = bucket_by_length(stream[:30], lambda i: lengths[i], batch_size=4, seed=0, window=8)
    assert sorted(tail) == sorted(stream[:30]) and sorted(tail[28:]) == sorted(sorted(stream[:30], key=lambda i: lengths[i])[28:])


def test_bucketing_keeps_the_pairs_of_a_prompt_adjacent():
    from tether.stages.reward import pair_stream

    pairs = [q for i in range(8) for q in pairs_for(f"prompt {'x' * i}", ["a", "b", "c"])]
    lengths = {f"prompt {'x' * i}": i for i in range(8)}
    from tether.training import bucket_by_length

    stream = bucket_by_length(pair_stream(pairs, 0, 24, True), lambda i: (lengths[pairs[i].prompt], pairs[i].prompt), 3, 0, window=4)
    prompts = [pairs[i].prompt for i in stream]
    assert all(len(set(prompts[k : k + 3])) == 1 for k in range(0, 24, 3))


def test_token_chunks_bound_the_padded_size():
    from tether.stages.reward import token_chunks

    lengths = {0: (10, 0), 1: (10, 0), 2: (30, 1), 3: (5, 2), 4: (50, 3)}  # pair -> (packed row length, prompt)
    key = lengths.__getitem__
    assert token_chunks([0, 1, 2, 3, 4], key, 0, packed=True) == [[0, 1, 2, 3, 4]]  # 0: no limit
    # packed: pairs 0 and 1 share one row of 10; pair 2 makes 2 rows x 30 = 60; pair 3 would make 3 x 30 = 90
    assert token_chunks([0, 1, 2, 3, 4], key, 60, packed=True) == [[0, 1, 2], [3], [4]]
    assert token_chunks([0, 1, 2, 3, 4], key, 40, packed=True) == [[0, 1], [2], [3], [4]]
    # a pair longer than the budget still gets a chunk of its own
    assert token_chunks([4, 0], key, 20, packed=False) == [[4], [0]]
    # unpacked: every response is a row; 4 rows x 10 = 40
    assert token_chunks([0, 1, 3], key, 40, packed=False) == [[0, 1], [3]]


def test_a_token_budget_or_accumulation_leaves_the_training_step_unchanged(tiny_model_dir, tiny_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from tether.config import RewardConfig, load_config
    from tether.stages.reward import train_reward

    common = [
        f"model={tiny_model_dir}",
        f"data={tiny_data['prefs']}",
        "max_steps=1",
        "batch_size=8",
        "eval_fraction=0.2",
        "precision=fp32",
        "optim.max_grad_norm=0",
        "optim.warmup_ratio=0",
        "optim.lr=1e-3",
        "normalize_samples=8",
    ]
    whole = train_reward(load_config(RewardConfig, None, [*common, f"output_dir={tmp_path / 'a'}"]))
    split = train_reward(load_config(RewardConfig, None, [*common, f"output_dir={tmp_path / 'b'}", "max_tokens_per_forward=64"]))
    # and the same 8 pairs as two accumulated micro-batches of 4
    accum = train_reward(load_config(RewardConfig, None, [*common, f"output_dir={tmp_path / 'c'}", "batch_size=4", "grad_accum=2"]))
    assert whole["steps"] == split["steps"] == accum["steps"] == 1
    # Adam's first step is ~lr * sign(g), nearly blind to a gradient off by a constant factor (a missing 1/grad_accum):
    # the loss and the pre-clip gradient norm must agree as well as the weights
    (la,), (lb,), (lc,) = (
        [row for row in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines()) if "train/loss" in row]
        for d in ("a", "b", "c")
    )
    assert la["train/grad_norm"] > 0
    for other in (lb, lc):
        assert other["train/loss"] == pytest.approx(la["train/loss"], rel=1e-5)
        assert other["train/grad_norm"] == pytest.approx(la["train/grad_norm"], rel=1e-4)
    wa, wb, wc = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("a", "b", "c"))
    for k in wa:  # compared at 1% of Adam's step (lr = 1e-3)
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)
        torch.testing.assert_close(wa[k], wc[k], atol=1e-5, rtol=0)
