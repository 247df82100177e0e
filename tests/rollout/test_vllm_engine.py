"""engine=vllm, tether's side of it, against a stand-in for vLLM (fake_vllm.py: a transformers model on
the CPU behind vLLM's calls and output shapes): the weight sync pushes the merged policy under the
names vLLM reads and leaves the LoRA adapter as it was; a vLLM rollout has tether's layout and the
sampled tokens' log-probs; PPO and GRPO sync after every update and weigh the loss by the truncated
importance ratio (1 here, where both sides compute in fp32 with the same weights). vLLM itself runs
only on a GPU."""

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import ConfigError, GenerationSettings, GRPOConfig, LoraSettings, PPOConfig, VLLMSettings, load_config
from tether.data.templates import encode_prompt
from tether.models.loading import apply_lora, load_causal_lm, load_tokenizer
from tether.rollout.logprobs import policy_forward

HERE = Path(__file__).resolve().parent
FNS = HERE.parent / "stages" / "reward_fns.py"
PROMPTS = ["Name two primary colors.", "Write a haiku about autumn leaves.", "Say hello."]


def load_fake():
    spec = importlib.util.spec_from_file_location("fake_vllm", HERE / "fake_vllm.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    return fake


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = load_fake()
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    return fake


def lora_policy(tiny_model_dir):
    policy = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraSettings(enabled=True, r=4))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B is no longer 0, so merging changes the weights
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return policy


def test_the_weight_sync_pushes_the_merged_policy_and_leaves_the_adapter(tiny_model_dir, fake_vllm):
    from tether.rollout.vllm_engine import VLLMSampler

    policy = lora_policy(tiny_model_dir)
    flags = {n: p.requires_grad for n, p in policy.named_parameters()}
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = policy(input_ids=ids).logits.detach()
    sampler = VLLMSampler(str(tiny_model_dir), GenerationSettings(max_new_tokens=6), VLLMSettings(), seed=0)
    engine = sampler.llm
    assert engine.kwargs["logprobs_mode"] == "processed_logprobs" and engine.kwargs["distributed_executor_backend"] == "external_launcher"
    n = sampler.sync(policy)

    merged = copy.deepcopy(policy).merge_and_unload()
    expected = dict(merged.named_parameters())
    assert n == len(expected) and set(engine.model.loaded) == set(expected)  # every base weight, no adapter tensor
    for name, tensor in engine.model.params.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(
        engine.model.params["model.layers.0.self_attn.q_proj.weight"],
        load_causal_lm(str(tiny_model_dir)).model.layers[0].self_attn.q_proj.weight,
    )  # the adapter is in
    # the policy itself is as it was: adapter unmerged, same outputs, same trainable flags
    torch.testing.assert_close(policy(input_ids=ids).logits.detach(), before, rtol=0, atol=1e-6)
    assert {n: p.requires_grad for n, p in policy.named_parameters()} == flags
    assert engine.prefix_cache_resets == 1


def test_a_vllm_rollout_has_tethers_layout_and_the_sampled_log_probs(tiny_model_dir, fake_vllm):
    from tether.rollout.vllm_engine import VLLMSampler

    tok = load_tokenizer(str(tiny_model_dir))
    settings = GenerationSettings(max_new_tokens=8, max_prompt_tokens=64)
    sampler = VLLMSampler(str(tiny_model_dir), settings, VLLMSettings(), seed=0)
    rollout = sampler.sample(tok, PROMPTS * 4, seed=3)
    B = len(PROMPTS) * 4
    assert rollout.response_ids.shape == (B, 8) and rollout.prompt_ids.shape[0] == B
    for row, prompt in enumerate(PROMPTS * 4):  # prompts encoded as tether's sampler encodes them, left-padded
        ids, _ = encode_prompt(tok, prompt, 64)
        assert rollout.prompt_ids[row, -len(ids) :].tolist() == ids and rollout.prompt_mask[row].sum() == len(ids)
    lengths = rollout.response_mask.sum(-1)
    for row in range(B):
        n = int(lengths[row])
        assert rollout.response_mask[row, :n].all() and not rollout.response_mask[row, n:].any()
        assert bool(rollout.finished[row]) == (n > 0 and rollout.response_ids[row, n - 1].item() == tok.eos_token_id)  # EOS kept
    assert rollout.finished.any() or (lengths == 8).all()
    # vLLM's log-probs of the sampled tokens: here the trainer's own numbers (same weights, fp32)
    policy = load_causal_lm(str(tiny_model_dir)).eval()
    with torch.no_grad():
        mine = policy_forward(policy, rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1], 1.0)["logp"]
    mask = rollout.response_mask.float()
    torch.testing.assert_close(rollout.logprobs * mask, mine * mask, rtol=0, atol=1e-4)
    assert rollout.texts[0] == tok.decode(rollout.response_ids[0, : int(lengths[0])].tolist(), skip_special_tokens=True).strip()


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", ["true", "false"])
def test_ppo_with_vllm_syncs_after_every_update_and_weighs_by_the_importance_ratio(tiny_model_dir, tiny_data, fake_vllm, tmp_path, lora):
    from tether.stages.ppo import train_ppo

    out = tmp_path / "ppo"

    train_ppo(
        load_config(
            PPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: function, path: '{FNS}:letter_e'}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={out}",
                "precision=fp32",
                "generation.max_new_tokens=6",
                "save_every=0",
                "samples_every=0",
                "steps=2",
                "batch_size=4",
                "mini_batch_size=2",
                "optim.lr=1e-2",
                f"lora.enabled={lora}",
                "engine=vllm",
            ],
        )
    )
    engine = sys.modules["vllm"].LLM.instances[-1]
    assert engine.prefix_cache_resets == 3  # at the start, then after each of the 2 updates
    metrics = rows(out)
    for m in metrics:
        assert m["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-4) and m["rollout/is_weight_capped"] == 0
    assert metrics[-1]["rollout/kl"] != 0  # the policy moved, so the synced weights are not the starting ones
    final = load_file(str(out / "model" / "model.safetensors"))  # vLLM holds what training ended with
    for name, tensor in engine.model.params.items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=1e-5, msg=name)


