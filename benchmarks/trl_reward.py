"""Benchmark, TRL side: the same reward model trained with TRL 1.16's `RewardTrainer`.

`train_trl_reward` trains on exactly the token ids tether trains on (prompt ids from
`encode_prompt`, then `encode_response` with its EOS), from the same trunk with the same
head init and the same frozen blocks, with the same optimiser settings, and scores the
held-out pairs with tether's own scorer. What is left to differ is the trainer itself.

What TRL 1.16 does per batch (trl/trainer/reward_trainer.py unless named otherwise):

* Data. A dataset with `chosen_ids` and `rejected_ids` columns counts as tokenized and
  skips TRL's own EOS-appending and tokenizing (L656-658, L677); the old names
  `chosen_input_ids` / `rejected_input_ids` still work but are renamed with a
  FutureWarning (L659-669). With `max_length=None` nothing is filtered (L731-740); the
  default of 1024 would silently DROP longer pairs, not cut them. Only `chosen_ids`,
  `rejected_ids` and `margin` survive `remove_unused_columns` (L744-749).
* Collation. `DataCollatorForPreference` puts the B chosen rows then the B rejected rows
  into one list and right-pads it to the longest row of the batch (L203-229);
  `pad_to_multiple_of` resolves to None off Neuron (reward_config.py L187-189). So the
  prompt is computed twice per pair; tether's default `pack_prompts` puts both responses
  after one copy of the prompt, and its `bucket_by_length` batches similar lengths, both
  real savings this benchmark measures (with both off, tether also runs 2B right-padded rows).
* Forward and loss (`compute_loss`, L778-817). One forward over the 2B rows with
  use_cache=False (L782-783); `torch.chunk` splits the rewards (L786); the loss is
  -mean logsigmoid(r_c - r_r [- margin]) (L789-792), the same Bradley-Terry loss as
  tether's; the centring term is added only when its coefficient is not None (L794-795).
  The reward is read by transformers' `GenericForSequenceClassification` (modeling_layers.py
  L162-186), which applies the 1-output head at every position and keeps the rightmost
  token that is not the pad id; tether applies it only at the last attended token. With
  right padding and a pad id distinct from EOS these are the same token.
* Extra per-step work: a token count and five reward statistics (min, mean, max,
  accuracy, margin), each a `.item()` (L797-815); the Trainer adds a FLOP estimate
  (transformers trainer.py L1925) and computes the gradient norm when clipping (L1929-1932).
  All are negligible next to a forward and backward.
* Defaults that would add work tether does not do, overridden below:
  `gradient_checkpointing=True` (trl/trainer/base_config.py L62-67), which transformers 5
  copies into `activation_checkpointing` unless that is set (training_args.py L1533-1545),
  `bf16=True` (base_config.py L108), and the fused AdamW (training_args.py L806-811;
  tether uses torch's default AdamW, so `optim="adamw_torch"` here).

bf16 on CPU: with `use_cpu=True` accelerate turns on native AMP for CPU (accelerate
accelerator.py L586-591) and wraps the model's forward in torch.autocast("cpu", bfloat16),
casting its outputs back to fp32 (L1824-1835); the weights stay fp32, as in tether's
`autocast("bf16")`. The dtype a decoder matmul actually produced is recorded as
`autocast_dtype`.

Not matched: the data order (TRL shuffles with its own sampler), and the epoch arithmetic
when epochs > 1 (TRL counts ceil(n / B) batches per epoch, tether ceil(n * epochs / B)
in all). tether tokenizes inside its training loop; here tokenizing happens before
`trainer.train()` and is reported apart as `tokenize_seconds`.

    python benchmarks/trl_reward.py --model DIR --train FILE --eval FILE [--max-steps N] [--batch-size B]
"""

import os

# TRL pings the Hub from RewardTrainer.__init__ (trl/trainer/base_trainer.py L80);
# huggingface_hub reads this once, when it is first imported.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from tether.data.readers import read_preferences  # noqa: E402
from tether.data.records import PreferencePair  # noqa: E402
from tether.data.templates import encode_prompt, encode_response  # noqa: E402
from tether.models.loading import (  # noqa: E402
    _cpu_has_bf16,
    freeze_lower_layers,  # noqa: E402
    load_tokenizer,
    resolve_model,
    trunk_of,  # noqa: E402
)
from tether.models.reward_model import (  # noqa: E402
    can_pack,
    init_reward_model,  # noqa: E402
    score_texts,
)
from tether.stages.reward import is_tie  # noqa: E402
from tether.tracking import peak_rss_gb  # noqa: E402


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_prompt_tokens: int, max_response_tokens: int) -> dict[str, list]:
    """Columns for TRL's tokenized-data path, built the way tether's `encode_texts` builds each row."""
    cols: dict[str, list] = {"chosen_ids": [], "rejected_ids": []}
    for p in pairs:
        prompt_ids = encode_prompt(tokenizer, p.prompt, max_prompt_tokens)[0]
        cols["chosen_ids"].append(prompt_ids + encode_response(tokenizer, p.chosen, max_response_tokens))
        cols["rejected_ids"].append(prompt_ids + encode_response(tokenizer, p.rejected, max_response_tokens))
    if any(p.margin is not None for p in pairs):
        # tether also fills a missing margin with 0 once any pair in the batch has one
        cols["margin"] = [float(p.margin or 0.0) for p in pairs]
    return cols


def pairs_seen(n: int, batch_size: int, steps: int) -> int:
    """Pairs the Trainer fed in `steps` steps: each epoch ends with a short batch (no drop_last)."""
    per_epoch = math.ceil(n / batch_size)
    epochs, rest = divmod(steps, per_epoch)
    return epochs * n + rest * batch_size


