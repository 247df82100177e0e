"""`tether dpo` on the tiny model: log-prob plumbing, the step-0 invariants, the reference modes agreeing
with each other, resume, gradient accumulation, bad data and the command line."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tether.cli import app
from tether.config import ConfigError, DPOConfig, LoraSettings, load_config
from tether.data.readers import DataError, read_preferences
from tether.models.loading import apply_lora, load_causal_lm, load_tokenizer
from tether.stages.dpo import REFERENCE_FILE, EncodedPair, encode_pair, pair_loss, response_logprobs, train_dpo


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Matrices this small gain nothing from intra-op threads, and on a busy machine threads make them crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dpo_cfg(tiny_model_dir, tiny_data, out, *extra):
    return load_config(
        DPOConfig,
        None,
        [
            f"policy={tiny_model_dir}",
            f"data={tiny_data['prefs']}",
            f"output_dir={out}",
            "precision=fp32",
            "optim.lr=1e-2",
            "optim.warmup_ratio=0.0",
            "batch_size=4",
            "eval_fraction=0.25",
            "save_every=0",
            *extra,
        ],
    )


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def train_lines(out: Path) -> list[dict]:
    return [m for m in metrics(out) if "train/loss" in m]


def assert_same_run(a: Path, b: Path, atol: float = 1e-6):
    keys = ["train/loss", "train/rewards_chosen", "train/rewards_rejected", "train/margin", "train/accuracy"]
    la, lb = train_lines(a), train_lines(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        for k in keys:
            assert x[k] == pytest.approx(y[k], abs=atol), (k, x["step"])
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert sa["eval_accuracy"] == sb["eval_accuracy"] and sa["eval_loss"] == pytest.approx(sb["eval_loss"], abs=atol)


# --------------------------------------------------------------------------- log-probs


def naive_logprobs(model, prompt: list[int], response: list[int]) -> float:
    """sum_t log pi(response_t | prompt, response_<t) from the full logits of the sequence alone."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits, -1)
    return sum(logp[len(prompt) - 1 + t, token].item() for t, token in enumerate(response))


@pytest.mark.parametrize("lora", [False, True])
def test_response_logprobs_packed_and_unpacked_equal_each_sequence_alone(tiny_model_dir, tiny_data, lora):
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir)).eval()
    if lora:  # a non-zero adapter, so the LoRA path is exercised
        model = apply_lora(model, LoraSettings(enabled=True, r=4))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
    pairs = [p for p in read_preferences(tiny_data["prefs"])][:3]
    pairs[1].chosen = "A much longer chosen answer that runs on for a while."  # responses and prompts of different lengths
    examples = [encode_pair(tok, p, 192, 128)[0] for p in pairs]
    expected = torch.tensor([[naive_logprobs(model, e.prompt, e.chosen), naive_logprobs(model, e.prompt, e.rejected)] for e in examples])
    with torch.no_grad():
        for pack in (True, False):
            c, r = response_logprobs(model, examples, tok.pad_token_id, pack)
            torch.testing.assert_close(torch.stack([c, r], -1), expected, atol=1e-4, rtol=1e-5)