def test_grpo_with_vllm_syncs_after_every_update_and_weighs_by_the_importance_ratio(tiny_model_dir, tiny_data, fake_vllm, tmp_path):
    from tether.stages.grpo import train_grpo

    out = tmp_path / "grpo"
    train_grpo(
        load_config(
            GRPOConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"reward=[{{type: function, path: '{FNS}:e_count'}}]",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={out}",
                "precision=fp32",
                "generation.max_new_tokens=6",
                "save_every=0",
                "steps=2",
                "group_size=4",
                "mini_batch_size=4",
                "optim.lr=1e-2",
                "engine=vllm",
            ],
        )
    )
    engine = sys.modules["vllm"].LLM.instances[-1]
    assert engine.prefix_cache_resets == 3
    for m in rows(out):
        assert m["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-4) and m["rollout/is_weight_capped"] == 0
    final = load_file(str(out / "model" / "model.safetensors"))
    for name, tensor in engine.model.params.items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=1e-5, msg=name)


def test_engine_vllm_refuses_what_it_cannot_do(monkeypatch):
    with pytest.raises(ConfigError, match="engine=vllm .* parallel.fsdp=true"):
        load_config(PPOConfig, None, ["engine=vllm", "parallel.fsdp=true", "lora.enabled=false"])
    with pytest.raises(ConfigError, match="is_cap must be >= 1"):
        load_config(GRPOConfig, None, [f"reward=[{{type: function, path: '{FNS}:e_count'}}]", "engine=vllm", "vllm.is_cap=0.5"])
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: a clear error, not an ImportError deep in a run
    from tether.models.loading import ModelError
    from tether.rollout.vllm_engine import VLLMSampler

    with pytest.raises(ModelError, match="pip install 'tether\\[vllm\\]'"):
        VLLMSampler("unused", GenerationSettings(), VLLMSettings(), seed=0)


def test_sampling_stages_use_one_engine_and_swap_in_each_rounds_policy(tiny_model_dir, tiny_data, fake_vllm, tmp_path, monkeypatch):
    # collect, then rejection sampling (2 rounds): one engine for the process; a new policy's weights are synced
    # into it (round 1's and round 2's SFT models, for their fresh samples), the same policy's are not pushed again
    from tether.config import CollectConfig, RSConfig
    from tether.rollout import sampling as sampling_module
    from tether.stages.bon import rejection_sampling
    from tether.stages.collect import collect

    monkeypatch.setattr(sampling_module, "_ENGINES", {})
    gen = ["generation.max_new_tokens=6", "precision=fp32", "engine=vllm"]
    summary = collect(
        load_config(
            CollectConfig,
            None,
            [
                f"model={tiny_model_dir}",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path / 'collect'}",
                "responses_per_prompt=2",
                "limit=4",
                *gen,
            ],
        )
    )
    assert summary["pairs"] >= 0 and len((tmp_path / "collect" / "samples.jsonl").read_text().splitlines()) == 8
    rejection_sampling(
        load_config(
            RSConfig,
            None,
            [
                f"policy={tiny_model_dir}",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path / 'rs'}",
                f"reward=[{{type: function, path: '{FNS}:letter_e'}}]",
                "rounds=2",
                "n=2",
                "eval_samples=1",
                "sft.max_steps=1",
                "sft.batch_size=4",
                "sft.optim.lr=1e-2",
                *gen,
            ],
        )
    )
    engines = sys.modules["vllm"].LLM.instances
    assert len(engines) == 1 and engines[0].prefix_cache_resets == 2
    final = load_file(str(tmp_path / "rs" / "round_2" / "sft" / "model" / "model.safetensors"))
    for name, tensor in engines[0].model.params.items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=0, msg=name)


def test_eval_samples_baseline_and_policy_with_one_engine(tiny_model_dir, tiny_data, fake_vllm, tmp_path, monkeypatch):
    # tether eval engine=vllm: the engine samples the baseline, then takes the policy's weights and samples it; KL and
    # scores come from the models themselves, so the baseline (its own reference) has KL 0 and the policy does not
    from tether.config import EvalConfig
    from tether.models.loading import save_model
    from tether.rollout import sampling as sampling_module
    from tether.stages.evaluate import evaluate

    monkeypatch.setattr(sampling_module, "_ENGINES", {})
    policy = load_causal_lm(str(tiny_model_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_model(policy, load_tokenizer(str(tiny_model_dir)), tmp_path / "policy")
    s = evaluate(
        load_config(
            EvalConfig,
            None,
            [
                f"policy={tmp_path / 'policy'}",
                f"baseline={tiny_model_dir}",
                f"prompts={tiny_data['prompts']}",
                f"output_dir={tmp_path / 'eval'}",
                "limit=4",
                "precision=fp32",
                "engine=vllm",
                "generation.max_new_tokens=6",
            ],
        )
    )
    assert s["prompts"] == 4 and s["kl_baseline"] == 0.0 and s["kl_policy"] > 0
    engines = sys.modules["vllm"].LLM.instances
    assert len(engines) == 1 and engines[0].prefix_cache_resets == 1
    saved = load_file(str(tmp_path / "policy" / "model.safetensors"))
    for name, tensor in engines[0].model.params.items():  # the engine ended holding the policy
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, msg=name)
