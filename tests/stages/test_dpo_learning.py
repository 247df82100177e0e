"""DPO learns on the tiny model: a preference set with a known optimum, and online rounds against a reward
model, a reward function and a judge."""

import json
import random
from pathlib import Path

import pytest
import torch

from tether.config import DPOConfig, load_config
from tether.data.readers import read_preferences
from tether.models.loading import load_tokenizer, save_model
from tether.models.reward_model import RewardNormalization, init_reward_model, load_reward_model, save_normalization
from tether.stages.dpo import run_dpo, train_dpo
from tether.stages.reward import CachedScorer

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "bread",
    "water",
    "salt",
    "yeast",
    "mix",
    "bake",
    "flour",
    "capital",
    "clear",
    "short",
    "sentence",
    "helpful",
]
QUESTIONS = [
    "Write a haiku about autumn leaves.",
    "Give three tips for staying healthy.",
    "Explain what a rainbow is.",
    "Name two primary colors.",
    "Describe the taste of a lemon.",
    "Suggest a name for a pet cat.",
    "What is the capital of France?",
    "Summarise the water cycle in one sentence.",
    "List three fruits.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Write a short greeting for a birthday card.",
]
STYLES = ["{q}", "Please answer briefly: {q}", "{q} Keep it short.", "A friend asks: {q}", "{q} Explain it to a child.", "Task: {q}"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def filler(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))


def synthetic_pairs(styles: list[str], seed: int) -> list[dict]:
    """The chosen answer always holds "Paris" somewhere in random filler; the rejected one never does. The filler
    is drawn afresh for every response, so "Paris" is the only thing that tells the two apart."""
    rng = random.Random(seed)
    rows = []
    for style in styles:
        for q in QUESTIONS:
            words = filler(rng).split()
            words.insert(rng.randint(0, len(words)), "Paris")
            rows.append({"prompt": style.format(q=q), "chosen": " ".join(words), "rejected": filler(rng)})
    return rows


@pytest.fixture(scope="module")
def known_optimum(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dpo-known-optimum")
    files = {
        "train": synthetic_pairs(STYLES[:4], seed=0),
        "held_out": synthetic_pairs(STYLES[4:], seed=1),
    }  # held-out prompts never trained on
    for name, rows in files.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {name: root / f"{name}.jsonl" for name in files}


@pytest.mark.parametrize("extra", [["beta=0.5"], ["lora.enabled=false", "optim.lr=1e-2"]], ids=["lora", "full"])
def test_dpo_learns_a_known_preference(tiny_model_dir, known_optimum, tmp_path, extra):
    cfg = load_config(
        DPOConfig,
        None,
        [
            f"policy={tiny_model_dir}",
            f"data={known_optimum['train']}",
            f"eval_data={known_optimum['held_out']}",
            f"output_dir={tmp_path}",
            "precision=fp32",
            "batch_size=8",
            "max_steps=24",
            "optim.lr=2e-2",
            "optim.warmup_ratio=0",
            "eval_every=8",
            "save_every=0",
            *extra,
        ],
    )
    summary = train_dpo(cfg)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if "train/loss" in m]
    evals = [m["eval/accuracy"] for m in lines if "eval/accuracy" in m]
    # train: from chance (policy == reference) to telling the two apart, with a growing margin
    assert train[0]["train/accuracy"] == 0.5 and train[0]["train/margin"] == pytest.approx(0, abs=1e-6)
    assert sum(m["train/accuracy"] for m in train[-8:]) / 8 >= 0.85
    assert sum(m["train/margin"] for m in train[-8:]) / 8 > 0.3
    # held-out prompts and fillers: the implicit reward ranks "Paris" first (at step 0 it ties every pair: 0.5)
    assert summary["eval_pairs"] == 24 and summary["eval_accuracy"] >= 0.75 and summary["eval_accuracy_ci"][0] > 0.5
    assert evals[-1] == summary["eval_accuracy"] and len(evals) == 3
    assert summary["eval_rewards_chosen"] > summary["eval_rewards_rejected"]


# --------------------------------------------------------------------------- online / iterative DPO


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dpo-online") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    return path


def online_cfg(tiny_model_dir, prompts_file, out, *extra):
    return load_config(
        DPOConfig,
        None,
        [
            f"policy={tiny_model_dir}",
            f"prompts={prompts_file}",
            f"output_dir={out}",
            "precision=fp32",
            "online=true",
            "prompts_per_round=12",
            "generation.max_new_tokens=12",
            "generation.batch_size=24",
            "batch_size=4",
            "eval_fraction=0",
            "save_every=0",
            "optim.warmup_ratio=0",
            *extra,
        ],
    )


