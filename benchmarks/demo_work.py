"""Where the demo's PPO spends work that is not needed: the padding in its passes, on the default model's tokenizer (issue 28).

A PPO rollout of `batch` prompts is one left-padded (batch, P + R) tensor, and the reference, reward and training
passes run over all of it. This prints the share of those slots that are padding, for the demo's prompts (Alpaca seed
tasks, max_prompt_tokens 128) and its response lengths, over random batches: what packing the passes (or bucketing
their chunks by length) could save.

    python benchmarks/demo_work.py [--batch 16]

Writes runs/bench/demo_work.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from tether.config import resolve_path
from tether.data.readers import read_prompts
from tether.data.templates import encode_prompt
from tether.models.loading import default_model_dir, load_tokenizer

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


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
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

    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
