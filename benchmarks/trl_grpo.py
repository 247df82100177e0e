"""Benchmark, TRL side: TRL 1.16's `GRPOTrainer` or `RLOOTrainer` on the tiny model (does NOT import tether).

benchmarks/grpo_vs_trl.py calls this script, in a fresh process, with the model, prompts, group size, batch,
completion length, learning rate and KL coefficient it gives tether. The layout, as tether runs it:

* One generation batch per optimizer step: per_device_train_batch_size = prompts_per_step * G completions,
  gradient_accumulation_steps = 1, steps_per_generation = 1, num_iterations = 1. The update is then
  on-policy and TRL computes no old log-probs (it reuses the current ones), as tether does with one
  minibatch and one iteration; `max_steps` = steps optimizer steps = steps generation batches.
* GRPO: loss_type "dapo" (token-level mean, TRL's default = tether's `loss_aggregation=token_mean`),
  scale_rewards "group" (tether `scale_rewards=group`), epsilon 0.2 both sides, beta as given (KL as a
  per-token k3 loss term on both sides; beta > 0 loads a frozen reference copy on both sides).
* RLOO: the leave-one-out baseline, KL in the reward (k1 summed over the completion, times beta; tether
  `kl_penalty=reward`), normalize_advantages False. Not matched: TRL's RLOO clips a sequence-level
  ratio exp(sum_t log pi/pi_old) (tether: per token); on-policy both ratios are 1, and the cost is the same.
* Sampling at temperature 1, top_p 1, top_k 0 (TRL's defaults), stopping at EOS; the prompts are chat
  messages rendered with the tokenizer's chat template, as tether renders them.
* Full fine-tuning, fp32 on CPU (`use_cpu=True`, `bf16=False`), no gradient checkpointing, torch's AdamW
  (`optim="adamw_torch"`), linear decay without warm-up, max_grad_norm 1.0 (both sides).
* Not switched off, because they are what TRL does on every step: its entropy computation in each
  training forward, metric gathering and logging (logging_steps=1, the same cadence as tether's
  metrics.jsonl). Off: completion logging, saving, evaluation, reporting.

Timing: `trainer.train()` only (models and dataset already built). Prints one JSON line:
{"samples", "seconds", "samples_per_second", "peak_rss_gb", "trl_version", "mean_completion_length", ...};
peak_rss_gb is ru_maxrss of the whole process, as tether's summary.json.

    .venv/bin/python benchmarks/trl_grpo.py --trainer grpo --model-dir DIR --prompts FILE [--steps 10] [--group-size 8]
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainer", choices=["grpo", "rloo"], required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts", required=True, help='JSONL with a "prompt" string field')
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", default=None)
    args = ap.parse_args(argv)

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.spec_from_file_location("grpo_reward", Path(__file__).with_name("grpo_reward.py"))
    rewards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewards)

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, padding_side="left")
    rows = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in rows])
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)

    batch = args.prompts_per_step * args.group_size
    common = dict(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix=f"trl_{args.trainer}_"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=args.group_size,
        max_completion_length=args.max_new_tokens,
        max_steps=args.steps,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=args.beta,
        epsilon=0.2,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        log_completions=False,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    if args.trainer == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        config, Trainer = GRPOConfig(**common, loss_type="dapo", scale_rewards="group"), GRPOTrainer
    else:
        from trl import RLOOConfig, RLOOTrainer

        config, Trainer = RLOOConfig(**common, normalize_advantages=False), RLOOTrainer
    trainer = Trainer(model=model, reward_funcs=[rewards.trl_letter_e], args=config, train_dataset=dataset, processing_class=tokenizer)

    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    logs = [h for h in trainer.state.log_history if "reward" in h]
    result = {
        "trainer": Trainer.__name__,
        "samples": args.steps * batch,
        "seconds": seconds,
        "samples_per_second": args.steps * batch / seconds,
        "peak_rss_gb": peak_rss_gb(),
        "trl_version": trl.__version__,
        "optimizer_steps": trainer.state.global_step,
        "mean_completion_length": sum(h.get("completions/mean_length", 0) for h in logs) / max(len(logs), 1),
        "reward_first": logs[0]["reward"] if logs else None,
        "reward_last": logs[-1]["reward"] if logs else None,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
