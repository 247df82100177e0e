"""Benchmark, TRL side: DPO with TRL 1.16's `DPOTrainer` on exactly the token ids tether trains on.

What TRL 1.16 does per batch (trl/trainer/dpo_trainer.py unless named otherwise):

* Data. `_prepare_dataset` (L1036-1142) always extracts a prompt, appends EOS to text
  responses and tokenizes with the chat template; it has no path for ids that are already
  tokenized. So `PretokenizedDPOTrainer` below returns the dataset unchanged: its columns
  `prompt_ids`, `chosen_ids`, `rejected_ids` are what `tokenize_fn` would produce (L1123-1125),
  built here with tether's `encode_pair` (prompt cut from the left to max_prompt_tokens by
  the chat template, each response + EOS cut to max_response_tokens). Nothing else of the
  trainer is changed. `max_length=None`: no further truncation (the default 1024 keeps the
  start of each sequence, L154-164 and L1137-1140).
* Collation. `DataCollatorForPreference` (L146-208) makes B rows prompt + chosen and B rows
  prompt + rejected, right-padded to the longest of the 2B rows: the prompt is computed twice
  per pair. (tether's default `pack_prompts` puts both responses after one copy of the prompt,
  and `bucket_by_length` batches pairs of similar length; the run `tether_full_plain` turns
  both off and runs the same 2B right-padded rows as TRL.)
* Forward and loss (`_compute_loss`, L1285-1612). One forward of the policy over the 2B rows
  through a fused LM head (trainer/utils.py `add_fused_lm_head`, L1548-1700) that computes
  per-token log-probs in chunks without keeping the (2B, T, V) logits; on CPU it scores every
  position, prompt and padding included (`compact` is False off Triton, L1642), where tether
  runs the head on response positions only. Then one no-grad forward of the reference (a frozen
  copy of the model, L908-927, or the same model with the adapter disabled under PEFT,
  L1327-1336), the sigmoid loss -log sigmoid(beta * h) (L1388), and per-step metrics
  (entropy, mean logits, top-1 accuracy, rewards, margins: about a dozen `.item()` syncs).
* Defaults that would add work tether does not do, turned off here: `gradient_checkpointing=True`
  (trl/trainer/base_config.py) and its transformers 5 copy `activation_checkpointing`, `bf16=True`
  (fp32 on both sides: this CPU has no bf16), the fused AdamW (`optim="adamw_torch"`, as tether).

Logged every step (`logging_steps=1`, read back from `log_history`: the first step's loss and rewards
show both sides start at policy == reference). Timed: `trainer.train()` only, after the models and data are loaded and tokenized; tether's
figure is its training loop only (summary.json `train_seconds`). Peak RSS is the whole process.

    python benchmarks/trl_dpo.py --model-dir DIR --pairs FILE --steps N --batch-size B [--lora]
"""

import os

# TRL pings the Hub from DPOTrainer.__init__; huggingface_hub reads this once, when it is first imported.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from tether.data.readers import read_preferences  # noqa: E402
from tether.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from tether.stages.dpo import encode_pair  # noqa: E402
from tether.tracking import peak_rss_gb  # noqa: E402


def train_trl_dpo(
    model_dir: str,
    pairs_file: str,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    beta: float,
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
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer fed tether's token ids as they are (see the module docstring); nothing else is changed."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    tokenizer = load_tokenizer(model_dir)
    pairs = read_preferences(pairs_file, skipped=[])
    encoded = [encode_pair(tokenizer, p, max_prompt_tokens, max_response_tokens)[0] for p in pairs]
    train_dataset = Dataset.from_dict(
        {
            "prompt_ids": [e.prompt for e in encoded],
            "chosen_ids": [e.chosen for e in encoded],
            "rejected_ids": [e.rejected for e in encoded],
        }
    )
    model = load_causal_lm(model_dir)  # fp32, dropout off: the policy tether starts from
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    args = DPOConfig(
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
        beta=beta,
        loss_type=["sigmoid"],
        max_length=None,
        precompute_ref_log_probs=False,
        disable_dropout=True,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = PretokenizedDPOTrainer(
        model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.remove_callback(PrinterCallback)  # keeps stdout for the JSON summary
    if trainer.args.activation_checkpointing or trainer.args.gradient_checkpointing:
        raise RuntimeError("activation checkpointing is on, and tether does not use it")
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    import trl

    logged = [h for h in trainer.state.log_history if "rewards/chosen" in h]  # one entry per step (logging_steps=1)
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    return {
        "trl_version": trl.__version__,
        "train_seconds": train_seconds,
        "steps": trainer.state.global_step,
        "pairs_seen": trainer.state.global_step * batch_size,
        "train_pairs_per_second": trainer.state.global_step * batch_size / train_seconds,
        "reference": "adapter off" if lora else "frozen copy",
        "lora": lora,
        "first_step_loss": first.get("loss"),
        "first_step": {
            "rewards_chosen": first.get("rewards/chosen"),
            "rewards_rejected": first.get("rewards/rejected"),
            "accuracy": first.get("rewards/accuracies"),
        },
        "last_step": {"margin": last.get("rewards/margins"), "accuracy": last.get("rewards/accuracies")},
        "train_loss": trainer.state.log_history[-1].get("train_loss") if trainer.state.log_history else None,
        "peak_rss_gb": peak_rss_gb(),  # the whole process: run it alone to compare
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description="DPO with TRL's DPOTrainer on tether's token ids.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--pairs", required=True, help="preference pairs (any format tether reads)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--max-prompt-tokens", type=int, default=192)
    parser.add_argument("--max-response-tokens", type=int, default=96)
    parser.add_argument("--lora", action="store_true", help="LoRA policy (reference = adapter off), as tether's default")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/bench/trl_dpo")
    a = parser.parse_args(argv)
    summary = train_trl_dpo(
        a.model_dir,
        a.pairs,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        beta=a.beta,
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