def train_trl_reward(
    model_dir: str,
    train_pairs,
    eval_pairs,
    *,
    max_prompt_tokens: int,
    max_response_tokens: int,
    batch_size: int,
    lr: float,
    epochs: int,
    warmup_ratio: float,
    freeze_layers: int,
    bf16: bool,
    seed: int,
    output_dir: str,
    max_steps: int | None = None,
) -> dict:
    """Train a reward model with TRL's RewardTrainer on tether's token ids; time `trainer.train()` only."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(model_dir)
    t0 = time.perf_counter()
    columns = encode_pairs(tokenizer, train_pairs, max_prompt_tokens, max_response_tokens)
    tokenize_seconds = time.perf_counter() - t0
    # a row ending in the pad id would be read one token early by the HF head (see the docstring)
    pad_ended = sum(ids[-1] == tokenizer.pad_token_id for key in ("chosen_ids", "rejected_ids") for ids in columns[key])
    train_dataset = Dataset.from_dict(columns)

    model = init_reward_model(model_dir, tokenizer.pad_token_id, seed=seed)
    if freeze_layers:
        freeze_lower_layers(model, freeze_layers)

    # tether warms up for round(ratio * steps); transformers would take ceil(ratio * steps)
    # (training_args.py L2154-2161), so the count is passed as a whole number
    total_steps = max_steps or math.ceil(epochs * math.ceil(len(train_pairs) / batch_size))
    args = RewardConfig(
        output_dir=output_dir,
        seed=seed,
        use_cpu=True,
        bf16=bf16,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=epochs,
        max_steps=max_steps or -1,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(round(warmup_ratio * total_steps)),
        optim="adamw_torch",
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        activation_checkpointing=False,
        center_rewards_coefficient=None,
        max_length=None,
        disable_dropout=True,
        logging_strategy="no",
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # keeps stdout for the JSON summary
    if len(trainer.train_dataset) != len(train_pairs):
        raise RuntimeError(f"TRL dropped pairs: {len(trainer.train_dataset)} of {len(train_pairs)} left")
    if trainer.args.activation_checkpointing:  # Trainer.train() would turn it on
        raise RuntimeError("activation checkpointing is on, and tether does not use it")

    # one look at a decoder matmul's output dtype shows whether autocast really ran
    seen: dict[str, str] = {}

    def note_dtype(module, inputs, output):
        seen.setdefault("dtype", str(output.dtype).removeprefix("torch."))

    hook = trunk_of(model).layers[-1].mlp.down_proj.register_forward_hook(note_dtype)
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    hook.remove()

    model.eval()
    steps = trainer.state.global_step
    n_seen = pairs_seen(len(train_pairs), batch_size, steps)
    scored = [p for p in eval_pairs if not is_tie(p)]  # as tether: accuracy is undefined on ties
    # tether's own scorer, packed exactly when tether's train_reward would pack, so both
    # sides are judged by the same code
    kw = dict(
        precision="bf16" if bf16 else "fp32", pack=can_pack(model, tokenizer, train_pairs[:2], max_prompt_tokens, max_response_tokens)
    )
    r_chosen = score_texts(
        model, tokenizer, [p.prompt for p in scored], [p.chosen for p in scored], max_prompt_tokens, max_response_tokens, **kw
    )
    r_rejected = score_texts(
        model, tokenizer, [p.prompt for p in scored], [p.rejected for p in scored], max_prompt_tokens, max_response_tokens, **kw
    )
    wins = (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()
    import trl

    return {
        "trl_version": trl.__version__,
        "train_seconds": train_seconds,
        "train_pairs_per_second": n_seen / train_seconds,
        "train_pairs_seen": n_seen,
        "steps": steps,
        "train_pairs": len(train_pairs),
        "eval_accuracy": wins.mean().item() if scored else None,
        "eval_n": len(scored),
        "eval_packed": kw["pack"],
        "tokenize_seconds": tokenize_seconds,
        "autocast_dtype": seen.get("dtype"),
        # tether's autocast("bf16") is a no-op on a CPU without bf16 instructions, TRL's is not
        "tether_would_autocast": bf16 and (torch.cuda.is_available() or _cpu_has_bf16()),
        "pad_ended_rows": pad_ended,
        "train_loss": trainer.state.log_history[-1].get("train_loss") if trainer.state.log_history else None,
        "peak_rss_gb": peak_rss_gb(),  # the whole process: run it alone to compare
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description="Train a reward model with TRL's RewardTrainer on tether's token ids.")
    parser.add_argument("--model", default="default", help="'default' or a local Hugging Face model directory")
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--freeze-layers", type=int, default=0)
    parser.add_argument("--max-prompt-tokens", type=int, default=192)
    parser.add_argument("--max-response-tokens", type=int, default=96)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/trl_reward")
    a = parser.parse_args(argv)
    summary = train_trl_reward(
        resolve_model(a.model),
        read_preferences(a.train, skipped=[]),
        read_preferences(a.eval, skipped=[]),
        max_prompt_tokens=a.max_prompt_tokens,
        max_response_tokens=a.max_response_tokens,
        batch_size=a.batch_size,
        lr=a.lr,
        epochs=a.epochs,
        warmup_ratio=a.warmup_ratio,
        freeze_layers=a.freeze_layers,
        bf16=not a.fp32,
        seed=a.seed,
        output_dir=a.output_dir,
        max_steps=a.max_steps,
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
