"""Reward sources: functions, reward models and ensembles, an LLM judge, and their weighted sum."""

from pathlib import Path

import pytest
import torch

from tether.config import RewardSourceSettings
from tether.models.loading import load_tokenizer, save_model
from tether.models.reward_model import RewardNormalization, init_reward_model, save_ensemble_manifest, save_normalization, score_texts
from tether.rewards.sources import load_reward_sources, score_pairs, score_samples

FNS = Path(__file__).resolve().parents[1] / "stages" / "reward_fns.py"
PROMPTS = ["Name two primary colors.", "Name two primary colors.", "Why is the sky blue?", "Why is the sky blue?"]
COMPLETIONS = ["Red and blue.", "eee", "Because of Rayleigh scattering.", "no"]


def source(type_, path, **kw):
    return RewardSourceSettings(type=type_, path=str(path), **kw)


def test_weighted_sum_of_functions():
    # letter_e: 'Red and blue.' has 2 e of 13 characters; 'eee' 3/3; ... constant: 1.0
    # total = 2 * letter_e + 0.5 * 1.0
    sources = load_reward_sources([source("function", f"{FNS}:letter_e", weight=2.0), source("function", f"{FNS}:constant", weight=0.5)])
    total, parts = score_samples(sources, PROMPTS, COMPLETIONS, [{}] * 4)
    e = [2 / 13, 1.0, COMPLETIONS[2].count("e") / len(COMPLETIONS[2]), 0.0]
    assert total == pytest.approx([2 * x + 0.5 for x in e])
    assert list(parts) == ["function:letter_e", "function:constant"] and parts["function:constant"] == [1.0] * 4


def test_a_dropped_sample_is_dropped_from_the_sum():
    sources = load_reward_sources([source("function", f"{FNS}:drop_odd"), source("function", f"{FNS}:constant", weight=3.0)])
    total, _ = score_samples(sources, PROMPTS, COMPLETIONS, [{}] * 4)
    assert total == [4.0, None, 4.0, None]


def test_metadata_reaches_the_function():
    sources = load_reward_sources([source("function", f"{FNS}:hash_unless_fixed")])
    total, _ = score_samples(sources, PROMPTS, COMPLETIONS, [{"fixed": True}, {}, {"fixed": True}, {}])
    assert total[0] == total[2] == 1.0 and 0 <= total[1] < 1 and total[1] != total[3]


def test_same_named_sources_get_numbered():
    sources = load_reward_sources([source("function", f"{FNS}:constant"), source("function", f"{FNS}:constant")])
    assert [s.name for s in sources] == ["function:constant", "function:constant#1"]


@pytest.fixture(scope="module")
def reward_models(tiny_model_dir, tmp_path_factory):
    """Two tiny reward models (seeds 0 and 1; gain 2, bias 1 and the identity) and an ensemble folder listing both."""
    root = tmp_path_factory.mktemp("rms")
    tok = load_tokenizer(str(tiny_model_dir))
    for seed, norm in ((0, RewardNormalization(gain=2.0, bias=1.0)), (1, RewardNormalization())):
        model = init_reward_model(str(tiny_model_dir), tok.pad_token_id, seed=seed)
        save_model(model, tok, root / f"m{seed}")
        save_normalization(root / f"m{seed}", norm)
    save_ensemble_manifest(root, ["m0", "m1"])
    return root


def raw(path, prompts, completions):
    from tether.models.reward_model import load_reward_model

    rm = load_reward_model(str(path))
    return score_texts(rm.model, rm.tokenizer, prompts, completions, precision="fp32", pack=False)


def test_reward_model_source_is_the_normalised_score(reward_models):
    (scorer,) = load_reward_sources([source("model", reward_models / "m0")], precision="fp32")
    got = torch.tensor(scorer.score(PROMPTS, COMPLETIONS, [{}] * 4))
    assert torch.allclose(got, 2.0 * raw(reward_models / "m0", PROMPTS, COMPLETIONS) + 1.0, atol=1e-4)


def test_ensemble_source_is_mean_minus_k_std(reward_models):
    r0 = 2.0 * raw(reward_models / "m0", PROMPTS, COMPLETIONS) + 1.0
    r1 = raw(reward_models / "m1", PROMPTS, COMPLETIONS)
    members = torch.stack([r0, r1])
    for k in (0.0, 1.5):
        (scorer,) = load_reward_sources([source("model", reward_models, std_coef=k)], precision="fp32")
        expected = members.mean(0) - k * members.std(0, correction=0)
        assert torch.allclose(torch.tensor(scorer.score(PROMPTS, COMPLETIONS, [{}] * 4)), expected, atol=1e-4)


