"""PPO options beyond the classic recipe: stop strings, KL as a loss, reward whitening, the
entropy bonus, PPO-ptx, and the Goodhart guard (held-out checks, best policy, early stop)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import ConfigError, GenerationSettings, PPOConfig, load_config
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.rollout.generate import generate
from tether.stages.ppo import train_ppo

FNS = Path(__file__).resolve().parent / "reward_fns.py"
PROMPTS = ["Name two primary colors.", "Write a haiku about autumn leaves and the cold wind in October."]


def ppo(tiny_model_dir, tiny_data, out, fn, *extra):
    return train_ppo(
        load_config(
            PPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: function, path: '{FNS}:{fn}'}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={out}",
                "precision=fp32",
                "generation.max_new_tokens=8",
                "generation.batch_size=8",
                "save_every=0",
                "samples_every=0",
                "batch_size=4",
                "mini_batch_size=2",
                *extra,
            ],
        )
    )


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_stop_string_ends_the_response_at_its_first_occurrence(tiny_model_dir):
    model, tok = load_causal_lm(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    free = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=16), seed=3, precision="fp32")
    text = tok.decode(free.response_ids[0, : int(free.lengths[0])].tolist(), skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # two characters from the middle of what it wrote
    assert stop.strip()
    cut = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=16, stop_strings=[stop]), seed=3, precision="fp32")
    n = int(cut.lengths[0])
    ids = cut.response_ids[0, :n].tolist()
    assert ids == free.response_ids[0, :n].tolist()  # same sample, only shorter
    assert stop in tok.decode(ids, skip_special_tokens=True)
    assert stop not in tok.decode(ids[:-1], skip_special_tokens=True)  # ended at the first token that completes it
    assert bool(cut.finished[0]) and cut.response_mask[0, n:].sum() == 0
    # the reward model still reads it as text + EOS
    seqs, attn = cut.sequences_for_reward(tok.eos_token_id, tok.pad_token_id)
    last = int(attn[0].nonzero().max())
    assert seqs[0, last] == tok.eos_token_id and int(attn[0].sum()) == int(cut.attention_mask[0].sum()) + 1


def test_kl_as_loss_keeps_the_reward_free_of_kl_and_holds_the_policy_back(tiny_model_dir, tiny_data, tmp_path):
    common = [
        "steps=8",
        "kl.penalty=loss",
        "kl.estimator=k3",
        "kl.adaptive=false",
        "whiten_rewards=true",
        "lora.enabled=false",
        "optim.lr=3e-3",
        "optim.schedule=cosine",
        "optim.warmup_ratio=0.05",
    ]
    ppo(tiny_model_dir, tiny_data, tmp_path / "leash", "letter_e", *common, "kl.init_beta=5.0")
    ppo(tiny_model_dir, tiny_data, tmp_path / "free", "letter_e", *common, "kl.init_beta=0.0")
    leash, free = rows(tmp_path / "leash"), rows(tmp_path / "free")
    assert leash[-1]["rollout/kl"] > 0 and all(x["rollout/non_score_reward"] == 0 for x in leash)  # KL measured, not in the reward
    assert all(x["train/kl_loss"] >= 0 for x in leash)  # k3 >= 0
    assert sum(x["rollout/kl"] for x in leash) < 0.75 * sum(x["rollout/kl"] for x in free)  # the loss term holds the policy near pi_ref


def test_entropy_bonus_slows_the_collapse_onto_one_behaviour(tiny_model_dir, tiny_data, tmp_path):
    # letter_e rewards one narrow behaviour, so PPO lowers entropy; the bonus must hold it higher
    common = [
        "steps=6",
        "kl.adaptive=false",
        "kl.init_beta=0",
        "optim.lr=1e-2",
        "optim.schedule=constant",
        "lora.enabled=false",
        "ppo_epochs=4",
    ]
    ppo(tiny_model_dir, tiny_data, tmp_path / "plain", "letter_e", *common)
    ppo(tiny_model_dir, tiny_data, tmp_path / "bonus", "letter_e", *common, "ent_coef=2.0")
    plain, bonus = rows(tmp_path / "plain"), rows(tmp_path / "bonus")
    assert plain[-1]["rollout/entropy"] < plain[0]["rollout/entropy"] - 0.05  # the task does collapse entropy
    assert bonus[-1]["rollout/entropy"] > plain[-1]["rollout/entropy"] + 0.03, (plain[-1]["rollout/entropy"], bonus[-1]["rollout/entropy"])
    assert bonus[0]["train/entropy_bonus"] > 0 and "train/entropy_bonus" not in plain[0]


def test_ptx_loss_pulls_the_policy_towards_the_demonstrations(tiny_model_dir, tiny_data, tmp_path):
    common = ["steps=4", "kl.adaptive=false", "kl.init_beta=0", "optim.lr=5e-3", "lora.enabled=false", f"ptx_data={tiny_data['demos']}"]
    ppo(tiny_model_dir, tiny_data, tmp_path / "ptx", "constant", *common, "ptx_coef=1.0", "ptx_batch_size=4")
    r = rows(tmp_path / "ptx")
    assert r[-1]["train/ptx_loss"] < r[0]["train/ptx_loss"]  # demonstrations' NLL falls: the SFT term is trained


def test_goodhart_guard_rolls_back_when_kl_passes_the_ceiling(tiny_model_dir, tiny_data, tmp_path):
    # a ceiling below any estimate the check can return: the first check after an update passes it (a small positive
    # ceiling would leave this to chance: on 4 prompts of a tiny model, the k1 estimate of a small KL is often negative)
    s = ppo(
        tiny_model_dir,
        tiny_data,
        tmp_path / "g",
        "letter_e",
        "steps=6",
        "optim.lr=1e-2",
        "lora.enabled=false",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=1",
        "early_stop.limit=4",
        "early_stop.max_kl=-100",
    )
    assert s["steps_done"] == 1 and "max_kl" in s["stopped_early"]
    assert s["held_out"]["best_step"] == 0 and s["held_out"]["prompts"] == 4
    start, final = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(tmp_path / "g" / "model" / "model.safetensors"))
    for k in start:  # rolled back to the starting policy, which the ceiling still allowed
        assert torch.equal(start[k], final[k]), k
    assert "held_out/kl" in rows(tmp_path / "g")[0] and rows(tmp_path / "g")[0]["held_out/reward_se"] >= 0


def test_goodhart_guard_stops_when_held_out_reward_stops_rising(tiny_model_dir, tiny_data, tmp_path):
    s = ppo(
        tiny_model_dir,
        tiny_data,
        tmp_path / "g",
        "constant",
        "steps=8",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=1",
        "early_stop.limit=4",
        "early_stop.patience=2",
    )
    # a constant reward never beats the start, so two checks without a new best end the run
    assert s["steps_done"] == 2 and "not improved" in s["stopped_early"] and s["held_out"]["best_step"] == 0
    assert (tmp_path / "g" / "best" / "policy.safetensors").exists()


def test_goodhart_guard_keeps_the_best_step_and_resumes_with_it(tiny_model_dir, tiny_data, tmp_path):
    common = [
        "steps=4",
        "optim.lr=1e-2",
        "lora.enabled=false",
        "kl.init_beta=0.001",
        "kl.adaptive=false",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=2",
        "early_stop.limit=4",
        "early_stop.patience=0",
    ]
    full = ppo(tiny_model_dir, tiny_data, tmp_path / "a", "letter_e", *common)
    assert ppo(tiny_model_dir, tiny_data, tmp_path / "b", "letter_e", *common, "interrupt_after=2") is None
    resumed = ppo(tiny_model_dir, tiny_data, tmp_path / "b", "letter_e", *common)
    assert resumed["held_out"] == full["held_out"] and full["steps_done"] == 4
    assert full["held_out"]["best_reward"] >= full["held_out"]["initial_reward"]


@pytest.mark.parametrize("tolerance, kept", [(0.0, 8), (0.15, 12)])
def test_goodhart_guard_tolerance_keeps_the_latest_reading_within_it_of_the_best(tmp_path, tolerance, kept):
    # seed 0's checks of the HH config (runs/ppo_hh_N24_seed0): 2.278 at step 8 is the best reading; step 12 reads
    # 0.119 lower, inside a tolerance of 0.15, so it is kept instead; step 16 passes the KL ceiling and is never kept
    from tether import training
    from tether.config import EarlyStopSettings

    weight = torch.nn.Linear(1, 1, bias=False)
    guard = training.GoodhartGuard(
        EarlyStopSettings(prompts="p.jsonl", every=4, max_kl=6.0, patience=3, tolerance=tolerance), tmp_path, {"policy": weight}, steps=20
    )
    checks = {4: (1.788, 1.96), 8: (2.278, 4.39), 12: (2.159, 4.98), 16: (2.402, 6.03)}
    with torch.no_grad():
        weight.weight.fill_(0.0)
    guard.start({"reward": 1.160, "kl": 0.0})
    reasons = []
    for step, (reward, kl) in checks.items():
        with torch.no_grad():
            weight.weight.fill_(float(step))  # the policy after `step` steps
        reasons.append(guard.update(step, {"reward": reward, "kl": kl}))
    assert reasons[:3] == [None, None, None] and "max_kl" in reasons[3]
    assert guard.state.step == kept and guard.state.reward == checks[kept][0] and guard.state.top == 2.278
    assert guard.state.since == 2  # patience counts from the best reading, step 8, either way
    guard.roll_back(16, "ppo")
    assert weight.weight.item() == float(kept)
    assert guard.summary(32)["top_reward"] == 2.278 and guard.summary(32)["best_step"] == kept
    with pytest.raises(ConfigError, match="early_stop.tolerance must be >= 0"):
        load_config(PPOConfig, None, ["early_stop.tolerance=-0.1"])


def test_the_guard_state_goes_into_a_checkpoint_and_old_checkpoints_still_resume(tmp_path):
    # the state is a GuardState; a checkpoint holds its to_dict (the keys the dict had), and a checkpoint written before
    # `top` and `checks` were kept resumes with the kept reading as the best so far
    from tether import training
    from tether.config import EarlyStopSettings

    settings = EarlyStopSettings(prompts="p.jsonl", every=4, max_kl=6.0, patience=2)
    guard = training.GoodhartGuard(settings, tmp_path, {}, steps=20)
    guard.start({"reward": 1.0, "kl": 0.0})
    assert guard.update(4, {"reward": 1.5, "kl": 2.0}) is None
    saved = guard.state_dict()
    assert set(saved) == {"step", "reward", "kl", "top", "since", "initial_reward", "initial", "last", "checks"}
    resumed = training.GoodhartGuard(settings, tmp_path, {}, steps=20)
    resumed.load_state_dict(saved)
    assert resumed.state == guard.state and resumed.summary(32) == guard.summary(32)
    old = training.GoodhartGuard(settings, tmp_path, {}, steps=20)
    old.load_state_dict({"step": 4, "reward": 1.5, "kl": 2.0, "since": 1, "initial_reward": 1.0})
    assert (old.state.top, old.state.since, old.state.checks) == (1.5, 1, [])
    assert "not improved for 2" in old.update(8, {"reward": 1.4, "kl": 3.0})  # 1.4 does not beat the kept 1.5
    fresh = training.GoodhartGuard(settings, tmp_path, {}, steps=20)
    fresh.load_state_dict(None)  # a checkpoint without the guard's state: it starts afresh
    assert fresh.state == training.GuardState()


def test_checks_come_every_near_steps_once_the_held_out_kl_nears_the_ceiling(tmp_path):
    # every 4 steps while the last check read under 4 nats, every 2 once one read at least 4 (seed 2's first two checks
    # of the HH config: 1.59 nats at step 4, 4.14 at step 8), back to every 4 when the KL falls under it again
    from tether import training
    from tether.config import EarlyStopSettings

    settings = EarlyStopSettings(prompts="p.jsonl", every=4, near_kl=4.0, every_near=2, max_kl=6.0, patience=0)
    guard = training.GoodhartGuard(settings, tmp_path, {}, steps=20)
    guard.start({"reward": 1.124, "kl": 0.0})
    readings = {4: 1.59, 8: 4.14, 10: 5.02, 12: 3.70, 16: 4.40, 18: 5.10, 20: 5.90}
    checked = []
    for done in range(1, 21):
        if guard.due(done):
            checked.append(done)
            assert guard.update(done, {"reward": 2.0, "kl": readings[done]}) is None
    assert checked == [4, 8, 10, 12, 16, 18, 20]  # 20 is also the last step
    # the time budget looks ahead to the next check by the same rule: 2 steps after a near reading
    guard = training.GoodhartGuard(
        EarlyStopSettings(prompts="p.jsonl", every=4, near_kl=4.0, every_near=2, max_minutes=10), tmp_path, {}, steps=20, started=0.0
    )
    guard.start({"reward": 1.0, "kl": 0.0})
    guard.update(8, {"reward": 2.0, "kl": 4.5})
    guard.check_seconds = 0.0
    assert "the check after step 10" in guard.out_of_time(9, 1e6)
    # without near_kl, checks fall on multiples of `every` and after the last step, as before
    plain = training.GoodhartGuard(EarlyStopSettings(prompts="p.jsonl", every=4), tmp_path, {}, steps=10)
    plain.start({"reward": 1.0, "kl": 0.0})
    due = []
    for done in range(1, 11):
        if plain.due(done):
            due.append(done)
            plain.update(done, {"reward": 1.0, "kl": 9.0})
    assert due == [4, 8, 10]
    # patience counts only the checks on the `every` schedule (seed 4's checks on this config: the best reading at step 8,
    # then two lower ones at 12 and 14): the extra check at 14 does not end the run, the regular one at 16 does
    guard = training.GoodhartGuard(
        EarlyStopSettings(prompts="p.jsonl", every=4, near_kl=4.0, every_near=2, max_kl=6.0, patience=2, tolerance=0.15),
        tmp_path,
        {},
        steps=20,
    )
    guard.start({"reward": 1.243, "kl": 0.0})
    reasons = {
        step: guard.update(step, {"reward": reward, "kl": kl})
        for step, (reward, kl) in {4: (1.560, 2.40), 8: (2.204, 3.62), 12: (2.186, 4.59), 14: (2.061, 5.55), 16: (2.100, 5.90)}.items()
    }
    assert [reasons[step] for step in (4, 8, 12, 14)] == [None] * 4 and "not improved for 2" in reasons[16]
    assert guard.state.step == 16 and guard.state.top == 2.204  # 2.100 is within 0.15 of the best reading
    with pytest.raises(ConfigError, match="early_stop.every_near must be at least 1"):
        load_config(PPOConfig, None, ["early_stop.every_near=0"])


def test_time_budget_stops_before_the_next_check_that_would_end_past_it(monkeypatch, tmp_path):
    # the prediction by hand: now + steps to the next check x the mean step + the last check's seconds
    from tether import training
    from tether.config import EarlyStopSettings

    clock = [0.0]
    monkeypatch.setattr(training.time, "time", lambda: clock[0])
    guard = training.GoodhartGuard(EarlyStopSettings(prompts="p.jsonl", every=4, max_minutes=10), tmp_path, {}, steps=20, started=0.0)
    guard.check_seconds = 30.0  # the start's check
    clock[0] = 30 + 100.0
    assert guard.out_of_time(1, 100.0) is None  # the check after step 4 ends at 130 + 3 x 100 + 30 = 460 s
    clock[0] = 130 + 140.0
    assert guard.out_of_time(2, 140.0) is None  # 270 + 2 x 120 + 30 = 540 s, inside 600
    clock[0] = 270 + 120.0
    reason = guard.out_of_time(3, 120.0)  # 390 + 1 x 120 + 30 = 540 s
    assert reason is None
    guard.check_seconds = 90.0  # a slower check after step 4: 510 + 4 x 120 + 90 = 1080 s
    clock[0] = 390 + 120.0
    reason = guard.out_of_time(4, 120.0)
    assert reason == "the check after step 8 would end at 18.0 minutes, past max_minutes=10"
    # with no held-out prompts the budget looks one step ahead; no budget, no stop
    bare = training.GoodhartGuard(EarlyStopSettings(max_minutes=10), tmp_path, {}, steps=20, started=0.0)
    clock[0] = 480.0
    assert bare.out_of_time(4, 120.0) is None  # 480 + 120 = 600 s: just inside
    clock[0] = 481.0
    assert bare.out_of_time(5, 120.0) == "step 6 would end at 10.0 minutes, past max_minutes=10"
    assert training.GoodhartGuard(EarlyStopSettings(), tmp_path, {}, steps=20, started=0.0).out_of_time(5, 1e9) is None


def test_time_budget_ends_the_run_on_its_best_checked_policy(tiny_model_dir, tiny_data, tmp_path):
    common = [
        "steps=6",
        "optim.lr=1e-2",
        "lora.enabled=false",
        "kl.init_beta=0.01",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=2",
        "early_stop.limit=4",
        "early_stop.patience=0",
    ]
    s = ppo(tiny_model_dir, tiny_data, tmp_path / "short", "letter_e", *common, "early_stop.max_minutes=0.0001")
    assert s["steps_done"] == 1 and "max_minutes" in s["stopped_early"] and "check after step 2" in s["stopped_early"]
    assert s["held_out"]["best_step"] == 0  # the only checked policy: the start, which the run rolled back to
    start, final = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(tmp_path / "short" / "model" / "model.safetensors"))
    assert all(torch.equal(start[k], final[k]) for k in start)
    ample = ppo(tiny_model_dir, tiny_data, tmp_path / "ample", "letter_e", *common, "early_stop.max_minutes=1000")
    plain = ppo(tiny_model_dir, tiny_data, tmp_path / "plain", "letter_e", *common)
    assert ample["steps_done"] == plain["steps_done"] == 6 and ample["stopped_early"] is None
    assert [r["rollout/reward"] for r in rows(tmp_path / "ample")] == [r["rollout/reward"] for r in rows(tmp_path / "plain")]
    with pytest.raises(ConfigError, match="early_stop.max_minutes must be > 0"):
        load_config(PPOConfig, None, ["early_stop.max_minutes=0"])


def test_held_out_checks_do_not_change_the_training(tiny_model_dir, tiny_data, tmp_path):
    # the guard only watches: checking every step, every 3rd step or never gives the same rollouts and updates
    common = ["steps=3", "optim.lr=1e-2", "lora.enabled=false", "kl.init_beta=0.01"]
    guard = [f"early_stop.prompts={tiny_data['prompts']}", "early_stop.limit=4", "early_stop.patience=0"]
    ppo(tiny_model_dir, tiny_data, tmp_path / "none", "letter_e", *common)
    ppo(tiny_model_dir, tiny_data, tmp_path / "every1", "letter_e", *common, *guard, "early_stop.every=1")
    ppo(tiny_model_dir, tiny_data, tmp_path / "every3", "letter_e", *common, *guard, "early_stop.every=3")
    runs = [rows(tmp_path / name) for name in ("none", "every1", "every3")]
    assert [sum("held_out/reward" in r for r in run) for run in runs] == [0, 3, 1]
    for key in ("rollout/reward", "rollout/kl", "train/policy_loss", "train/grad_norm"):
        values = [[r[key] for r in run] for run in runs]
        assert values[1] == values[0] and values[2] == values[0], key


@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_give_the_whole_minibatch_update(tiny_model_dir, tiny_data, tmp_path, micro):
    # one minibatch of 4 episodes in one pass, or as micro-batches of 1 (4 passes) or of 3 and 1
    # (unequal); a stop string makes the replies differ in length, so the token-share weighting
    # of each micro-batch's loss is what is tested
    common = [
        "steps=1",
        "ppo_epochs=1",
        "mini_batch_size=4",
        "lora.enabled=false",
        "optim.lr=1e-3",
        "generation.stop_strings=[e]",
        "samples_every=1",
    ]
    ppo(tiny_model_dir, tiny_data, tmp_path / "whole", "letter_e", *common, "micro_batch_size=4")
    ppo(tiny_model_dir, tiny_data, tmp_path / "micro", "letter_e", *common, f"micro_batch_size={micro}")
    lengths = {len(s["response"]) for s in map(json.loads, (tmp_path / "whole" / "samples.jsonl").read_text().splitlines())}
    assert len(lengths) > 1
    whole, split = rows(tmp_path / "whole")[0], rows(tmp_path / "micro")[0]
    for key in ("train/policy_loss", "train/value_loss", "train/grad_norm", "train/approx_kl"):
        assert split[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-7), key
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    a, b = (
        load_file(str(tmp_path / "whole" / "model" / "model.safetensors")),
        load_file(str(tmp_path / "micro" / "model" / "model.safetensors")),
    )
    assert sum((a[k] - base[k]).abs().sum().item() for k in base) > 0
    for k in base:  # Adam's first step is about lr * sign(g): compare at 1% of it
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_log_probs_and_values_from_the_sampling_pass_change_no_number(tiny_model_dir, tiny_data, tmp_path):
    """reuse_sampling_pass (the default) takes log pi_old, V_old and the entropy from the sampler instead of a second
    forward over the rollout: the same rollouts then give the same losses, KL and values, up to rounding."""
    common = ["steps=2", "lora.enabled=false", "optim.lr=3e-3", "kl.init_beta=0.2"]
    ppo(tiny_model_dir, tiny_data, tmp_path / "reuse", "letter_e", *common)
    ppo(tiny_model_dir, tiny_data, tmp_path / "forward", "letter_e", *common, "reuse_sampling_pass=false")
    reuse, forward = rows(tmp_path / "reuse"), rows(tmp_path / "forward")
    for a, b in zip(reuse, forward):
        for key in (
            "rollout/reward",
            "rollout/kl",
            "rollout/entropy",
            "train/policy_loss",
            "train/value_loss",
            "train/approx_kl",
            "train/clipfrac",
        ):
            assert a[key] == pytest.approx(b[key], rel=5e-3, abs=2e-4), key  # KL: a difference of near-equal numbers
        # EV = 1 - var(returns - values) / var(returns), with returns of a few hundredths: after one Adam step (about
        # lr * sign(g), so a rounding-sized gradient can flip a parameter's step) it moves by ~0.01 (AVX-512 CPUs: 0.008)
        assert a["train/explained_variance"] == pytest.approx(b["train/explained_variance"], abs=2e-2)
    assert reuse[1]["rollout/kl"] != 0 and reuse[1]["train/value_loss"] > 0  # a trained policy and value: not 0 == 0


def test_frozen_lower_blocks_stay_as_they_were(tiny_model_dir, tiny_data, tmp_path):
    """freeze_layers=1: the first block's adapters never train (the merged policy's block 0 equals the base's), the top block's do."""
    ppo(tiny_model_dir, tiny_data, tmp_path / "run", "letter_e", "steps=2", "optim.lr=1e-2", "freeze_layers=1")
    base, trained = load_causal_lm(str(tiny_model_dir)), load_causal_lm(str(tmp_path / "run" / "model"))
    first, last = (lambda m: m.model.layers[0].self_attn.q_proj.weight), (lambda m: m.model.layers[-1].self_attn.q_proj.weight)
    assert torch.equal(first(base), first(trained))
    assert not torch.equal(last(base), last(trained))
    assert torch.equal(base.model.embed_tokens.weight, trained.model.embed_tokens.weight)


def test_passes_from_the_recorded_frozen_blocks_change_no_number(tiny_model_dir, tiny_data, tmp_path):
    """reuse_frozen_states (the default with freeze_layers): the reference's pass and every update pass start above the
    frozen block from its recorded output; the run is the one that recomputes it."""
    common = ["steps=2", "optim.lr=1e-2", "freeze_layers=1", "kl.init_beta=0.2"]
    assert ppo(tiny_model_dir, tiny_data, tmp_path / "reuse", "letter_e", *common)["frozen_blocks_recorded"] == 1
    assert (
        ppo(tiny_model_dir, tiny_data, tmp_path / "full", "letter_e", *common, "reuse_frozen_states=false")["frozen_blocks_recorded"] == 0
    )
    reuse, full = rows(tmp_path / "reuse"), rows(tmp_path / "full")
    for a, b in zip(reuse, full):
        for key in ("rollout/reward", "rollout/kl", "train/policy_loss", "train/value_loss", "train/approx_kl", "train/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert reuse[1]["rollout/kl"] != 0  # a trained policy: not 0 == 0


def test_freezing_every_block_is_refused_by_name(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="freeze_layers=2 leaves no block .* it has 2"):
        ppo(tiny_model_dir, tiny_data, tmp_path / "run", "letter_e", "steps=1", "freeze_layers=2")


def test_value_lr_sets_the_value_heads_own_learning_rate(tiny_model_dir, tiny_data, tmp_path):
    """Adam moves each weight by at most about lr per update: the value head's steps scale with value_lr."""
    moved = {}
    for value_lr in ("1e-4", "1e-2"):
        out = tmp_path / value_lr
        ppo(tiny_model_dir, tiny_data, out, "letter_e", "steps=1", "optim.lr=1e-3", "optim.schedule=constant", f"value_lr={value_lr}")
        head = load_file(str(out / "value_head.safetensors"))["weight"]  # it starts at zero
        moved[value_lr] = head.abs().max().item()
    assert 1e-4 < moved["1e-4"] <= 4e-4 and 1e-2 < moved["1e-2"] <= 4e-2  # 2 updates (batch 4, minibatches of 2), ~lr each


