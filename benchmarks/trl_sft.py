"""Benchmark, TRL side: SFT with TRL 1.16's `SFTTrainer` on exactly the token ids tether trains on.

What TRL 1.16 does per batch (trl/trainer/sft_trainer.py unless named otherwise):

* Data. A prompt-completion dataset is tokenized by `_prepare_dataset` (L1228-1450) into the columns
  `input_ids` (prompt + completion) and `completion_mask` (0 on the prompt, 1 on the completion,
  L1366-1369). A dataset that already has `input_ids` is taken as tokenized (`is_processed`,
  L1248) and only goes through the steps after tokenization, so the dataset below is given those
  two columns, built with tether's `encode_demonstration` (prompt cut from the left to
  max_prompt_tokens by the chat template, response + EOS cut to max_response_tokens): the
  prompt-completion format, already tokenized. `completion_only_loss=True` is set explicitly (its
  default None looks for text `prompt` and `completion` columns, L961-962); then `build_labels`
  (L1407-1434) sets the labels of the prompt tokens to -100, so the loss is on response tokens only,
  as in tether. `max_length=None`: no further truncation (the default 1024 keeps the start).
* Collation. `DataCollatorForLanguageModeling` (L87-255) right-pads input_ids and labels to the
  longest row of the batch, in data order, as tether's `collate_sft` does; no packing, no
  padding-free mode (the defaults).
* Forward and loss (`compute_loss`, L1560-1675). One forward through a fused LM head
  (trainer/utils.py `add_fused_lm_head`, L1548-1700) that computes per-token log-probs, entropy and
  top-1 hits in chunks without keeping the (B, T, V) logits; on CPU it scores every position, prompt
  and padding included (`compact` is False off Triton, L1642), where tether computes the logits of
  every position and one cross-entropy over them. The loss is the sum of -log p over response
  tokens divided by their number in the batch (L1612-1618; `num_items_in_batch` counts the same
  tokens), tether's loss. Per-step metrics: entropy, token accuracy, tokens seen (a few `.item()`
  syncs).
* Defaults that would add work tether does not do, turned off here: `gradient_checkpointing=True`
  (trl/trainer/base_config.py) and its transformers 5 copy `activation_checkpointing`, `bf16=True`
  (fp32 on both sides: this CPU has no bf16), the fused AdamW (`optim="adamw_torch"`, as tether).

Response tokens trained on: counted from the prepared dataset's labels (positions 1.. that are not
-100, the positions the loss scores); the run is exactly one pass over it (steps x batch_size rows,
`max_steps=steps`). TRL's own count of the tokens it was fed (`num_tokens`, prompt included) is
checked against the dataset's. Logged every step (`logging_steps=1`, read back from `log_history`).
Timed: `trainer.train()` only, after the model and data are loaded and tokenized; tether's figure is
its training loop only. Peak RSS is the whole process.

    python benchmarks/trl_sft.py --model-dir DIR --demos FILE --steps N --batch-size B [--lora]
"""

import os

# TRL pings the Hub from its trainers' __init__; huggingface_hub reads this once, when it is first imported.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from tether.data.collate import IGNORE_INDEX, encode_demonstration  # noqa: E402
from tether.data.readers import read_demonstrations  # noqa: E402
from tether.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from tether.tracking import peak_rss_gb  # noqa: E402


def train_trl_sft(
    model_dir: str,
    demos_file: str,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_ratio: float,
    max_prompt_tokens: int,
    max_response_tokens: int,
    lora: bool,
    lora_r: int,
    lora_alpha: int,
    seed: int,
    output_dir: str,
) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(model_dir)
    encoded = [encode_demonstration(tokenizer, d, max_prompt_tokens, max_response_tokens) for d in read_demonstrations(demos_file)]
    train_dataset = Dataset.from_dict(
        {
            "input_ids": [e["input_ids"] for e in encoded],
            "completion_mask": [[int(label != IGNORE_INDEX) for label in e["labels"]] for e in encoded],
        }
    )
    model = load_causal_lm(model_dir)  # fp32, dropout off: the model tether starts from
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=output_dir,
        seed=seed,
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(round(warmup_ratio * steps)),
        optim="adamw_torch",
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        activation_checkpointing=False,
        completion_only_loss=True,
        max_length=None,
        packing=False,
        padding_free=False,
        loss_type="nll",
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # keeps stdout for the JSON summary
    if trainer.args.activation_checkpointing or trainer.args.gradient_checkpointing:
        raise RuntimeError("activation checkpointing is on, and tether does not use it")
    labels = trainer.train_dataset["labels"]
    response_tokens = sum(sum(label != IGNORE_INDEX for label in row[1:]) for row in labels)
    dataset_tokens = sum(len(row) for row in trainer.train_dataset["input_ids"])
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    import trl

    steps_done = trainer.state.global_step
    if steps_done * batch_size != len(labels):
        print(
            f"warning: {steps_done} steps x {batch_size} is not one pass over {len(labels)} rows; response_tokens is the dataset's",
            file=sys.stderr,
        )
    logged = [h for h in trainer.state.log_history if "loss" in h and "num_tokens" in h]  # one entry per step (logging_steps=1)
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    return {
        "trl_version": trl.__version__,
        "train_seconds": train_seconds,
        "steps": steps_done,
        "samples_seen": steps_done * batch_size,
        "response_tokens": response_tokens,
        "train_samples_per_second": steps_done * batch_size / train_seconds,
        "train_tokens_per_second": response_tokens / train_seconds,
        "lora": lora,
        "tokens_fed": last.get("num_tokens"),
        "dataset_tokens": dataset_tokens,  # TRL's count (prompt + response) vs the data's
        "first_step_loss": first.get("loss"),
        "last_step_loss": last.get("loss"),
        "last_step_token_accuracy": last.get("mean_token_accuracy"),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "peak_rss_gb": peak_rss_gb(),  # the whole process: run it alone to compare
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description="SFT with TRL's SFTTrainer on tether's token ids.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--demos", required=True, help="demonstrations (any format tether reads)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--max-prompt-tokens", type=int, default=192)
    parser.add_argument("--max-response-tokens", type=int, default=96)
    parser.add_argument("--lora", action="store_true", help="LoRA adapters instead of full fine-tuning")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/bench/trl_sft")
    a = parser.parse_args(argv)
    summary = train_trl_sft(
        a.model_dir,
        a.demos,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup_ratio=a.warmup_ratio,
        max_prompt_tokens=a.max_prompt_tokens,
        max_response_tokens=a.max_response_tokens,
        lora=a.lora,
        lora_r=a.lora_r,
        lora_alpha=a.lora_alpha,
        seed=a.seed,
        output_dir=a.output_dir,
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
