"""Benchmark: tether's rollout against plain `model.generate`, and a training step's FLOP/s against this machine's matmul peak.

1. Generation throughput. The same model, prompts and batch are sampled at temperature 1 (top-p 1, top-k off, no
   repetition penalty) by tether's sampling loop (rollout/sampling.py: the one PPO and GRPO use, which also keeps each
   token's log-prob) and by Hugging Face `model.generate(do_sample=True)`. Each decode step advances every row of the
   batch until all rows have stopped, so the work is batch x decode steps; the figure is those token slots per
   second (and real tokens, up to each row's EOS, per second beside it). `--repeats` runs each, alternating; medians.
   Two more runs of the same kind: a batch of `--group` samples for each of batch/group prompts (GRPO's groups, PPO's
   samples_per_prompt; HF with `num_return_sequences`), where tether computes each prompt's prefill once; and tether
   alone at three times the batch, the same work in one batch instead of three.

   The bound: both samplers run the same matrix products (every weight matrix once per decode step, and the
   prefill), and at this batch those products are most of the time. Each sampler runs once more under
   torch.profiler, which sums the time spent in matrix products (aten::mm, addmm, bmm); a sampler with no other
   cost at all would take only that long, so HF's total / tether's matmul time bounds the ratio any sampler could
   reach here with the same products. The profiler's own cost per call makes that bound loose, so a decode step
   is also timed without it: one HF decode step (batch rows, a KV cache) against the model's linear layers alone,
   each applied once to a (batch, in) input, as a step applies them (`--floor-only` runs just this).

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

from tether.models.loading import kv_cache_of, with_kv_cache

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


def hf_generate(model, tokenizer, batch: list[str], new_tokens: int, seed: int, group: int = 1):
    from transformers import GenerationConfig

    from tether.data.collate import pad_left
    from tether.data.templates import encode_prompt

    ids, mask = pad_left([encode_prompt(tokenizer, p, 128)[0] for p in batch], tokenizer.pad_token_id)
    torch.manual_seed(seed)
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new_tokens,
        repetition_penalty=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_return_sequences=group,
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    seconds = time.perf_counter() - t0
    response = out[:, ids.shape[1] :]
    is_eos = response == tokenizer.eos_token_id
    real = int(((is_eos.cumsum(-1) - is_eos.long()) == 0).sum())  # tokens up to and including each row's first EOS
    return seconds, response.shape[0] * response.shape[1], real


def tether_generate(model, tokenizer, batch: list[str], new_tokens: int, seed: int, group: int = 1):
    from tether.config import GenerationSettings
    from tether.rollout.sampling import sample_rollout

    rows = [p for p in batch for _ in range(group)]  # a group's samples are consecutive rows, as GRPO gives them
    settings = GenerationSettings(max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, batch_size=len(rows), max_prompt_tokens=128)
    t0 = time.perf_counter()
    rollout = sample_rollout(model, tokenizer, rows, settings, seed=seed, precision="fp32")
    seconds = time.perf_counter() - t0
    return seconds, rollout.response_ids.shape[0] * rollout.response_ids.shape[1], int(rollout.response_mask.sum())


def matmul_seconds(fn, model, tokenizer, batch: list[str], new_tokens: int) -> tuple[float, float, int]:
    """(total seconds, seconds in matrix products, token slots) of one run of a sampler under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, slots, _ = fn(model, tokenizer, batch, new_tokens, seed=0)
    total = time.perf_counter() - t0
    mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
    return total, mm, slots


@torch.no_grad()
def decode_floor(model, batch: int, context: int, steps: int = 8, tries: int = 5) -> dict:
    """Milliseconds of one decode step of the HF model (batch rows, a KV cache of `context` tokens, no profiler),
    against the same step's linear layers alone: every nn.Linear of the model applied once to a (batch, in) input, as
    a decode step applies each of them once. No sampler can spend less than the second; their ratio bounds any
    sampler's speed-up over a plain step here. Medians over `tries` runs of `steps` steps."""
    import copy

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, context))
    cache = kv_cache_of(model(input_ids=ids, use_cache=True))
    token = torch.randint(0, vocab, (batch, 1))
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def hf_step() -> float:
        past = copy.deepcopy(cache)
        t0 = time.perf_counter()
        for k in range(steps):
            mask = torch.ones(batch, 1, 1, context + 1 + k, dtype=torch.bool)
            model(
                input_ids=token,
                attention_mask=mask,
                position_ids=torch.full((batch, 1), context + k),
                use_cache=True,
                **with_kv_cache(past),
            )
        return (time.perf_counter() - t0) / steps

    def linear_only() -> float:
        inputs = [torch.randn(batch, w.shape[1]) for w in linears]
        t0 = time.perf_counter()
        for _ in range(steps):
            for x, w in zip(inputs, linears):
                x @ w.T
        return (time.perf_counter() - t0) / steps

    hf = statistics.median(hf_step() for _ in range(tries))
    floor = statistics.median(linear_only() for _ in range(tries))
    return {"batch": batch, "context": context, "hf_step_ms": hf * 1e3, "linear_only_ms": floor * 1e3, "ratio_bound": hf / floor}


