"""A verifiable reward (RLVR): two-digit arithmetic, checked by exact match.

The problems are prompts like "What is 37 + 45? Answer with the number only." whose answer is
in the prompt row's meta; the reward function reads the last number in the completion and
scores 1.0 when it equals the answer, else 0.0. No reward model, no judge: the reward cannot be
hacked, only earned, so a rise of held-out accuracy is learning, not over-optimisation.

    python -m tether.rewards.arithmetic make --out runs/arithmetic            # train.jsonl, held_out.jsonl
    tether grpo --config configs/grpo/arithmetic.yaml                        # reward: tether.rewards.arithmetic:exact_match
    python -m tether.rewards.arithmetic eval --model default --prompts runs/arithmetic/held_out.jsonl
    python -m tether.rewards.arithmetic eval --model runs/grpo_arithmetic/model --prompts runs/arithmetic/held_out.jsonl

`eval` prints {"accuracy", "n", "ci_low", "ci_high", ...}: exact-match accuracy with a 95%
Wilson interval, greedy decoding by default (`--sample` samples at `--temperature` instead).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from tether.config import GenerationSettings, resolve_path
from tether.data.collate import pad_left
from tether.data.readers import read_prompts, write_jsonl
from tether.data.templates import encode_prompt
from tether.eval.calibration import wilson_interval
from tether.models.loading import autocast, device, load_causal_lm, load_tokenizer, resolve_model
from tether.rewards.functions import RewardFunctionError
from tether.rollout.generate import generate

__all__ = ["PROMPT", "last_number", "exact_match", "number_only", "make_problems", "write_problem_files", "answer_problems", "accuracy"]

PROMPT = "What is {a} {op} {b}? Answer with the number only."
"""The question; a subtraction never goes below zero (a >= b)."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text` ('1,234' reads as 1234), or None when there is none."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def exact_match(prompts: list[str], completions: list[str], metadata: list[dict]) -> list[float]:
    """1.0 when the last number of the completion equals the row's meta["answer"], else 0.0 (a reward function)."""
    scores = []
    for i, (text, meta) in enumerate(zip(completions, metadata)):
        if not isinstance(meta.get("answer"), (int, float)):
            raise RewardFunctionError(
                f"exact_match: sample {i} has no numeric 'answer' in its prompt's meta (got {meta!r}); "
                "write the prompts with `python -m tether.rewards.arithmetic make`"
            )
        value = last_number(text)
        scores.append(1.0 if value is not None and value == float(meta["answer"]) else 0.0)
    return scores


_BARE_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?\.?")


def number_only(prompts: list[str], completions: list[str], metadata: list[dict]) -> list[float]:
    """1.0 when the completion is a bare number ("82", "82."), else 0.0: a format reward (a reward function).

    It checks only the form the question asks for, not the value, so it is easy to earn without doing the
    task: added as 0.2 x number_only to `exact_match` (GRPO, lr 5e-4) it took the default model four steps
    to answer "1" to every question. Shipped as an example of a format reward, not used by the config."""
    return [1.0 if _BARE_NUMBER.fullmatch(text.strip()) else 0.0 for text in completions]


def make_problems(n: int, seed: int = 0, low: int = 10, high: int = 99, ops: str = "+-") -> list[dict]:
    """`n` distinct problems a op b with low <= a, b <= high, as prompt rows {"prompt", "meta": {"answer", "a", "op", "b"}}."""
    space = (high - low + 1) ** 2 * len(ops)
    if n > space:
        raise ValueError(f"asked for {n} distinct problems, but there are only {space} with operands in [{low}, {high}] and ops {ops!r}")
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < n:
        a, b, op = rng.randint(low, high), rng.randint(low, high), rng.choice(ops)
        if op == "-" and a < b:
            a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        answer = a + b if op == "+" else a - b
        rows.append({"prompt": PROMPT.format(a=a, op=op, b=b), "meta": {"answer": answer, "a": a, "op": op, "b": b}})
    return rows