def test_online_dpo_raises_a_reward_functions_score(tiny_model_dir, prompts_file, tmp_path):
    # the labeller prefers answers with more letters "e" (tests/stages/reward_fns.py-style rule); three rounds of
    # sample two -> label -> DPO make the policy's own answers score higher on the same prompts and random draw
    # Each question comes 4 times, so a round labels 48 pairs (12 were too few: the gain depended on the draws)
    fn = tmp_path / "count_e.py"
    fn.write_text("def score(prompts, completions, metadata):\n    return [float(c.count('e')) for c in completions]\n")
    many = tmp_path / "prompts.jsonl"
    many.write_text(prompts_file.read_text() * 4)
    summary = run_dpo(
        online_cfg(
            tiny_model_dir,
            many,
            tmp_path / "run",
            f"reward=[{{type: function, path: '{fn}:score'}}]",
            "rounds=3",
            "epochs=4",
            "optim.lr=3e-2",
            "lora.enabled=false",
            "prompts_per_round=48",
        )
    )
    assert summary["stage"] == "dpo_online" and [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["final_score"] > summary["initial_score"] + 0.5
    for k in (1, 2, 3):
        pairs = read_preferences(tmp_path / "run" / f"round_{k}" / "pairs.jsonl")
        assert pairs and all(p.chosen.count("e") > p.rejected.count("e") for p in pairs)
        assert json.loads((tmp_path / "run" / f"round_{k}" / "summary.json").read_text())["policy_init"] == (
            str(tiny_model_dir) if k == 1 else str(tmp_path / "run" / f"round_{k - 1}" / "model")
        )  # each round starts from the last
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3] and all("rollout/reward" in m and "rollout/pairs" in m for m in lines)


def test_online_dpo_with_a_reward_model_resumes_round_by_round(tiny_model_dir, prompts_file, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    rm_dir = tmp_path / "rm"
    save_model(init_reward_model(str(tiny_model_dir), tok.pad_token_id, seed=3), tok, rm_dir)
    save_normalization(rm_dir, RewardNormalization(gain=2.0, bias=1.0))
    cfg = online_cfg(
        tiny_model_dir,
        prompts_file,
        tmp_path / "run",
        f"reward=[{{type: model, path: '{rm_dir}'}}]",
        "rounds=2",
        "max_steps=2",
        "optim.lr=1e-2",
    )
    summary = run_dpo(cfg)
    pairs = read_preferences(tmp_path / "run" / "round_1" / "pairs.jsonl")
    # the chosen answer is the one the reward model scores higher, and the stored scores are its (normalised) scores
    scorer = CachedScorer.for_members(load_reward_model(str(rm_dir)), cfg.max_prompt_tokens, cfg.max_response_tokens, "fp32")[0]
    scores_c = scorer([p.prompt for p in pairs], [p.chosen for p in pairs])
    scores_r = scorer([p.prompt for p in pairs], [p.rejected for p in pairs])
    assert pairs and (scores_c > scores_r).all()
    torch.testing.assert_close(scores_c, torch.tensor([p.meta["score_chosen"] for p in pairs]), atol=1e-4, rtol=1e-4)
    # a rerun finds every round done: nothing is sampled or trained again, and the summary is the same
    before = (tmp_path / "run" / "round_2" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run_dpo(cfg)
    assert (tmp_path / "run" / "round_2" / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert again["rounds"] == summary["rounds"] and again["model"] == summary["model"] == str(tmp_path / "run" / "round_2" / "model")


def test_online_dpo_with_a_judge(tiny_model_dir, prompts_file, tmp_path):
    summary = run_dpo(
        online_cfg(
            tiny_model_dir,
            prompts_file,
            tmp_path / "run",
            f"reward=[{{type: judge, path: '{tiny_model_dir}', judge_against: group}}]",
            "rounds=1",
            "max_steps=1",
        )
    )
    pairs = read_preferences(tmp_path / "run" / "round_1" / "pairs.jsonl")
    assert summary["reward"] == [f"judge:{tiny_model_dir.name}"] and pairs
    assert all(p.meta["score_chosen"] > 0.5 > p.meta["score_rejected"] for p in pairs)  # P(better) from the judge, both orders