def test_the_lm_head_in_chunks_gives_the_same_logprobs_and_gradients(tiny_model_dir, tiny_data, monkeypatch):
    import tether.rollout.logprobs as logprobs

    tok = load_tokenizer(str(tiny_model_dir))
    examples = [encode_pair(tok, p, 192, 128)[0] for p in read_preferences(tiny_data["prefs"])][:4]

    def logps_and_grads():
        model = load_causal_lm(str(tiny_model_dir))
        c, r = response_logprobs(model, examples, tok.pad_token_id, True)
        (c - 2 * r).sum().backward()
        return torch.cat([c, r]).detach(), [p.grad.clone() for p in model.parameters()]

    whole, grads = logps_and_grads()
    monkeypatch.setattr(logprobs, "HEAD_CHUNK", 7)  # the 4 pairs hold far more than 7 response tokens
    chunked, chunked_grads = logps_and_grads()
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(chunked_grads, grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_response_logprobs_respects_truncation(tiny_model_dir):
    # a response cut to 3 tokens is scored on exactly those 3 tokens (and gets no EOS)
    tok = load_tokenizer(str(tiny_model_dir))
    from tether.data.records import PreferencePair

    e, cut = encode_pair(tok, PreferencePair("Name two primary colors.", "Red and blue, then yellow too.", "no"), 192, 3)
    assert cut and len(e.chosen) == 3 and e.chosen[-1] != tok.eos_token_id and e.rejected[-1] == tok.eos_token_id


# --------------------------------------------------------------------------- invariants at step 0


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["lora.enabled=false"],
        ["precompute_reference=true"],
        ["lora.enabled=false", "precompute_reference=true"],
        ["pack_prompts=false"],
    ],
    ids=["lora", "full", "lora-precomputed", "full-precomputed", "unpacked"],
)
def test_step0_loss_is_log2_and_rewards_are_zero(tiny_model_dir, tiny_data, tmp_path, extra):
    # the first step's metrics are computed before any update: policy == reference, so h = 0 and the loss is
    # -log sigmoid(0) = log 2, every implicit reward 0, and every pair a tie (accuracy 1/2)
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path, "max_steps=2", *extra))
    first = train_lines(tmp_path)[0]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["train/rewards_chosen"] == pytest.approx(0, abs=1e-6) and first["train/rewards_rejected"] == pytest.approx(0, abs=1e-6)
    assert first["train/margin"] == pytest.approx(0, abs=1e-6) and first["train/accuracy"] == 0.5
    assert train_lines(tmp_path)[1]["train/loss"] < math.log(2)  # and the update moved the policy the right way


@pytest.mark.parametrize(
    "loss, extra, expected",
    [
        ("ipo", ["beta=0.5"], 1.0),  # (0 - 1/(2*0.5))^2 = 1
        ("hinge", [], 1.0),  # max(0, 1 - 0) = 1
        ("conservative", ["label_smoothing=0.2"], math.log(2)),
    ],
)  # 0.8 log 2 + 0.2 log 2
def test_each_variant_at_step0(tiny_model_dir, tiny_data, tmp_path, loss, extra, expected):
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path, "max_steps=2", f"loss={loss}", *extra))
    lines = train_lines(tmp_path)
    assert lines[0]["train/loss"] == pytest.approx(expected, abs=1e-6)
    assert lines[1]["train/margin"] > 0


def test_reference_free_has_nonzero_rewards_from_the_start(tiny_model_dir, tiny_data, tmp_path):
    # no reference: the implicit reward is beta * log pi(y|x) itself, negative, and the loss is not log 2
    summary = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path, "max_steps=3", "reference=none"))
    first = train_lines(tmp_path)[0]
    assert first["train/rewards_chosen"] < 0 and first["train/rewards_rejected"] < 0
    assert first["train/loss"] != pytest.approx(math.log(2), abs=1e-3)
    assert summary["reference_mode"] == "none" and summary["eval_pairs"] == 3


def test_ipo_token_mean_divides_each_log_ratio_by_its_response_tokens():
    # two pairs; log-ratios (reference 0): pair 1 chosen -3 over 3 tokens, rejected -4 over 2 -> h_bar = -1 - (-2) = 1;
    # pair 2 chosen -2 over 1 token, rejected -6 over 4 -> h_bar = -2 - (-1.5) = -0.5. beta = 1, target 0.5:
    # loss = ((1 - 0.5)^2 + (-0.5 - 0.5)^2) / 2 = (0.25 + 1) / 2 = 0.625; on the sums h = (1, 4): ((0.5)^2 + 3.5^2) / 2 = 6.25
    batch = [EncodedPair([1, 2], [5, 6, 7], [8, 9]), EncodedPair([1], [5], [6, 7, 8, 9])]
    logp_c, logp_r, zeros = torch.tensor([-3.0, -2.0]), torch.tensor([-4.0, -6.0]), torch.zeros(2)
    per_token = DPOConfig(loss="ipo", beta=1.0, ipo_token_mean=True)
    loss, m = pair_loss(per_token)(logp_c, logp_r, zeros, zeros, batch)
    assert loss.item() == pytest.approx(0.625)
    assert m["margin"] == pytest.approx(((-3 + 4) + (-2 + 6)) / 2)  # the metrics stay on the summed log-ratios
    summed, _ = pair_loss(DPOConfig(loss="ipo", beta=1.0))(logp_c, logp_r, zeros, zeros, batch)
    assert summed.item() == pytest.approx(6.25)