def test_judge_against_a_reference(tiny_model_dir):
    (judge,) = load_reward_sources([source("judge", tiny_model_dir, judge_against="reference", reference_key="gold")], precision="fp32")
    meta = [{"gold": "Red and yellow."}, {}, {"gold": "Light scatters."}, {"gold": 3}]
    scores = judge.score(PROMPTS, COMPLETIONS, meta)
    assert scores[1] is None and scores[3] is None  # no reference (or not text): dropped
    assert all(0.0 < s < 1.0 for s in (scores[0], scores[2]))
    # the completion equal to its reference is a coin flip, whatever the position bias (both orders averaged)
    same = judge.score(PROMPTS[:1], ["Red and yellow."], [{"gold": "Red and yellow."}])
    assert same[0] == pytest.approx(0.5, abs=1e-5)


def test_judge_round_robin_within_the_group(tiny_model_dir):
    # within a group the win probabilities of each pair add to 1, so the group's scores average exactly 0.5;
    # a completion alone with its prompt scores 0.5
    (judge,) = load_reward_sources([source("judge", tiny_model_dir, judge_against="group")], precision="fp32")
    prompts = PROMPTS + ["List three fruits."] * 3 + ["Alone?"]
    completions = COMPLETIONS + ["Apple, pear, fig.", "a", "Bananas are yellow."] + ["Yes."]
    scores = judge.score(prompts, completions, [{}] * 8)
    assert sum(scores[0:2]) / 2 == pytest.approx(0.5, abs=1e-5) and sum(scores[4:7]) / 3 == pytest.approx(0.5, abs=1e-5)
    assert scores[7] == 0.5
    assert all(0 < s < 1 for s in scores)


def test_score_pairs_of_functions_and_models(reward_models):
    # each source scores the 2N samples, firsts then seconds; a pair is dropped when either answer is
    sources = load_reward_sources(
        [source("function", f"{FNS}:drop_odd"), source("model", reward_models / "m0", weight=0.5)], precision="fp32"
    )
    firsts, seconds = COMPLETIONS[:2], COMPLETIONS[2:]
    pairs, parts = score_pairs(sources, PROMPTS[:2], firsts, seconds, [{}] * 2)
    total, _ = score_samples(sources, PROMPTS[:2] * 2, firsts + seconds, [{}] * 4)
    assert pairs == [(total[0], total[2]), None]  # drop_odd drops sample 1 (the second pair's first answer)
    assert list(parts) == ["function:drop_odd", "model:m0"] and len(parts["model:m0"]) == 4


def test_score_pairs_gives_each_pair_the_judges_own_verdict(tiny_model_dir):
    # a group judge on pairs: P(first better) and its complement, as the round robin of the pair's two answers scores
    # them; a prompt asked twice is two pairs, not one group of four
    (judge,) = load_reward_sources([source("judge", tiny_model_dir, judge_against="group", batch_size=8)], precision="fp32")
    prompts = ["Name two primary colors.", "Why is the sky blue?", "Name two primary colors."]
    firsts, seconds = ["Red and blue.", "Rayleigh scattering.", "eee"], ["no", "Because it is.", "Yellow and red."]
    pairs, _ = score_pairs([judge], prompts, firsts, seconds, [{}] * 3)
    assert all(a + b == pytest.approx(1.0, abs=1e-6) and 0 < a < 1 for a, b in pairs)
    unique = judge.score(prompts[:2] * 2, firsts[:2] + seconds[:2], [{}] * 4)  # distinct prompts: the same pairs, judged alike
    assert pairs[:2] == [(unique[0], unique[2]), (unique[1], unique[3])]
    alone = judge.score(prompts[2:] * 2, firsts[2:] + seconds[2:], [{}] * 2)
    assert pairs[2] == pytest.approx(tuple(alone), abs=1e-6)


def test_ppo_takes_reward_sources(tiny_model_dir, tiny_data, tmp_path):
    # PPO's `reward` list: a function source dropping every odd sample plus a weighted constant
    import json

    from tether.config import ConfigError, PPOConfig, load_config
    from tether.stages.ppo import train_ppo

    reward = f"reward=[{{type: function, path: '{FNS}:drop_odd'}}, {{type: function, path: '{FNS}:constant', weight: 0.5}}]"
    common = [
        f"policy={tiny_model_dir}",
        f"prompts={tiny_data['prompts']}",
        "precision=fp32",
        "lora.enabled=false",
        "generation.max_new_tokens=4",
        "steps=1",
        "batch_size=4",
        "mini_batch_size=2",
        "save_every=0",
        "samples_every=1",
    ]
    cfg = load_config(PPOConfig, None, [reward, f"output_dir={tmp_path / 'p'}", *common])
    assert [s.type for s in cfg.reward] == ["function", "function"]
    assert train_ppo(cfg)["steps"] == 1
    rewards = [json.loads(x)["reward"] for x in (tmp_path / "p" / "samples.jsonl").read_text().splitlines()]
    assert rewards[0::2] == [1.5, 1.5]  # 1.0 + 0.5 * 1.0 on the samples that count
    with pytest.raises(ConfigError, match=r"reward_function was replaced by `reward: \[\{type: function, path: .*:constant\}\]`"):
        load_config(PPOConfig, None, [reward, f"reward_function={FNS}:constant"])
