"""vLLM as the sampler of PPO and GRPO on a GPU machine (`engine=vllm`, extra `tether[vllm]`), and of the
stages that only sample (collect, best-of-N, rejection sampling, generate), where no sync is needed.

vLLM runs in the trainer's process, on the trainer's GPU, beside the policy ("colocated", as TRL's
colocate mode and veRL's hybrid engine do). It holds its own copy of the weights in its own layout
and a KV cache in `vllm.gpu_memory_utilization` of the GPU's memory. Three things tie it to training:

  weight sync   after every update the policy's weights are pushed into vLLM's model, one tensor at
                a time, under the names of the plain transformers model (a LoRA adapter is merged
                into the base for the push and taken out again after it); vLLM's prefix cache,
                computed with the old weights, is dropped
  rollout       vLLM samples from token ids (the prompts encoded exactly as tether's own sampler
                encodes them) and returns each sampled token's log-prob under softmax(logits /
                temperature) (`logprobs_mode="processed_logprobs"`); the result is tether's `Rollout`
  log-prob gap  vLLM's kernels (and its bf16) give log-probs a little off the trainer's for the same
                weights, so the sample is slightly off-policy. The trainer therefore computes log pi_old
                itself, and each token's policy-gradient term is weighed by the truncated importance
                ratio w_t = min(pi_old(y_t) / pi_vllm(y_t), vllm.is_cap) (`losses.truncated_importance_weights`;
                "TIS", Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
                Training"). `rollout/is_weight_mean` and `rollout/is_weight_capped` show the gap.

vLLM is imported only when `engine=vllm` is chosen, never on a CPU machine, and it needs a CUDA GPU.
One process per vLLM engine: `engine=vllm` is refused with several processes and with parallel.fsdp.
"""

from __future__ import annotations

import os
import socket

import torch

from tether.config import GenerationSettings, VLLMSettings
from tether.data.collate import pad_left
from tether.data.records import Prompt
from tether.data.templates import encode_prompt
from tether.models.loading import ModelError, device
from tether.rollout.generate import Rollout

__all__ = ["VLLMSampler", "policy_weights_for_sync", "training_sampler"]


def policy_weights_for_sync(policy):
    """(name, tensor) for every weight of the policy under the plain transformers model's names, as vLLM's
    `load_weights` reads them. A LoRA policy has its adapter merged into the base weights while the names
    are walked (the caller consumes the generator inside) and unmerged at the end, so training goes on
    with the same base and adapter."""
    lora = hasattr(policy, "merge_adapter") and hasattr(policy, "peft_config")
    if lora:
        policy.merge_adapter()
    try:
        base = policy.get_base_model() if lora else policy
        for name, param in base.named_parameters():
            if "lora_" in name:  # the adapter's own matrices: merged already, vLLM has no such tensors
                continue
            yield name.replace(".base_layer", ""), param.detach()
    finally:
        if lora:
            policy.unmerge_adapter()