def test_ipo_token_mean_run_reports_the_same_rewards(tiny_model_dir, tiny_data, tmp_path):
    # reference-free, so the log-ratios are nonzero from step 0: the per-token loss differs from the summed one,
    # and the implicit rewards (summed log-ratios) are the same in both runs' first step
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "sum", "max_steps=1", "loss=ipo", "reference=none"))
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "mean", "max_steps=1", "loss=ipo", "reference=none", "ipo_token_mean=true"))
    summed, per_token = train_lines(tmp_path / "sum")[0], train_lines(tmp_path / "mean")[0]
    # target 1/(2 beta) = 5: the summed gaps (about 18 here) miss it by far more than the per-token ones (near 0)
    assert per_token["train/loss"] < summed["train/loss"] / 2
    for key in ("train/rewards_chosen", "train/rewards_rejected", "train/margin", "train/accuracy"):
        assert per_token[key] == pytest.approx(summed[key], abs=1e-6), key


# --------------------------------------------------------------------------- the reference modes agree


def test_lora_adapter_off_equals_a_separate_frozen_copy(tiny_model_dir, tiny_data, tmp_path):
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "off", "max_steps=4"))
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "copy", "max_steps=4", f"reference={tiny_model_dir}"))
    assert_same_run(tmp_path / "off", tmp_path / "copy")
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["reference_mode"] == "adapter off"
    assert json.loads((tmp_path / "copy" / "summary.json").read_text())["reference_mode"] == "frozen model"
    assert train_lines(tmp_path / "off")[-1]["train/margin"] > 0


def test_an_offloaded_reference_copy_equals_one_held_on_the_device(tiny_model_dir, tiny_data, tmp_path):
    common = ["max_steps=4", "lora.enabled=false"]
    held = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "held", *common))
    offloaded = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "offloaded", *common, "offload_frozen=true"))
    assert offloaded["reference_mode"] == "frozen model, offloaded" and held["reference_mode"] == "frozen model"
    assert offloaded["reference_params_held"] == 0 and offloaded["reference_params_offloaded"] == held["reference_params_held"] > 0
    assert_same_run(tmp_path / "held", tmp_path / "offloaded", atol=0)


@pytest.mark.parametrize("lora", ["true", "false"])
def test_precomputed_reference_equals_a_live_one(tiny_model_dir, tiny_data, tmp_path, lora):
    common = ["max_steps=4", f"lora.enabled={lora}"]
    live = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "live", *common))
    summary = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "pre", *common, "precompute_reference=true"))
    assert summary["reference_mode"] == "precomputed" and summary["reference_params_held"] == 0  # no reference model while training
    # live: with LoRA the reference is the policy's own weights (nothing extra held); fully trained, a frozen copy
    assert live["reference_params_held"] == (0 if lora == "true" else live["total_params"])
    assert_same_run(tmp_path / "live", tmp_path / "pre", atol=1e-5)
    table = load_file(str(tmp_path / "pre" / REFERENCE_FILE))
    assert table["train"].shape == (summary["train_pairs"], 2) and table["eval"].shape == (summary["eval_pairs"], 2)
    assert (table["train"] < 0).all()  # log-probs of real responses


