"""Where the demo's PPO spends work that is not needed: two measurements on the default model (issue 28).

1. Padding. A PPO rollout of `batch` prompts is one left-padded (batch, P + R) tensor, and the reference, reward and
   training passes run over all of it. The share of those slots that are padding, for the demo's prompts
   (Alpaca seed tasks, max_prompt_tokens 128) and its mean response length, over random batches:
   what packing the passes (or bucketing their chunks by length) could save.
2. Frozen weights under bf16 autocast. Autocast casts each fp32 weight to bf16 at every call and keeps the cast only
   for weights that require grad, so a frozen model (the LoRA base, the reward model, eval's models) pays the cast at
   every decode step. Casting the frozen Linear weights to bf16 once gives the same tokens and log-probs bit for bit
   (autocast computes those products in bf16 either way; the tied embedding and the norms stay fp32); this checks that
   and times the sampler both ways, interleaved.

    python benchmarks/demo_work.py [--batch 16] [--new-tokens 32] [--repeats 3]

Writes runs/bench/demo_work.json. The timings need an otherwise idle machine; the padding share and the bit-for-bit
check do not.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from tether.config import GenerationSettings, resolve_path
from tether.data.readers import read_prompts
from tether.data.templates import encode_prompt
from tether.models.loading import default_model_dir, load_causal_lm, load_tokenizer
from tether.rollout.sampling import sample_rollout

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "runs" / "bench" / "demo_work.json"


def padding_share(lengths: list[int], batch: int, response: float, max_new: int, draws: int = 1000) -> float:
    """Mean share of padded slots in (batch, max prompt + max_new) rollouts of random prompts with `response` tokens each."""
    rng = random.Random(0)
    shares = []
    for _ in range(draws):
        rows = rng.sample(lengths, batch)
        shares.append(1 - (sum(rows) + batch * response) / (batch * (max(rows) + max_new)))
    return statistics.mean(shares)


def frozen_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """`model` frozen, with its Linear weights (not the tied embedding) cast to bf16 once."""
    model.eval().requires_grad_(False)
    embedding = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embedding:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)
    return model


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    path = str(default_model_dir())
    tokenizer = load_tokenizer(path)
    records = read_prompts(resolve_path("shared:alpaca_seed_tasks.jsonl"))
    lengths = [len(encode_prompt(tokenizer, r.prompt, 128)[0]) for r in records]
    result: dict = {"prompt_tokens": {"mean": statistics.mean(lengths), "max": max(lengths), "n": len(lengths)}}
    result["padding_share"] = {f"response {r}": padding_share(lengths, a.batch, r, 40) for r in (20, 33, 40)}
    print(f"demo prompts: {len(lengths)}, mean {statistics.mean(lengths):.1f} tokens, max {max(lengths)}")
    for name, share in result["padding_share"].items():
        print(f"padding share of a ({a.batch}, P + 40) PPO pass, {name} tokens: {share:.1%}")

    prompts = [r.prompt for r in records[: a.batch]]
    settings = GenerationSettings(max_new_tokens=a.new_tokens, temperature=1.0, top_p=1.0, batch_size=a.batch, max_prompt_tokens=128)
    models = {
        "frozen fp32": load_causal_lm(path).eval().requires_grad_(False),
        "frozen, Linear weights bf16": frozen_bf16(load_causal_lm(path)),
    }
    speeds: dict[str, list[float]] = {name: [] for name in models}
    rollouts = {}
    for _ in range(a.repeats + 1):  # the first round warms up
        for name, model in models.items():
            start = time.perf_counter()
            rollouts[name] = sample_rollout(model, tokenizer, prompts, settings, seed=0, precision="bf16")
            speeds[name].append(int(rollouts[name].response_mask.sum()) / (time.perf_counter() - start))
    a_, b_ = rollouts.values()
    result["same_tokens"] = torch.equal(a_.sequences, b_.sequences)
    result["same_logprobs"] = torch.equal(a_.logprobs, b_.logprobs)
    result["tokens_per_second"] = {name: {"median": statistics.median(v[1:]), "runs": v[1:]} for name, v in speeds.items()}
    for name, v in result["tokens_per_second"].items():
        print(f"sampler, batch {a.batch}, bf16 autocast, {name}: {v['median']:.1f} tokens/s (runs {[round(x, 1) for x in v['runs']]})")
    print(f"same tokens: {result['same_tokens']}, same log-probs: {result['same_logprobs']}")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