class VLLMSampler:
    """A vLLM engine holding a copy of the policy: `sync(policy)` after each update, `sample(...)` for a rollout."""

    def __init__(self, model_path: str, generation: GenerationSettings, settings: VLLMSettings, seed: int):
        try:
            from vllm import LLM
        except ImportError as err:
            raise ModelError("engine=vllm needs vLLM and a CUDA GPU: pip install 'tether[vllm]' (or leave engine at tether)") from err
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(key, value)  # vLLM's in-process worker joins a process group of its own
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        self.generation, self.settings, self.model_path = generation, settings, model_path
        self.llm = LLM(
            model=model_path,
            seed=seed,
            dtype=settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len or generation.max_prompt_tokens + generation.max_new_tokens,
            distributed_executor_backend="external_launcher",  # the worker lives in this process, so its model is reachable
            logprobs_mode="processed_logprobs",  # log-probs after temperature scaling, the distribution actually sampled
            enable_prefix_caching=True,  # a prompt sampled several times (GRPO's groups) is prefilled once
        )

    def _model(self):
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

    @torch.no_grad()
    def sync(self, policy) -> int:
        """Push the policy's current weights into vLLM; returns the number of tensors pushed."""
        model, n = self._model(), 0
        for name, tensor in policy_weights_for_sync(policy):
            model.load_weights([(name, tensor)])
            n += 1
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
        return n

    @torch.no_grad()
    def sample(self, tokenizer, prompts: list[Prompt], seed: int, settings: GenerationSettings | None = None) -> Rollout:
        """One response per prompt (`settings`, or the engine's own generation settings): tether's `Rollout` with
        `logprobs` holding vLLM's log-probs of the sampled tokens."""
        from vllm import SamplingParams

        g = settings or self.generation
        encoded = [encode_prompt(tokenizer, p, g.max_prompt_tokens) for p in prompts]
        params = [
            SamplingParams(
                n=1,
                temperature=g.temperature,
                top_p=g.top_p,
                top_k=-1,
                min_p=0.0,
                repetition_penalty=1.0,
                max_tokens=g.max_new_tokens,
                logprobs=0,
                seed=seed * 100003 + i,
                stop=g.stop_strings or None,
                include_stop_str_in_output=True,
            )
            for i in range(len(prompts))
        ]  # a seed per row: the draws do not depend on how vLLM batches
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in encoded], sampling_params=params, use_tqdm=False)
        return rollout_from_outputs(outputs, encoded, tokenizer, g.max_new_tokens)


def training_sampler(cfg, policy_path: str, policy, world: int) -> VLLMSampler | None:
    """PPO's and GRPO's vLLM engine (None unless engine=vllm), holding the policy's current weights (a resumed run's too)."""
    if cfg.engine != "vllm":
        return None
    if world > 1:
        raise ModelError("engine=vllm runs one vLLM engine beside the policy in one process; drop --num-processes")
    sampler = VLLMSampler(policy_path, cfg.generation, cfg.vllm, cfg.seed)
    sampler.sync(policy)
    return sampler


def rollout_from_outputs(outputs, encoded: list[tuple[list[int], bool]], tokenizer, max_new_tokens: int) -> Rollout:
    """vLLM's `RequestOutput`s (one completion each) as tether's `Rollout`: prompts left-padded, responses
    right-padded, EOS kept in the response, `finished` when it ended with EOS or a stop string."""
    pad = tokenizer.pad_token_id
    prompt_ids, prompt_mask = pad_left([ids for ids, _ in encoded], pad)
    B, R = len(outputs), max_new_tokens
    response_ids = torch.full((B, R), pad, dtype=torch.long)
    response_mask = torch.zeros(B, R, dtype=torch.long)
    logprobs = torch.zeros(B, R)
    finished = torch.zeros(B, dtype=torch.bool)
    for row, out in enumerate(outputs):
        completion = out.outputs[0]
        ids = list(completion.token_ids)[:R]
        if len(completion.logprobs or []) < len(ids):
            raise ModelError(f"vLLM returned {len(completion.logprobs or [])} log-probs for {len(ids)} tokens (row {row})")
        response_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        response_mask[row, : len(ids)] = 1
        # each position: {token id: Logprob}; with logprobs=0 it holds the sampled token (and maybe the top one)
        logprobs[row, : len(ids)] = torch.tensor([position[token].logprob for token, position in zip(ids, completion.logprobs)])
        finished[row] = completion.finish_reason == "stop"  # EOS or a stop string, not the length limit
    texts = tokenizer.batch_decode(response_ids * response_mask + pad * (1 - response_mask), skip_special_tokens=True)
    dev = device()
    return Rollout(
        prompt_ids=prompt_ids.to(dev),
        prompt_mask=prompt_mask.to(dev),
        response_ids=response_ids.to(dev),
        response_mask=response_mask.to(dev),
        finished=finished.to(dev),
        texts=[t.strip() for t in texts],
        prompts_truncated=sum(t for _, t in encoded),
        logprobs=logprobs.to(dev),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