def test_packed_and_unpacked_runs_agree(tiny_model_dir, tiny_data, tmp_path):
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "packed", "max_steps=3"))
    summary = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "rows", "max_steps=3", "pack_prompts=false"))
    assert not summary["packed"]
    assert_same_run(tmp_path / "packed", tmp_path / "rows", atol=1e-5)


# --------------------------------------------------------------------------- training mechanics


def test_resume_is_bit_for_bit(tiny_model_dir, tiny_data, tmp_path):
    common = ["max_steps=5", "batch_size=2", "lora.enabled=false", "precompute_reference=true"]
    full = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "a", *common))
    assert train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *common, "interrupt_after=2")) is None
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists() and not (tmp_path / "b" / "summary.json").exists()
    # the reference table was made by the starting policy and is reused, not recomputed by the moved one
    resumed = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *common))
    wa, wb = load_file(str(tmp_path / "a" / "model" / "model.safetensors")), load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["eval_accuracy"] == full["eval_accuracy"] and resumed["eval_loss"] == full["eval_loss"]
    assert [m["step"] for m in metrics(tmp_path / "a")] == [m["step"] for m in metrics(tmp_path / "b")]


def test_gradient_accumulation_4x1_equals_2x2(tiny_model_dir, tiny_data, tmp_path):
    one = ["max_steps=1", "eval_fraction=0", "optim.max_grad_norm=0", "lora.enabled=false", "limit=4", "bucket_by_length=false"]
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "a", *one, "batch_size=4", "grad_accum=1", "optim.lr=1e-3"))
    train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *one, "batch_size=2", "grad_accum=2", "optim.lr=1e-3"))
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    wa, wb = load_file(str(tmp_path / "a" / "model" / "model.safetensors")), load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert sum((wa[k] - base[k]).abs().sum().item() for k in wa) > 0
    # Adam's first step is ~lr * sign(g), nearly blind to a gradient off by a constant factor (a missing 1/grad_accum):
    # the loss and the pre-clip gradient norm must agree as well as the weights
    (la,), (lb,) = train_lines(tmp_path / "a"), train_lines(tmp_path / "b")
    assert lb["train/loss"] == pytest.approx(la["train/loss"], rel=1e-5)
    assert lb["train/grad_norm"] == pytest.approx(la["train/grad_norm"], rel=1e-4) and la["train/grad_norm"] > 0
    for k in wa:  # compared at 1% of Adam's step
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_freeze_layers_leaves_the_lower_blocks_alone(tiny_model_dir, tiny_data, tmp_path):
    summary = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path, "max_steps=2", "lora.enabled=false", "freeze_layers=1"))
    base, trained = load_file(str(Path(tiny_model_dir) / "model.safetensors")), load_file(str(tmp_path / "model" / "model.safetensors"))
    assert all(torch.equal(base[k], trained[k]) for k in base if k.startswith(("model.layers.0.", "model.embed_tokens")))
    assert any(not torch.equal(base[k], trained[k]) for k in base if k.startswith("model.layers.1."))
    assert summary["trainable_params"] < summary["total_params"]


@pytest.mark.parametrize("precompute", ["false", "true"])
def test_freeze_layers_with_lora_survives_the_adapter_switch(tiny_model_dir, tiny_data, tmp_path, precompute):
    # the reference is the adapter switched off, and peft marks every adapter weight trainable when it comes back on:
    # the frozen block's adapters must stay frozen (no gradient, unchanged), and a resumed run must build the same optimizer
    from tether.stages.dpo import live_reference

    tok = load_tokenizer(str(tiny_model_dir))
    policy = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraSettings(enabled=True, r=4))
    from tether.models.loading import freeze_lower_layers

    freeze_lower_layers(policy, 1)
    before = {n for n, p in policy.named_parameters() if p.requires_grad}
    live_reference(
        policy, None, [encode_pair(tok, p, 192, 128)[0] for p in read_preferences(tiny_data["prefs"])][:2], tok.pad_token_id, True, "fp32"
    )
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == before
    assert before and not any(".layers.0." in n for n in before)

    common = ["max_steps=4", "batch_size=2", "freeze_layers=1", "lora.r=4", f"precompute_reference={precompute}"]
    full = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "a", *common))
    assert full["trainable_params"] == sum(p.numel() for n, p in policy.named_parameters() if n in before)
    assert train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *common, "interrupt_after=2")) is None
    resumed = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "b", *common))
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], abs=1e-6)


