"""Benchmark, TRL side: PPO with TRL 1.10.0's `trl.experimental.ppo.PPOTrainer`.

Runs in the separate .venv-trl110 (`bash benchmarks/trl_ppo_env.sh`) and does NOT import tether.
TRL 1.10.0 is the last release that ships PPO. benchmarks/ppo_vs_trl.py calls this script with
the same tiny policy, reward model, prompts, batch and response length that it gives tether.

Models, as TRL does it: the policy and a separate reference are full copies of --model-dir
(AutoModelForCausalLM); the value model and the frozen reward model are two full copies of
--reward-dir (AutoModelForSequenceClassification, num_labels=1). Four full models, no LoRA.

Settings, matched to `tether ppo ... batch_size=B mini_batch_size=M ppo_epochs=1` (line numbers
are trl/experimental/ppo/ppo_trainer.py in 1.10.0 unless named otherwise):

* Episodes per rollout. The rollout batch is `local_batch_size = per_device_train_batch_size *
  gradient_accumulation_steps` (L463), split into `num_mini_batches` minibatches of
  `local_mini_batch_size` (L469-471); each minibatch is walked in micro-batches of
  `per_device_train_batch_size` (L809) with one `optimizer.step()` per micro-batch (L849;
  `accelerator.accumulate` only defers it when gradient_accumulation_steps > 1). So
  per_device_train_batch_size=B, gradient_accumulation_steps=1, num_mini_batches=B/M gives B
  episodes per rollout and one optimizer step per minibatch of M, as tether does (with
  gradient_accumulation_steps=1 the "micro-batch" loop runs once, over the M episodes).
  `local_rollout_forward_batch_size=B` (default 64; L690, L698) generates and scores the rollout
  as one batch of B, like tether's `generation.batch_size=B`.
* Episode count. `num_total_batches = ceil(total_episodes / batch_size)` rollouts (L478-480);
  `total_episodes = steps * B` here, so exactly `steps` rollouts. TRL counts an episode per
  prompt *sampled* (`state.episode += batch_size`, L670), as tether does.
  The dataloader uses `drop_last=True` and `shuffle=True` and is cycled forever (L533-539,
  L615-619): with fewer prompts than B it yields nothing and train() would loop forever, so
  that is refused here.
* num_ppo_epochs=1 (default 4, ppo_config.py L232-235); kl_coef=0.05, kl_estimator="k1" (the
  defaults, ppo_config.py L240-252; fixed beta: there is no adaptive controller in TRL 1.10, so
  ppo_vs_trl.py runs tether with `kl.adaptive=false`); cliprange 0.2, vf_coef 0.1,
  cliprange_value 0.2, gamma 1.0, lam 0.95, whiten_rewards False: TRL's defaults, equal to
  tether's.
* Sampling: temperature=1.0 (default 0.7, ppo_config.py L169-172); TRL samples with top_k=0,
  top_p=1.0 and temperature + 1e-7 (L620-627), tether with top_k=0, top_p=1.0.
  stop_token="eos": the policy's generation_config.eos_token_id becomes the tokenizer's EOS
  (L393-395), so a row stops sampling at EOS, everything after the first EOS is replaced by pad
  (`truncate_response`, L719-723), and the reward is read at the EOS. With the default
  `stop_token=None` TRL sets eos_token_id=None (L401) and every response runs to
  `response_length` tokens: tether stops at EOS, so "eos" is the matching setting, and it is the
  only stop (no stop strings).
* Precision and device: fp32 on CPU: `bf16=False` (TRL defaults it to True when fp16 is off,
  trl/trainer/base_config.py L104-105) and `use_cpu=True`; the models are loaded in float32.
  `gradient_checkpointing=False` (TRL's default is True, base_config.py L61-66; PPOTrainer never
  calls gradient_checkpointing_enable itself, but this keeps TrainingArguments from asking).
* Optimiser: `optim="adamw_torch"` (torch's AdamW, what tether uses; transformers 5's default is
  the fused variant), learning_rate=1e-4 (TRL default 3e-6, ppo_config.py L124-127),
  weight_decay 0, linear decay to 0 over the rollouts (`create_optimizer_and_scheduler(
  num_training_steps=num_total_batches)`, L494-496, stepped once per rollout, L912), no warm-up.
  Not matched: TRL 1.10 PPO never clips gradients (L848-850 go straight from backward to
  step); tether clips at max_grad_norm=1.0.
* Other differences left as they are (each costs little): TRL takes the rollout log-probs from
  the logits `generate` returns (`output_scores=True`, L101-110, L703), where tether runs one
  more no-grad policy forward; TRL scores a response cut at response_length at its last sampled
  token (experimental/utils.py L784-791), where tether appends an EOS first (one more token in
  the reward-model forward), so with an untrained head the two report different mean scores;
  tether clips scores to [-10, 10]; the prompt order differs (each side shuffles its own way).
* No extra work: num_sample_generations=0 (default 10: `generate_completions` runs greedy-ish
  sampling on the eval set every num_total_batches/10 rollouts, L921-922), no eval dataset,
  eval_strategy="no", save_strategy="no", report_to="none", push_to_hub False. TRL still calls
  `gc.collect()` twice per rollout (L753, L919) and `self.log(metrics)` (L910): that is its own
  per-rollout cost and is timed. On the tiny model the two full collections dominate (a profile
  of 5 rollouts: 1.86 s of 2.73 s in `gc.collect`, ~0.19 s each, a fixed cost that does not grow
  with the model); `--skip-gc-collect` replaces `gc.collect` with a no-op in this process to show
  TRL without it (not TRL as shipped).
* Tokenizer: the prompts are rendered with the tokenizer's chat template (one user message,
  add_generation_prompt=True) and tokenized without special tokens, keeping the last
  --max-prompt-tokens, exactly as tether's `encode_prompt` does. `padding_side="left"`: TRL's
  collator is a plain `DataCollatorWithPadding` (L386-388) and generation appends after the
  padded query (L98-111), so right padding would put pads between prompt and response. TRL takes
  `attention_mask = ids != pad_token_id` everywhere (L99, L211, experimental/utils.py L771), so
  the pad token must differ from EOS (else an EOS inside a response reads as padding) and must
  not occur inside a prompt; this is checked.

Timing: `trainer.train()` only (no model loading, no dataset building). Prints one JSON line:

    {"episodes", "seconds", "episodes_per_second", "peak_rss_gb", "trl_version", ...}

peak_rss_gb is resource.getrusage(RUSAGE_SELF).ru_maxrss / 1e6 (Linux reports kB), the same
measure as tether's summary.json. It covers the whole process (all four models loaded).

    .venv-trl110/bin/python benchmarks/trl_ppo.py --model-dir DIR --reward-dir DIR --prompts FILE \\
        [--steps 3] [--batch-size 16] [--mini-batch-size 8] [--response-length 40]
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def read_prompts(path: str) -> list[str]:
    prompts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    return prompts


def encode_prompt(tokenizer, prompt: str, max_tokens: int) -> list[int]:
    """tether's `encode_prompt` for a plain-text prompt: chat template (or a BOS), no added
    special tokens, the last `max_tokens` kept."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        head = []
    else:
        text = f"User: {prompt}\n\nAssistant:"
        head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    room = max_tokens - len(head)
    return head + ids[max(0, len(ids) - room) :]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="policy and reference (a causal LM directory with its tokenizer)")
    ap.add_argument("--reward-dir", required=True, help="reward model and value model init (a sequence-classification directory)")
    ap.add_argument("--prompts", required=True, help='JSONL with a "prompt" string field')
    ap.add_argument("--steps", type=int, default=3, help="rollouts (PPO iterations)")
    ap.add_argument("--batch-size", type=int, default=16, help="episodes per rollout")
    ap.add_argument("--mini-batch-size", type=int, default=8, help="episodes per optimizer step")
    ap.add_argument("--response-length", type=int, default=40, help="max new tokens per response")
    ap.add_argument("--max-prompt-tokens", type=int, default=192, help="prompts keep their last N tokens (tether's default)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    ap.add_argument(
        "--skip-gc-collect", action="store_true", help="make gc.collect() a no-op (TRL calls it twice per rollout); not TRL as shipped"
    )
    ap.add_argument(
        "--lora",
        action="store_true",
        help="a LoRA policy (peft: r 16, alpha 32, every linear layer, as tether's lora.enabled=true); the reference "
        "is then the policy with its adapter off (ref_model=None), as in tether",
    )
    ap.add_argument("--output-dir", default=None, help="TRL's output_dir (nothing is saved; default: a temp dir)")
    args = ap.parse_args(argv)
    if args.batch_size % args.mini_batch_size:
        ap.error("--batch-size must be a multiple of --mini-batch-size")

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.skip_gc_collect:
        import gc

        gc.collect = lambda *a, **k: 0  # ppo_trainer.py does `import gc` and calls gc.collect() at L753 and L919
    t_load = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, padding_side="left")
    if tokenizer.pad_token_id is None:
        raise SystemExit("the tokenizer has no pad token; TRL's PPO masks by `ids != pad_token_id`, so it needs one distinct from EOS")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("pad token == EOS: TRL's PPO would read every EOS as padding; use a tokenizer with a separate pad token")

    prompts = read_prompts(args.prompts)
    if len(prompts) < args.batch_size:
        raise SystemExit(f"{len(prompts)} prompts < batch size {args.batch_size}: TRL's drop_last dataloader would yield nothing")
    ids = [encode_prompt(tokenizer, p, args.max_prompt_tokens) for p in prompts]
    if any(tokenizer.pad_token_id in row for row in ids):
        raise SystemExit("a prompt contains the pad token; TRL would mask it out")
    dataset = Dataset.from_dict({"input_ids": ids})

    f32 = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(args.model_dir, **f32)
    ref_policy = None if args.lora else AutoModelForCausalLM.from_pretrained(args.model_dir, **f32)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward_dir, num_labels=1, **f32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_dir, num_labels=1, **f32)

    out_dir = args.output_dir or tempfile.mkdtemp(prefix="trl_ppo_")
    config = PPOConfig(
        output_dir=out_dir,
        # batch layout: B episodes per rollout, B/M optimizer steps of M episodes each
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.mini_batch_size,
        local_rollout_forward_batch_size=args.batch_size,
        total_episodes=args.steps * args.batch_size,
        num_ppo_epochs=1,
        # sampling
        response_length=args.response_length,
        temperature=1.0,
        stop_token="eos",
        missing_eos_penalty=None,
        # objective
        kl_coef=args.kl_coef,
        kl_estimator="k1",
        # optimiser
        learning_rate=args.lr,
        optim="adamw_torch",
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        # precision, device
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        # no extra work
        num_sample_generations=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        logging_steps=1,
        disable_tqdm=True,
        seed=args.seed,
    )
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        # ref_model=None: TRL then takes the reference from the policy with its adapter disabled
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        peft_config=peft_config,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the one JSON line is the output
    load_seconds = time.time() - t_load

    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0

    logs = [h for h in trainer.state.log_history if "episode" in h]
    episodes = int(trainer.state.episode)
    result = {
        "episodes": episodes,
        "seconds": seconds,
        "episodes_per_second": episodes / seconds,
        "peak_rss_gb": peak_rss_gb(),
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "rollouts": trainer.state.global_step,
        "rollout_batch_size": config.batch_size,
        "mini_batch_size": config.mini_batch_size,
        "optimizer_steps": trainer.state.global_step * config.num_ppo_epochs * config.num_mini_batches,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "threads": torch.get_num_threads(),
        "gc_collect_skipped": args.skip_gc_collect,
        "lora": args.lora,
        "activation_checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in policy.modules()),
        "load_seconds": load_seconds,
        "mean_score": sum(h["objective/scores"] for h in logs) / max(len(logs), 1),
        "eos_tokens_per_rollout": sum(h["val/num_eos_tokens"] for h in logs) / max(len(logs), 1),
    }
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