def matmul_peak(n: int = 2048, tries: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


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
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "flops_per_step": flops,
        "seconds_per_step": seconds,
        "flops_per_second": flops / seconds,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), 'tiny' (the test suite's), or a model directory")
    ap.add_argument("--batch", type=int, default=16, help="prompts per generation batch")
    ap.add_argument("--new-tokens", type=int, default=48, help="max_new_tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group", type=int, default=4, help="samples per prompt in the grouped run (1 = skip it)")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-seq", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--floor-only", action="store_true", help="only the decode-step floor (a minute)")
    a = ap.parse_args(argv)

    import transformers

    from tether.models.loading import load_causal_lm, load_tokenizer

    path = model_dir(a.model)
    model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)
    batch = prompts(a.batch)
    result: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {
            "model": path,
            "batch": a.batch,
            "new_tokens": a.new_tokens,
            "repeats": a.repeats,
            "group": a.group,
            "precision": "fp32",
            "temperature": 1.0,
        },
    }
    print(json.dumps({k: result[k] for k in ("machine", "versions", "settings")}, indent=1))

    def compare(runs: dict, batch: list[str], group: int, label: str) -> dict:
        trials: dict = {name: [] for name in runs}
        for k in range(a.repeats):
            for name, fn in runs.items():
                seconds, slots, real = fn(model, tokenizer, batch, a.new_tokens, seed=k, group=group)
                trials[name].append(
                    {
                        "seconds": seconds,
                        "token_slots": slots,
                        "real_tokens": real,
                        "slots_per_second": slots / seconds,
                        "real_tokens_per_second": real / seconds,
                    }
                )
        out = {
            name: {
                "slots_per_second": statistics.median(t["slots_per_second"] for t in ts),
                "real_tokens_per_second": statistics.median(t["real_tokens_per_second"] for t in ts),
                "trials": ts,
            }
            for name, ts in trials.items()
        }
        print(f"\n{label}, up to {a.new_tokens} new tokens, median of {a.repeats}:")
        for name in runs:
            print(
                f"  {name:<12} {out[name]['slots_per_second']:8.1f} token slots/s  ({out[name]['real_tokens_per_second']:.1f} real tokens/s)"
            )
        return out

    # the floor of a decode step: its linear layers alone, measured without a profiler
    floor = decode_floor(model, a.batch, context=64 + a.new_tokens // 2)
    result["decode_floor"] = floor
    print(
        f"\none decode step, batch {a.batch}, {floor['context']} tokens of context: HF {floor['hf_step_ms']:.1f} ms, "
        f"its linear layers alone {floor['linear_only_ms']:.1f} ms: no sampler can beat a plain step by more than x{floor['ratio_bound']:.2f}"
    )
    if a.floor_only:
        return result

    samplers = {"tether": tether_generate, "hf_generate": hf_generate}
    result |= compare(samplers, batch, 1, f"generation, batch {a.batch}")
    ratio = result["tether"]["slots_per_second"] / result["hf_generate"]["slots_per_second"]
    result["generation_ratio"] = ratio
    print(f"  tether / model.generate: x{ratio:.2f}")

    # the bound: the time in matrix products, which any sampler doing the same products spends
    profiled = {name: matmul_seconds(fn, model, tokenizer, batch, a.new_tokens) for name, fn in samplers.items()}
    (hf_total, _, hf_slots), (_, tether_mm, tether_slots) = profiled["hf_generate"], profiled["tether"]
    bound = (hf_total / hf_slots) / (tether_mm / tether_slots)  # per token slot: the two runs' draws differ
    result["matmul_share"] = {
        name: {"seconds": total, "matmul_seconds": mm, "token_slots": slots, "share": mm / total}
        for name, (total, mm, slots) in profiled.items()
    }
    result["ratio_bound"] = bound
    print(
        "\nunder torch.profiler (seed 0): "
        + "; ".join(f"{name} {total:.2f} s, {mm / total:.0%} in matrix products" for name, (total, mm, _) in profiled.items())
    )
    print(f"  a sampler whose only cost is tether's matrix products would reach x{bound:.2f} model.generate")

    # groups: batch / group prompts, group samples each (the same number of rows)
    if a.group > 1:
        grouped = compare(samplers, batch[: a.batch // a.group], a.group, f"groups: {a.batch // a.group} prompts x {a.group} samples")
        grouped["ratio"] = grouped["tether"]["slots_per_second"] / grouped["hf_generate"]["slots_per_second"]
        result["grouped"] = grouped
        print(f"  tether / model.generate: x{grouped['ratio']:.2f}")

    # the same sampler with three batches' rows in one (PPO's generation.batch_size)
    wide = compare({"tether": tether_generate}, prompts(3 * a.batch), 1, f"tether alone, batch {3 * a.batch}")["tether"]
    result["wide_batch"] = {
        "batch": 3 * a.batch,
        **wide,
        "ratio_to_batch": wide["real_tokens_per_second"] / result["tether"]["real_tokens_per_second"],
    }
    print(f"  real tokens/s against batch {a.batch}: x{result['wide_batch']['ratio_to_batch']:.2f}")

    peak = matmul_peak()
    step = training_step_flops(load_causal_lm(path), tokenizer, a.train_batch, a.train_seq, a.train_steps)
    fraction = step["flops_per_second"] / peak
    result["matmul_peak_flops"] = peak
    # a step cannot beat the machine's own matmul peak: above 100% the peak was measured badly (another process took
    # the cores while it ran, or a frequency change between the two), and the fraction is not reported
    result["training_step"] = step | {"fraction_of_peak": fraction if fraction <= 1.0 else None, "peak_measured_badly": fraction > 1.0}
    print(f"\nmatmul peak (fp32, 2048^3): {peak / 1e9:.1f} GFLOP/s")
    print(
        f"SFT training step ({a.train_batch} x {a.train_seq} tokens): {step['seconds_per_step']:.2f} s, "
        f"{step['flops_per_second'] / 1e9:.1f} GFLOP/s = "
        + (
            f"{fraction:.0%} of the peak"
            if fraction <= 1.0
            else f"{fraction:.0%} of the peak: the peak was measured badly (rerun on an idle machine)"
        )
    )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {RESULT.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
