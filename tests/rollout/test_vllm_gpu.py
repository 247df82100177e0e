"""engine=vllm with vLLM itself, on a CUDA GPU (skipped elsewhere: `pip install "tether[vllm]"`, then
`pytest tests/rollout/test_vllm_gpu.py`). The weight sync is checked by what vLLM samples: after the
policy's LoRA adapter is changed and synced, vLLM's log-probs of its own samples match the trainer's
(fp32 on both sides), while before the sync they do not."""

import importlib.util

import pytest
import torch

from tether.config import GenerationSettings, LoraSettings, VLLMSettings
from tether.models.loading import apply_lora, default_model_dir, load_causal_lm, load_tokenizer
from tether.rollout.logprobs import policy_forward

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs a CUDA GPU and vLLM"
)

PROMPTS = ["Name two primary colors.", "Write a haiku about autumn leaves.", "How do I boil an egg?"] * 4


def gap(policy, rollout) -> float:
    mask = rollout.response_mask.float()
    with torch.no_grad():
        mine = policy_forward(policy, rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1], 1.0)["logp"]
    return float(((mine - rollout.logprobs).abs() * mask).sum() / mask.sum())


def test_vllm_samples_the_synced_policy():
    from tether.rollout.vllm_engine import VLLMSampler

    path = str(default_model_dir())
    tok = load_tokenizer(path)
    policy = apply_lora(load_causal_lm(path), LoraSettings(enabled=True, r=8)).eval()
    sampler = VLLMSampler(path, GenerationSettings(max_new_tokens=24, max_prompt_tokens=64), VLLMSettings(dtype="float32"), seed=0)
    sampler.sync(policy)
    assert gap(policy, sampler.sample(tok, PROMPTS, seed=1)) < 2e-3  # same weights, fp32: the kernels' rounding only
    torch.manual_seed(0)
    with torch.no_grad():  # an update: the adapter moves the policy away from the base vLLM started with
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    assert gap(policy, sampler.sample(tok, PROMPTS, seed=2)) > 2e-2  # vLLM still holds the old weights
    sampler.sync(policy)
    assert gap(policy, sampler.sample(tok, PROMPTS, seed=3)) < 2e-3  # now it samples the updated policy