# --------------------------------------------------------------------------- data errors, config, command line


def test_a_bad_row_stops_with_file_and_line(tiny_model_dir, tiny_data, tmp_path):
    lines = Path(tiny_data["prefs"]).read_text().splitlines()
    lines[2] = json.dumps({"prompt": "Hi", "chosen": 3, "rejected": "no"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: field 'chosen'"):
        train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "o", f"data={bad}"))
    summary = train_dpo(dpo_cfg(tiny_model_dir, tiny_data, tmp_path / "skip", f"data={bad}", "skip_bad_rows=true", "max_steps=1"))
    assert summary["skipped_rows"] == 1 and summary["train_pairs"] + summary["eval_pairs"] == len(lines) - 1
    result = CliRunner().invoke(app, ["dpo", f"policy={tiny_model_dir}", f"data={bad}", f"output_dir={tmp_path / 'cli'}", "precision=fp32"])
    assert result.exit_code == 2 and "bad.jsonl:3: field 'chosen'" in result.output


def test_config_rejects_bad_combinations():
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(DPOConfig, None, ["loss=conservative"])
    with pytest.raises(ConfigError, match="loss=conservative"):
        load_config(DPOConfig, None, ["label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="beta"):
        load_config(DPOConfig, None, ["beta=0"])
    with pytest.raises(ConfigError, match="nothing to compute"):
        load_config(DPOConfig, None, ["reference=none", "precompute_reference=true"])
    with pytest.raises(ConfigError, match="online: true"):
        load_config(DPOConfig, None, ["rounds=3"])
    with pytest.raises(ConfigError, match="online: true needs reward"):
        load_config(DPOConfig, None, ["online=true", "prompts=p.jsonl"])
    with pytest.raises(ConfigError, match=r"^reward_model was replaced by `reward: \[\{type: model, path: rm\}\]`"):
        load_config(DPOConfig, None, ["online=true", "prompts=p.jsonl", "reward_model=rm", "judge=default"])
    with pytest.raises(ConfigError, match=r"^judge was replaced by `reward: \[\{type: judge, path: default, judge_against: group\}\]`"):
        load_config(DPOConfig, None, ["online=true", "prompts=p.jsonl", "judge=default"])
    with pytest.raises(ConfigError, match=r"^constitution was replaced by `reward: \[\{type: judge, .*constitution: mine.yaml\}\]`"):
        DPOConfig(online=True, prompts="p.jsonl", constitution="mine.yaml")
    with pytest.raises(ConfigError, match="judge_against: group"):
        load_config(DPOConfig, None, ["online=true", "prompts=p.jsonl", "reward=[{type: judge, path: default}]"])
    with pytest.raises(ConfigError, match="set online: true or remove reward"):
        load_config(DPOConfig, None, ["reward=[{type: model, path: rm}]"])


def test_command_line(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "dpo",
            f"policy={tiny_model_dir}",
            f"data={tiny_data['prefs']}",
            f"output_dir={out}",
            "precision=fp32",
            "max_steps=2",
            "batch_size=4",
            "loss=ipo",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["stage"] == "dpo" and summary["loss"] == "ipo" and (out / "model" / "config.json").exists()
    assert {"train/loss", "train/rewards_chosen", "train/rewards_rejected", "train/margin", "train/accuracy"} <= set(metrics(out)[0])
    assert {"eval/loss", "eval/accuracy"} <= set(metrics(out)[-1])
