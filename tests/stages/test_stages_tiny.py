"""Every stage end to end on a tiny model: SFT (resume, accumulation), collect, reward, PPO, eval."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import CollectConfig, EvalConfig, PPOConfig, RewardConfig, SFTConfig, load_config
from tether.stages.collect import collect
from tether.stages.evaluate import evaluate
from tether.stages.ppo import train_ppo
from tether.stages.reward import train_reward
from tether.stages.sft import train_sft

GEN = ["generation.max_new_tokens=8", "generation.batch_size=4"]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def train_rows(out: Path) -> list[dict]:
    """The rows of `out`/metrics.jsonl that log a training step."""
    return [row for row in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "train/loss" in row]


def sft_cfg(tiny_model_dir, tiny_data, out, *extra):
    return load_config(
        SFTConfig,
        None,
        [
            f"model={tiny_model_dir}",
            f"data={tiny_data['demos']}",
            f"output_dir={out}",
            "precision=fp32",
            "optim.lr=1e-3",
            "optim.warmup_ratio=0.0",
            *extra,
        ],
    )


def test_sft_loss_reads_the_lm_head_only_where_it_predicts_a_response_token(tiny_model_dir, tiny_data):
    from tether.data.collate import collate_sft, encode_demonstration
    from tether.data.readers import read_demonstrations
    from tether.losses import sft_loss_sum
    from tether.models.loading import load_causal_lm, load_tokenizer
    from tether.stages.sft import response_nll

    model, tok = load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    batch = collate_sft([encode_demonstration(tok, d, 64, 32) for d in read_demonstrations(tiny_data["demos"])[:5]], tok.pad_token_id)
    full, n_full = sft_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    nll, n = response_nll(model, batch)
    assert n == n_full > 0
    torch.testing.assert_close(nll, full, rtol=1e-5, atol=1e-4)


def test_sft_learns_and_writes_outputs(tiny_model_dir, tiny_data, tmp_path):
    summary = train_sft(sft_cfg(tiny_model_dir, tiny_data, tmp_path / "sft", "max_steps=6", "batch_size=4", "eval_fraction=0.25"))
    assert summary["steps"] == 6 and summary["eval_examples"] == 3
    assert summary["eval_loss"] < summary["eval_loss_before"]  # 6 steps at lr 1e-3 must fit the response pattern
    lines = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/loss" in x] == [1, 2, 3, 4, 5, 6]
    assert json.loads((tmp_path / "sft" / "summary.json").read_text())["stage"] == "sft"
    assert (tmp_path / "sft" / "model" / "config.json").exists()


def test_sft_resume_is_bit_for_bit(tiny_model_dir, tiny_data, tmp_path):
    common = ["max_steps=5", "batch_size=2", "save_every=0", "eval_fraction=0.2"]
    full = train_sft(sft_cfg(tiny_model_dir, tiny_data, tmp_path / "a", *common))
    assert full is not None
    assert train_sft(sft_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *common, "interrupt_after=2")) is None
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists() and not (tmp_path / "b" / "summary.json").exists()
    resumed = train_sft(sft_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *common))
    wa, wb = weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["eval_loss"] == full["eval_loss"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(x)["step"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]


def test_gradient_accumulation_1x8_equals_8x1(tiny_model_dir, tiny_data, tmp_path):
    one = ["max_steps=1", "eval_fraction=0", "optim.max_grad_norm=0"]
    train_sft(sft_cfg(tiny_model_dir, tiny_data, tmp_path / "a", *one, "batch_size=8", "grad_accum=1"))
    train_sft(sft_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *one, "batch_size=1", "grad_accum=8"))
    base = weights(tiny_model_dir)
    wa, wb = weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")
    moved = sum((wa[k] - base[k]).abs().sum().item() for k in wa)
    assert moved > 0
    # Adam's first step is ~lr*sign(g), nearly blind to a gradient off by a constant factor (a missing 1/grad_accum):
    # the loss and the pre-clip gradient norm must agree as well as the weights
    (la,), (lb,) = train_rows(tmp_path / "a"), train_rows(tmp_path / "b")
    assert lb["train/loss"] == pytest.approx(la["train/loss"], rel=1e-5)
    assert lb["train/grad_norm"] == pytest.approx(la["train/grad_norm"], rel=1e-4) and la["train/grad_norm"] > 0
    for k in wa:  # compared at 1% of Adam's step size (lr = 1e-3)
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_sft_lora_merges_into_plain_model(tiny_model_dir, tiny_data, tmp_path):
    summary = train_sft(sft_cfg(tiny_model_dir, tiny_data, tmp_path / "s", "max_steps=2", "batch_size=4", "lora.enabled=true", "lora.r=4"))
    assert summary["trainable_params"] < summary["total_params"] / 2
    assert weights(tmp_path / "s" / "model").keys() == weights(tiny_model_dir).keys()  # merged: no lora_ keys


@pytest.fixture(scope="module")
def chain(tiny_model_dir, tiny_data, tmp_path_factory):
    """collect -> reward -> ppo on the tiny model, shared by the tests below."""
    root = tmp_path_factory.mktemp("chain")
    col = collect(
        load_config(
            CollectConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={root / 'collect'}",
                "limit=8",
                "responses_per_prompt=3",
                "precision=fp32",
                *GEN,
            ],
        )
    )
    rm = train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={root / 'collect' / 'preferences.jsonl'}",
                f"output_dir={root / 'reward'}",
                f"normalize_data={root / 'collect' / 'samples.jsonl'}",
                "batch_size=4",
                "epochs=1",
                "precision=fp32",
                "optim.lr=1e-3",
            ],
        )
    )
    ppo = train_ppo(
        load_config(
            PPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: model, path: '{root / 'reward' / 'model'}'}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={root / 'ppo'}",
                "steps=3",
                "batch_size=4",
                "mini_batch_size=2",
                "precision=fp32",
                "save_every=2",
                *GEN,
            ],
        )
    )
    return root, col, rm, ppo


def test_collect_writes_labelled_pairs_with_provenance(chain):
    root, col, _, _ = chain
    assert col["prompts"] == 8 and col["samples"] == 24 and col["pairs"] == 24  # 3 choose 2 = 3 pairs per prompt
    pairs = [json.loads(x) for x in (root / "collect" / "preferences.jsonl").read_text().splitlines()]
    meta = pairs[0]["meta"]
    assert meta["annotator"].startswith("simulated-bt") and "gold_margin" in meta and "seed" in meta
    assert meta["gold_margin"] == pytest.approx(meta["gold_chosen"] - meta["gold_rejected"])


def test_reward_model_is_a_normal_hf_directory(chain):
    from transformers import AutoModelForSequenceClassification

    root, _, rm, _ = chain
    model = AutoModelForSequenceClassification.from_pretrained(root / "reward" / "model")
    assert model.config.num_labels == 1
    norm = json.loads((root / "reward" / "model" / "tether_reward.json").read_text())
    assert norm["n"] == 24 and "samples.jsonl" in norm["fitted_on"]
    assert rm["eval_pairs"] >= 1 and 0.0 <= rm["eval_accuracy"] <= 1.0
    last = json.loads((root / "reward" / "metrics.jsonl").read_text().splitlines()[-1])  # the validation, as a tracker sees it
    assert last["step"] == rm["steps"] and last["rm/accuracy"] == rm["eval_accuracy"] and last["rm/ece"] == rm["eval_ece"]


def test_reward_normalisation_gives_mean_zero_on_policy_samples(chain):
    from tether.data.readers import read_demonstrations
    from tether.models.reward_model import RewardModel, score_texts

    root = chain[0]
    rm = RewardModel.load(str(root / "reward" / "model"))
    rows = read_demonstrations(root / "collect" / "samples.jsonl")
    raw = score_texts(rm.model, rm.tokenizer, [r.prompt for r in rows], [r.response for r in rows], precision="fp32")
    normed = rm.normalization.apply(raw)
    assert abs(normed.mean().item()) < 1e-4 and normed.std().item() == pytest.approx(1.0, abs=1e-3)


def test_ppo_logs_every_diagnostic(chain):
    root, _, _, ppo = chain
    rows = [json.loads(x) for x in (root / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in [
        "rollout/reward",
        "rollout/kl",
        "rollout/beta",
        "rollout/entropy",
        "train/clipfrac",
        "train/approx_kl",
        "train/value_loss",
        "train/explained_variance",
        "rollout/length",
        "rollout/length_p95",
        "train/ratio_max",
        "rollout/distinct1",
        "rollout/distinct2",
        "rollout/reward_length_corr",
        "rollout/finished",
    ]:
        assert key in rows[-1], key
    assert rows[0]["rollout/kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA starts at B = 0: policy == reference
    assert ppo["steps"] == 3 and (root / "ppo" / "model" / "config.json").exists()
    samples = [json.loads(x) for x in (root / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1} and len(samples) == 4 and {"prompt", "response", "reward"} <= samples[0].keys()


def test_the_ppo_policy_has_a_model_card_and_loads_with_plain_transformers(chain):
    from transformers import AutoModelForCausalLM

    from tether.models.card import read_card_metadata

    root, _, _, ppo = chain
    meta = read_card_metadata(root / "ppo" / "model" / "README.md")
    assert meta["library_name"] == "tether" and {"rlhf", "ppo"} <= set(meta["tags"]) and "base_model" not in meta  # a local start
    card = (root / "ppo" / "model" / "README.md").read_text()
    assert "`ppo` stage" in card and f"| reward_last_quarter | {ppo['reward_last_quarter']:.4g} |" in card and "steps: 3" in card
    assert AutoModelForCausalLM.from_pretrained(root / "ppo" / "model").config.num_hidden_layers == 2


def test_ppo_full_finetune_with_reward_model_value(chain, tiny_model_dir, tiny_data, tmp_path):
    root = chain[0]
    summary = train_ppo(
        load_config(
            PPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: model, path: '{root / 'reward' / 'model'}'}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path / 'ppo'}",
                "steps=2",
                "batch_size=4",
                "mini_batch_size=4",
                "precision=fp32",
                "lora.enabled=false",
                "value_model=reward_model",
                "kl.adaptive=false",
                "missing_eos_penalty=-1.0",
                *GEN,
            ],
        )
    )
    assert summary["beta_final"] == pytest.approx(0.05)  # fixed controller
    assert summary["trainable_params"] == summary["total_params"]


def test_eval_compares_policy_with_baseline(chain, tiny_model_dir, tiny_data, tmp_path):
    root = chain[0]
    s = evaluate(
        load_config(
            EvalConfig,
            None,
            [
                f"policy={root / 'ppo' / 'model'}",
                f"baseline={tiny_model_dir}",
                f"reward_model={root / 'reward' / 'model'}",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path / 'eval'}",
                "limit=6",
                "precision=fp32",
                *GEN,
            ],
        )
    )
    assert s["prompts"] == 6 and s["gold_wins"] + s["gold_ties"] + s["gold_losses"] == 6
    assert s["kl_baseline"] == 0.0  # the baseline is its own reference
    assert s["gold_win_rate_ci"][0] <= s["gold_win_rate"] <= s["gold_win_rate_ci"][1]
    assert {"proxy_win_rate", "distinct1_policy", "length_policy"} <= s.keys()
    assert len((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()) == 6


def test_ppo_resume_is_bit_for_bit(chain, tiny_model_dir, tiny_data, tmp_path):
    """Policy, value head, optimizer, scheduler, KL controller and RNG all come back from the checkpoint."""
    root = chain[0]
    common = [
        f"policy={tiny_model_dir}",
        f"reward=[{{type: model, path: '{root / 'reward' / 'model'}'}}]",
        f"prompts={tiny_data['prompts']}",
        "steps=3",
        "batch_size=4",
        "mini_batch_size=2",
        "precision=fp32",
        "save_every=0",
        "kl.horizon=8",
        *GEN,
    ]
    full = train_ppo(load_config(PPOConfig, None, [f"output_dir={tmp_path / 'a'}", *common]))
    assert train_ppo(load_config(PPOConfig, None, [f"output_dir={tmp_path / 'b'}", *common, "interrupt_after=1"])) is None
    resumed = train_ppo(load_config(PPOConfig, None, [f"output_dir={tmp_path / 'b'}", *common]))
    wa, wb = weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["beta_final"] == full["beta_final"] != 0.05  # the controller moved, and resumed identically


def test_reward_loss_options_and_lora_head(chain, tiny_model_dir, tmp_path):
    root = chain[0]
    s = train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={root / 'collect' / 'preferences.jsonl'}",
                f"output_dir={tmp_path / 'rm'}",
                "batch_size=4",
                "precision=fp32",
                "label_smoothing=0.1",
                "center_rewards_coefficient=0.01",
                "lora.enabled=true",
                "lora.r=4",
                "optim.lr=1e-3",
            ],
        )
    )
    assert s["trainable_params"] < s["total_params"] and s["eval_ece"] is not None
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model").config.num_labels == 1
    with pytest.raises(Exception, match="label_smoothing"):
        load_config(RewardConfig, None, ["label_smoothing=0.7"])


def test_reward_ensemble_trains_members_and_reaches_ppo(chain, tiny_model_dir, tiny_data, tmp_path):
    from typer.testing import CliRunner

    from tether.cli import app
    from tether.models.reward_model import RewardEnsemble, load_reward_model

    root = chain[0]
    s = train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={root / 'collect' / 'preferences.jsonl'}",
                f"output_dir={tmp_path / 'ens'}",
                "batch_size=4",
                "precision=fp32",
                "optim.lr=1e-3",
                "ensemble=2",
            ],
        )
    )
    assert s["ensemble"] == 2 and len(s["member_eval_accuracy"]) == 2 and s["eval_disagreement"] >= 0.0
    ens = load_reward_model(str(tmp_path / "ens" / "model"))
    assert isinstance(ens, RewardEnsemble) and len(ens.members) == 2
    card = (tmp_path / "ens" / "model" / "README.md").read_text()  # the ensemble's card names its members, each has its own
    assert (
        "ensemble" in card.split("---")[1]
        and "../member_1/model" in card
        and (tmp_path / "ens" / "member_1" / "model" / "README.md").exists()
    )
    ids, mask = torch.tensor([[5, 6, 7, 2]]), torch.ones(1, 4, dtype=torch.long)
    members = ens.member_scores(ids, mask)  # (2, 1): different seeds give different heads
    assert members.shape == (2, 1) and members[0, 0] != members[1, 0]
    assert ens.scores(ids, mask, std_coef=1.0) < ens.scores(ids, mask)  # mean - std is the conservative reward
    result = CliRunner().invoke(app, ["reward", "eval", "--model", str(tmp_path / "ens" / "model"), "--data", str(tiny_data["prefs"])])
    assert result.exit_code == 0, result.output
    assert {"disagreement", "vote_disagreement"} <= json.loads(result.stdout).keys()
    ppo = train_ppo(
        load_config(
            PPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: model, path: '{tmp_path / 'ens' / 'model'}', std_coef: 1.0}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path / 'ppo'}",
                "steps=1",
                "batch_size=2",
                "mini_batch_size=2",
                "precision=fp32",
                *GEN,
            ],
        )
    )
    assert ppo["steps"] == 1


def test_reward_ties_are_skipped_or_trained_to_equal(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": "a good answer.", "rejected": "bad", "tie": i % 3 == 0} for i in range(12)]
    data = tmp_path / "ties.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [f"model={tiny_model_dir}", f"data={data}", "batch_size=4", "precision=fp32", "eval_fraction=0.25", "optim.lr=1e-3"]
    skip = train_reward(load_config(RewardConfig, None, [*common, f"output_dir={tmp_path / 'skip'}", "ties=skip"]))
    half = train_reward(load_config(RewardConfig, None, [*common, f"output_dir={tmp_path / 'half'}", "ties=half"]))
    # 12 prompts, 3 held out -> 9 training pairs with ties=half; ties=skip drops the tied ones among them
    # (4 of the 12 are ties); held-out ties never count towards accuracy
    assert skip["train_pairs"] < half["train_pairs"] == 9
    assert skip["eval_pairs"] == half["eval_pairs"] <= 3


def test_reward_bad_rows_stop_or_are_counted(tiny_model_dir, tmp_path):
    from tether.data.readers import DataError

    rows = [{"prompt": f"q{i}", "chosen": "fine answer.", "rejected": "meh"} for i in range(8)]
    rows[3]["rejected"] = "fine answer."  # identical to chosen
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [f"model={tiny_model_dir}", f"data={data}", "batch_size=4", "precision=fp32", "eval_fraction=0.25"]
    with pytest.raises(DataError, match=r"bad\.jsonl:4: field 'rejected'"):
        train_reward(load_config(RewardConfig, None, [*common, f"output_dir={tmp_path / 'strict'}"]))
    s = train_reward(load_config(RewardConfig, None, [*common, f"output_dir={tmp_path / 'lenient'}", "skip_bad_rows=true"]))
    assert s["skipped_rows"] == 1 and s["train_pairs"] + s["eval_pairs"] == 7


def test_reward_normalisation_uses_a_capped_sample(chain, tiny_model_dir, tmp_path):
    root = chain[0]
    s = train_reward(
        load_config(
            RewardConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"data={root / 'collect' / 'preferences.jsonl'}",
                f"output_dir={tmp_path / 'rm'}",
                "batch_size=4",
                "precision=fp32",
                "max_steps=1",
                "normalize_samples=5",
            ],
        )
    )
    assert s["normalization"]["n"] == 5


def test_collect_drops_pairs_with_nothing_to_prefer(tiny_model_dir, tiny_data, tmp_path):
    # one token at a low temperature: the K samples of some prompts are identical, so their pair is dropped (when every pair
    # is, collect stops with an error: tests/stages/test_useless_input.py)
    s = collect(
        load_config(
            CollectConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path}",
                "limit=12",
                "responses_per_prompt=2",
                "precision=fp32",
                "generation.max_new_tokens=1",
                "generation.temperature=0.2",
            ],
        )
    )
    assert s["pairs"] + s["pairs_dropped"] == 12 and s["pairs_dropped"] >= 1 and s["pairs"] >= 1
    assert len((tmp_path / "preferences.jsonl").read_text().splitlines()) == s["pairs"]