def test_gold_peak_is_where_the_fitted_gao_curve_turns():
    from tether.training import gold_peak_kl

    # gold = d (1 - 0.5 ln d), d = sqrt(KL): the peak is at d* = exp(alpha / beta - 1) = e, KL* = e^2
    curve = lambda kl: math.sqrt(kl) * (1 - 0.5 * math.log(math.sqrt(kl))) if kl > 0 else 0.0  # noqa: E731
    checks = [[kl, curve(kl) + 0.3] for kl in (0.0, 1.0, 4.0, 9.0)]  # plus gold's own offset
    assert gold_peak_kl(checks[:3]) is None  # three numbers are fitted: not before a fourth check
    assert gold_peak_kl(checks) == pytest.approx(math.e**2, rel=1e-6)
    assert gold_peak_kl([[kl, 0.5 * math.sqrt(kl)] for kl in (0.0, 1.0, 4.0, 9.0)]) is None  # still rising: no peak


def test_gold_peak_guard_logs_the_fitted_peak(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """The guard fits Gao et al.'s curve to the held-out (KL, gold) readings, logs where it peaks and stops once the KL
    passes the peak. A tiny model's readings are noise (they may never show a peak), so each check's KL and gold are
    set to points on the curve of the test above: gold = 0.3 + d (1 - 0.5 ln d), d = sqrt(KL), which peaks at KL = e^2."""
    import tether.stages.ppo as ppo_stage

    kls = iter([0.0, 1.0, 4.0, 9.0, 16.0, 25.0])  # the starting policy's check, then one after each step
    real_check = ppo_stage.held_out_check

    def on_the_curve(*args, **kwargs):
        check, kl = real_check(*args, **kwargs), next(kls)
        d = math.sqrt(kl)
        return {**check, "kl": kl, "gold": 0.3 + (d * (1 - 0.5 * math.log(d)) if d > 0 else 0.0)}

    monkeypatch.setattr(ppo_stage, "held_out_check", on_the_curve)
    s = ppo(
        tiny_model_dir,
        tiny_data,
        tmp_path / "g",
        "letter_e",
        "steps=5",
        f"early_stop.prompts={tiny_data['prompts']}",
        "early_stop.every=1",
        "early_stop.limit=4",
        "early_stop.patience=0",
        "early_stop.gold_peak=true",
    )
    checks = [r for r in rows(tmp_path / "g") if "held_out/kl" in r]
    assert [r["held_out/kl"] for r in checks] == [1.0, 4.0, 9.0]  # the third step's check passed the peak: no fourth step
    assert [r["held_out/gold_peak_kl"] for r in checks[:2]] == [None, None]  # three numbers are fitted: from the 4th check
    assert checks[2]["held_out/gold_peak_kl"] == pytest.approx(math.e**2, rel=1e-6)  # 7.39 nats, and 9 > 7.39
    assert s["steps_done"] == 3 and s["stopped_early"] == (
        "held-out KL 9.00 nats passed 7.39, where the gold curve fitted to 4 checks peaks"
    )


def test_prompt_baseline_takes_out_what_only_the_prompt_decides(tiny_model_dir, tiny_data, tmp_path):
    """A reward set by the prompt alone says nothing about the responses. With two responses per prompt and the
    leave-one-out baseline every advantage is 0, so the policy does not move; without the baseline it does."""
    base = load_causal_lm(tiny_model_dir).model.layers[-1].self_attn.q_proj.weight
    moved = {}
    for baseline in ("true", "false"):
        out = tmp_path / baseline
        ppo(
            tiny_model_dir,
            tiny_data,
            out,
            "prompt_length",
            "steps=2",
            "samples_per_prompt=2",
            f"prompt_baseline={baseline}",
            "kl.init_beta=0",
            "kl.adaptive=false",
            "optim.lr=1e-2",
            "samples_every=1",
        )
        trained = load_causal_lm(out / "model").model.layers[-1].self_attn.q_proj.weight
        moved[baseline] = (trained - base).abs().max().item()
        samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert [s["prompt"] for s in samples[0::2]] == [s["prompt"] for s in samples[1::2]]  # each prompt twice, side by side
        assert rows(out)[0]["rollout/reward_std_within_prompt"] == 0.0
    assert moved["true"] == 0.0 and moved["false"] > 1e-4, moved


def test_prompt_baseline_needs_two_samples_per_prompt():
    from tether.config import ConfigError

    with pytest.raises(ConfigError, match="prompt_baseline needs samples_per_prompt >= 2"):
        load_config(PPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]", "prompt_baseline=true"])
    with pytest.raises(ConfigError, match=r"batch_size \(16\) must be a multiple of samples_per_prompt \(3\)"):
        load_config(PPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]", "samples_per_prompt=3"])


def test_fsdp_is_for_full_fine_tuning():
    from tether.config import ConfigError

    with pytest.raises(ConfigError, match="parallel.fsdp=true shards full fine-tuning"):
        load_config(
            PPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]", "parallel.fsdp=true"]
        )  # LoRA is PPO's default
    assert load_config(
        PPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]", "parallel.fsdp=true", "lora.enabled=false"]
    ).parallel.fsdp
    with pytest.raises(ConfigError, match="in parallel: zero_stage=2 chooses how fsdp=true"):
        load_config(PPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]", "parallel.zero_stage=2"])
    assert (
        load_config(
            PPOConfig,
            None,
            [f"reward=[{{type: function, path: '{FNS}:letter_e'}}]", "parallel.fsdp=true", "lora.enabled=false", "parallel.zero_stage=2"],
        ).parallel.zero_stage
        == 2
    )


def test_ray_placement_refuses_what_needs_the_reward_model_here():
    from tether.config import ConfigError

    with pytest.raises(ConfigError, match="placement=ray .* value_model=policy_head"):
        load_config(PPOConfig, None, ["placement=ray", "value_model=reward_adapter"])
    with pytest.raises(ConfigError, match="placement=ray runs in one process"):
        load_config(PPOConfig, None, ["placement=ray", "parallel.fsdp=true", "lora.enabled=false"])
    assert load_config(PPOConfig, None, ["placement=ray", "ray.gpus_per_model=1"]).ray.gpus_per_model == 1
    with pytest.raises(ConfigError, match="offload_frozen .* placement=ray"):
        load_config(PPOConfig, None, ["placement=ray", "offload_frozen=true"])
    with pytest.raises(ConfigError, match="value_model=reward_adapter .* offload_frozen"):
        load_config(PPOConfig, None, ["offload_frozen=true", "value_model=reward_adapter"])