def write_problem_files(out: str | Path, n_train: int = 2000, n_held_out: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """train.jsonl and held_out.jsonl under `out`: disjoint problems from one seeded draw."""
    rows = make_problems(n_train + n_held_out, seed)
    out = Path(out)
    train, held_out = out / "train.jsonl", out / "held_out.jsonl"
    write_jsonl(train, rows[:n_train])
    write_jsonl(held_out, rows[n_train:])
    return train, held_out


def answer_problems(
    model,
    tokenizer,
    prompts: list,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    precision: str = "fp32",
    temperature: float | None = None,
    seed: int = 0,
) -> list[str]:
    """The model's answer to each prompt: greedy (temperature None) or sampled at `temperature` with a fixed seed."""
    import torch

    texts: list[str] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        batch = prompts[start : start + batch_size]
        if temperature is not None:
            settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
            texts.extend(generate(model, tokenizer, batch, settings, seed=seed * 100003 + b, precision=precision).texts)
            continue
        ids, mask = pad_left([encode_prompt(tokenizer, p, 192)[0] for p in batch], tokenizer.pad_token_id)
        with torch.no_grad(), autocast(precision):
            out = model.generate(
                input_ids=ids.to(device()),
                attention_mask=mask.to(device()),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                top_p=None,
                top_k=None,
                temperature=None,
            )
        texts.extend(t.strip() for t in tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True))
    return texts


def accuracy(
    model_path: str,
    prompts_path: str,
    limit: int | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    precision: str = "fp32",
    temperature: float | None = None,
    seed: int = 0,
) -> dict:
    """Exact-match accuracy of a model on a problems file, with a 95% Wilson interval."""
    path = resolve_model(model_path)
    tokenizer, model = load_tokenizer(path), load_causal_lm(path).eval()
    records = read_prompts(resolve_path(prompts_path), limit=limit)
    texts = answer_problems(model, tokenizer, [r.prompt for r in records], max_new_tokens, batch_size, precision, temperature, seed)
    scores = exact_match([], texts, [r.meta for r in records])
    n, correct = len(scores), int(sum(scores))
    low, high = wilson_interval(correct, n)
    return {
        "accuracy": correct / n if n else None,
        "n": n,
        "correct": correct,
        "ci_low": low,
        "ci_high": high,
        "model": model_path,
        "prompts": prompts_path,
        "decoding": "greedy" if temperature is None else f"sampled at temperature {temperature}, seed {seed}",
        "max_new_tokens": max_new_tokens,
        "examples": [{"prompt": r.prompt, "answer": r.meta["answer"], "completion": t} for r, t in list(zip(records, texts))[:5]],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tether.rewards.arithmetic", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="write train.jsonl and held_out.jsonl")
    mk.add_argument("--out", default="runs/arithmetic")
    mk.add_argument("--train", type=int, default=2000)
    mk.add_argument("--held-out", type=int, default=200)
    mk.add_argument("--seed", type=int, default=0)
    ev = sub.add_parser("eval", help="exact-match accuracy of a model on a problems file")
    ev.add_argument("--model", default="default")
    ev.add_argument("--prompts", default="runs/arithmetic/held_out.jsonl")
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--max-new-tokens", type=int, default=16)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ev.add_argument("--sample", action="store_true", help="sample at --temperature instead of greedy decoding")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default=None, help="also write the JSON to this file")
    a = ap.parse_args(argv)
    if a.command == "make":
        train, held_out = write_problem_files(a.out, a.train, a.held_out, a.seed)
        print(json.dumps({"train": str(train), "held_out": str(held_out), "n_train": a.train, "n_held_out": a.held_out, "seed": a.seed}))
        return
    result = accuracy(a.model, a.prompts, a.limit, a.max_new_tokens, a.batch_size, a.precision, a.temperature if a.sample else None, a.seed)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
