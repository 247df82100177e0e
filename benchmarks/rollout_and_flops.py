"""Benchmark: tether's rollout against plain `model.generate`, and a training step's FLOP/s against this machine's matmul peak.

1. Generation throughput. The same model, prompts and batch are sampled at temperature 1 (top-p 1, top-k off, no
   repetition penalty) by tether's sampling loop (rollout/sampling.py: the one PPO and GRPO use, which also keeps each
   token's log-prob) and by Hugging Face `model.generate(do_sample=True)`. Each decode step advances every row of the
   batch until all rows have stopped, so the work is batch x decode steps; the figure is those token slots per
   second (and real tokens, up to each row's EOS, per second beside it). `--repeats` runs each, alternating; medians.

2. Training efficiency. The matmul peak is measured here: the best of several fp32 (n x n) @ (n x n) products, in
   FLOP/s. A training step is tether's SFT step on the same model (forward, masked next-token cross-entropy,
   backward, AdamW): its FLOPs are counted the usual way, 6 x (non-embedding parameters + LM head) per token plus
   attention's 12 x layers x width x sequence length per token (Kaplan et al. 2020; Chinchilla's appendix F), and
   divided by its median time. The fraction of the peak is how much of the machine the step uses.

    .venv/bin/python benchmarks/rollout_and_flops.py [--model default|tiny] [--batch 16] [--new-tokens 48] [--repeats 3]

Writes runs/bench/rollout_and_flops.json. Prints the machine, the library versions and the settings it ran with.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "runs" / "bench" / "rollout_and_flops.json"


def model_dir(name: str) -> str:
    if name == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_model_dir  # the test suite's tiny Llama

        out = ROOT / "runs" / "bench" / "rollout_and_flops" / "tiny"
        if not (out / "config.json").exists():
            build_tiny_model_dir(out)
        return str(out)
    from tether.models.loading import resolve_model

    return resolve_model(name)


def prompts(n: int) -> list[str]:
    from tether.config import resolve_path
    from tether.data.readers import read_prompts

    rows = read_prompts(resolve_path("shared:alpaca_seed_tasks.jsonl"), limit=n)
    return [r.prompt for r in rows]


def hf_generate(model, tokenizer, batch: list[str], new_tokens: int, seed: int):
    from transformers import GenerationConfig

    from tether.data.collate import pad_left
    from tether.data.templates import encode_prompt

    ids, mask = pad_left([encode_prompt(tokenizer, p, 128)[0] for p in batch], tokenizer.pad_token_id)
    torch.manual_seed(seed)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens, repetition_penalty=1.0,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    seconds = time.perf_counter() - t0
    response = out[:, ids.shape[1]:]
    is_eos = response == tokenizer.eos_token_id
    real = int(((is_eos.cumsum(-1) - is_eos.long()) == 0).sum())  # tokens up to and including each row's first EOS
    return seconds, response.shape[0] * response.shape[1], real


def tether_generate(model, tokenizer, batch: list[str], new_tokens: int, seed: int):
    from tether.config import GenerationSettings
    from tether.rollout.sampling import sample_rollout

    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, batch_size=len(batch), max_prompt_tokens=128)
    t0 = time.perf_counter()
    rollout = sample_rollout(model, tokenizer, batch, settings, seed=seed, precision="fp32")
    seconds = time.perf_counter() - t0
    return seconds, rollout.response_ids.shape[0] * rollout.response_ids.shape[1], int(rollout.response_mask.sum())


def matmul_peak(n: int = 2048, tries: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def training_step_flops(model, tokenizer, batch_size: int, seq_len: int, steps: int) -> dict:
    from tether.losses import sft_loss

    config = model.config
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    matmul_params = params - embedding + (embedding if tied else 0)  # the LM head is a matmul even when tied to the embeddings
    tokens = batch_size * seq_len
    flops = 6 * matmul_params * tokens + 12 * config.num_hidden_layers * config.hidden_size * seq_len * tokens
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen)
    labels = ids.clone()
    labels[:, : seq_len // 2] = -100  # the prompt half is not trained on, as in SFT
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss, _ = sft_loss(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step allocates Adam's moments
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return {"batch_size": batch_size, "seq_len": seq_len, "flops_per_step": flops, "seconds_per_step": seconds, "flops_per_second": flops / seconds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), 'tiny' (the test suite's), or a model directory")
    ap.add_argument("--batch", type=int, default=16, help="prompts per generation batch")
    ap.add_argument("--new-tokens", type=int, default=48, help="max_new_tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-seq", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=3)
    a = ap.parse_args(argv)

    import transformers

    from tether.models.loading import load_causal_lm, load_tokenizer

    path = model_dir(a.model)
    model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)
    batch = prompts(a.batch)
    result: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads()},
                    "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
                    "settings": {"model": path, "batch": a.batch, "new_tokens": a.new_tokens, "repeats": a.repeats, "precision": "fp32",
                                 "temperature": 1.0}}
    print(json.dumps({k: result[k] for k in ("machine", "versions", "settings")}, indent=1))

    runs = {"tether": [], "hf_generate": []}
    for k in range(a.repeats):
        for name, fn in (("tether", tether_generate), ("hf_generate", hf_generate)):
            seconds, slots, real = fn(model, tokenizer, batch, a.new_tokens, seed=k)
            runs[name].append({"seconds": seconds, "token_slots": slots, "real_tokens": real,
                               "slots_per_second": slots / seconds, "real_tokens_per_second": real / seconds})
    for name, trials in runs.items():
        result[name] = {"slots_per_second": statistics.median(t["slots_per_second"] for t in trials),
                        "real_tokens_per_second": statistics.median(t["real_tokens_per_second"] for t in trials), "trials": trials}
    ratio = result["tether"]["slots_per_second"] / result["hf_generate"]["slots_per_second"]
    result["generation_ratio"] = ratio
    print(f"\ngeneration, batch {a.batch}, up to {a.new_tokens} new tokens, median of {a.repeats}:")
    for name in runs:
        print(f"  {name:<12} {result[name]['slots_per_second']:8.1f} token slots/s  ({result[name]['real_tokens_per_second']:.1f} real tokens/s)")
    print(f"  tether / model.generate: x{ratio:.2f}")

    peak = matmul_peak()
    step = training_step_flops(load_causal_lm(path), tokenizer, a.train_batch, a.train_seq, a.train_steps)
    result["matmul_peak_flops"] = peak
    result["training_step"] = step | {"fraction_of_peak": step["flops_per_second"] / peak}
    print(f"\nmatmul peak (fp32, 2048^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"SFT training step ({a.train_batch} x {a.train_seq} tokens): {step['seconds_per_step']:.2f} s, "
          f"{step['flops_per_second'] / 1e9:.1f} GFLOP/s = {step['flops_per_second'] / peak:.0%} of the peak")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {RESULT.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
