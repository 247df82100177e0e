"""A stand-in for the `vllm` package on a machine without a GPU: the calls tether makes (`LLM(...)`,
`generate` on token ids with per-request `SamplingParams`, the in-process model's `load_weights`,
`reset_prefix_cache`), answered by a transformers model on the CPU in fp32 with vLLM's output shapes.
It checks tether's side of the engine (prompts, the weight sync's names and values, reading outputs
back, the importance weights); vLLM itself is only exercised on a GPU."""

from __future__ import annotations

import types

import torch


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _Model:
    """vLLM's model as the weight sync sees it: `load_weights` takes (name, tensor) under the transformers names."""

    def __init__(self, hf_model):
        self.hf = hf_model
        self.params = dict(hf_model.named_parameters())
        self.loaded: list[str] = []

    def load_weights(self, weights):
        for name, tensor in weights:
            if name not in self.params:
                raise KeyError(f"vLLM's model has no weight named {name}")
            with torch.no_grad():
                self.params[name].copy_(tensor)
            self.loaded.append(name)


class LLM:
    instances: list[LLM] = []

    def __init__(self, model: str, **kwargs):
        from transformers import AutoModelForCausalLM

        self.kwargs = kwargs
        self.model = _Model(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval())
        executor = types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self.model)))
        self.llm_engine = types.SimpleNamespace(model_executor=executor)
        self.prefix_cache_resets = 0
        LLM.instances.append(self)

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=False):
        eos = self.model.hf.config.eos_token_id
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            ids = list(prompt["prompt_token_ids"])
            gen = torch.Generator().manual_seed(params.seed)
            tokens, logprobs, reason = [], [], "length"
            for _ in range(params.max_tokens):
                logits = self.model.hf(input_ids=torch.tensor([ids + tokens])).logits[0, -1].float() / params.temperature
                logp = torch.log_softmax(logits, -1)
                token = int(torch.multinomial(logp.exp(), 1, generator=gen))
                tokens.append(token)
                logprobs.append({token: types.SimpleNamespace(logprob=float(logp[token]), rank=1)})
                if token == eos:
                    reason = "stop"
                    break
            completion = types.SimpleNamespace(token_ids=tokens, logprobs=logprobs, finish_reason=reason)
            outputs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[completion]))
        return outputs


def module() -> types.ModuleType:
    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    return fake
