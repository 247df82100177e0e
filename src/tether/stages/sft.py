"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

    loss = - sum_{t in response} log pi(y_t | x, y_<t)  /  #response tokens

(prompt tokens are masked with -100; the mean is over every response token of the whole
gradient-accumulation window, so 1 micro-batch of 8 equals 8 micro-batches of 1). The
result is the policy's starting point and the frozen reference of the RL stage.

Only the hidden states that predict a response token go through the LM head (the prompt's
logits are never needed; with a 49k vocabulary the head is a large share of the cost), and
examples of similar length share a batch (`bucket_by_length`), so little of a batch is padding.
"""

from __future__ import annotations

import math
import time

import torch

from tether.config import SFTConfig, resolve_path
from tether.data.collate import collate_sft, encode_demonstration
from tether.data.readers import ReadReport, read_demonstrations, split
from tether.distributed import shard_blocks
from tether.losses import IGNORE_INDEX
from tether.models.card import write_model_card
from tether.models.loading import (
    apply_lora,
    autocast,
    count_parameters,
    device,
    enable_activation_checkpointing,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    save_model,
    trunk_of,
    unwrap,
)
from tether.processes import processes
from tether.rollout.logprobs import head_logprobs
from tether.tracking import MetricsLogger, console, peak_rss_gb, write_summary
from tether.training import (
    LossScaler,
    bucket_by_length,
    clip_and_step,
    drop_checkpoint,
    index_stream,
    load_checkpoint,
    make_optimizer,
    release_freed_memory,
    save_checkpoint,
    scaler_metrics,
    start_stage,
)


def _batches(examples: list[dict], batch_size: int, pad_id: int):
    for i in range(0, len(examples), batch_size):
        yield collate_sft(examples[i : i + batch_size], pad_id)


def response_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed negative log-likelihood of the labelled tokens, their count): `sft_loss_sum` of the model's
    logits, with the LM head applied only where position t predicts a labelled token t + 1."""
    hidden = trunk_of(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t + 1
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    logp = head_logprobs(unwrap(model).get_output_embeddings(), hidden[rows, cols], targets[rows, cols])  # (N,) fp32
    return -logp.sum(), len(rows)


@torch.no_grad()
def eval_loss(model, examples: list[dict], batch_size: int, pad_id: int, precision: str) -> float:
    """Mean response-token cross-entropy on held-out examples (nats per token); each process takes its share."""
    if not examples:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    for batch in _batches(processes().share_batches(examples), batch_size, pad_id):
        batch = {k: v.to(device()) for k, v in batch.items()}
        with autocast(precision):
            nll, n = response_nll(model, batch)
        total, count = total + nll.item(), count + int(n)
    model.train()
    total, count = processes().sum_batches(total), processes().sum_batches(float(count))
    return total / max(count, 1)


def train_sft(cfg: SFTConfig) -> dict | None:
    """Run SFT; returns the summary, or None if stopped early by `interrupt_after` (a checkpoint is left)."""
    out = start_stage(cfg)

    # 1. data: demonstrations -> token ids with the prompt masked out of the labels
    model_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.chat_template)
    report = ReadReport()
    demos = read_demonstrations(resolve_path(cfg.data), limit=cfg.limit, report=report, **cfg.dataset.read_args())
    console.print(f"sft: {report.kept()}")
    train_demos, eval_demos = split(demos, cfg.eval_fraction, cfg.seed)
    if not train_demos:
        raise report.nothing_left(
            f"to train on: eval_fraction={cfg.eval_fraction:g} holds out all {len(eval_demos)} of them; lower eval_fraction or add data"
        )
    encode = lambda d: encode_demonstration(tokenizer, d, cfg.max_prompt_tokens, cfg.max_response_tokens)  # noqa: E731
    train_ex, eval_ex = [encode(d) for d in train_demos], [encode(d) for d in eval_demos]
    n_truncated = sum(e["truncated"] for e in train_ex + eval_ex)
    if n_truncated:
        console.print(f"sft: {n_truncated} of {len(demos)} demonstrations were truncated to fit the token limits")

    # 2. model and optimizer
    model = load_causal_lm(model_path)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if cfg.parallel.activation_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.parallel.fsdp:  # each block's weights, gradients and Adam moments split between the processes
        shard_blocks(model, cfg.parallel.zero_stage, cfg.parallel.offload_trainable)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    procs = processes()  # data parallel: each process runs every world-th micro-batch of a step
    per_step = cfg.batch_size * cfg.grad_accum * procs.world
    total_steps = cfg.max_steps or math.ceil(len(train_ex) * cfg.epochs / per_step)
    optimizer, scheduler = make_optimizer(params, cfg.optim, total_steps)
    scaler = LossScaler(cfg.precision == "fp16")  # fp16: dynamic loss scaling; otherwise it changes nothing
    stream = index_stream(len(train_ex), cfg.seed, total_steps * per_step)
    if cfg.bucket_by_length:
        stream = bucket_by_length(stream, lambda i: len(train_ex[i]["input_ids"]), cfg.batch_size, cfg.seed)

    start_step = 0
    resumed = load_checkpoint(out, {"model": model}, optimizer, scheduler, scaler)
    if resumed is not None:
        start_step = resumed[0]
        console.print(f"sft: resuming from step {start_step} of {total_steps}")
    trainable, total = count_parameters(model)
    logger = MetricsLogger(out, total_steps, "sft", ["train/loss", "eval/loss"], start_step=start_step, tracker=cfg.tracker)
    eval_before = eval_loss(model, eval_ex, cfg.batch_size, tokenizer.pad_token_id, cfg.precision) if start_step == 0 else None
    t0, tokens_seen = time.time(), 0

    # 3. the loop: one optimizer step per `grad_accum` micro-batches
    for step in range(start_step, total_steps):
        window = stream[step * per_step : (step + 1) * per_step]
        micro = [
            collate_sft([train_ex[i] for i in window[k : k + cfg.batch_size]], tokenizer.pad_token_id)
            for k in range(0, per_step, cfg.batch_size)
        ]
        n_tokens = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
        loss_total = 0.0
        for m in procs.share(micro):
            m = {k: v.to(device()) for k, v in m.items()}
            with autocast(cfg.precision):
                nll, _ = response_nll(model, m)
            scaler.scale(nll / max(n_tokens, 1)).backward()
            loss_total += nll.item()
        procs.reduce_gradients(params, average=False)  # each loss was divided by the whole step's token count
        loss_total = procs.sum(loss_total)
        grad_norm = clip_and_step(params, optimizer, scheduler, cfg.optim.max_grad_norm, scaler)
        release_freed_memory()  # batch shapes vary: without this, resident memory creeps up
        tokens_seen += n_tokens
        metrics = {
            "train/loss": loss_total / max(n_tokens, 1),
            "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": grad_norm,
            "train/tokens": n_tokens,
            **scaler_metrics(scaler),
        }
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps:
            metrics["eval/loss"] = eval_loss(model, eval_ex, cfg.batch_size, tokenizer.pad_token_id, cfg.precision)
        logger.log(done, metrics)
        if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
            save_checkpoint(out, done, {"model": model}, optimizer, scheduler, scaler=scaler)
        if cfg.interrupt_after is not None and done >= cfg.interrupt_after and done < total_steps:
            save_checkpoint(out, done, {"model": model}, optimizer, scheduler, scaler=scaler)
            logger.close()
            console.print(f"sft: stopped after step {done} (interrupt_after); rerun the same command to resume")
            return None

    # 4. evaluate, save the final model (LoRA merged in) and the summary
    procs.check_in_step(params, "sft")
    final_eval = eval_loss(model, eval_ex, cfg.batch_size, tokenizer.pad_token_id, cfg.precision)
    logger.log(total_steps, {"eval/loss": final_eval})
    logger.close()
    save_model(model, tokenizer, out / "model")
    elapsed = time.time() - t0
    summary = {
        "stage": "sft",
        "model": str(out / "model"),
        "base_model": model_path,
        "steps": total_steps,
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "truncated": n_truncated,
        "data": report.to_dict(),
        "eval_loss_before": eval_before,
        "eval_loss": final_eval,
        "final_train_loss": loss_total / max(n_tokens, 1) if total_steps > start_step else None,
        "trainable_params": trainable,
        "total_params": total,
        "processes": procs.world,
        "sharding": procs.sharding,
        "tokens_per_second": tokens_seen / elapsed if elapsed > 0 else None,
        "peak_rss_gb": peak_rss_gb(),
        "seconds": elapsed,
    }
    write_model_card(out / "model", cfg, summary, base_model=cfg.model, data=[cfg.data])
    write_summary(out, summary)
    drop_checkpoint(out, cfg)  # the final model and summary are written: the checkpoint has done its job
    return summary
