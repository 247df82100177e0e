"""Direct preference optimisation: the policy trained on preference pairs as its own reward model.

    r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))              implicit reward (Rafailov et al. 2023, eq. 5)
    loss    = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))          DPO (eq. 7); IPO, hinge, cDPO in losses/dpo.py

No reward model and no sampling: each step scores the pairs' own responses. Each step:

  1. reference:  log pi_ref(y | x) of chosen and rejected, summed over response tokens (no grad):
                 the policy's own weights with the LoRA adapter off, a frozen model, a table
                 computed once before training (then no reference model is held), or 0
                 (reference-free)
  2. policy:     log pi(y | x) of both responses in one forward; with `pack_prompts` both follow
                 one copy of the prompt (block-diagonal attention), so the prompt is computed once
  3. loss:       the chosen variant on the implicit rewards, each micro-batch weighted by its
                 share of the step's pairs
  4. update:     clip, AdamW step

eval/accuracy is the held-out preference accuracy of the implicit reward: the fraction of
held-out pairs with r(x, y_chosen) > r(x, y_rejected) (a tie counts one half).

`train_dpo_online` runs rounds of online / iterative DPO: the current policy answers each
prompt twice, its `reward` sources (a reward model, a reward function, an LLM judge) pick the better answer, and
the policy is trained on those pairs by `train_dpo`, starting the next round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from safetensors.torch import load_file, save_file

from tether.config import DPOConfig, resolve_path
from tether.data.collate import pack_shared_prompts
from tether.data.readers import DataError, ReadReport, read_preferences, read_prompts, write_jsonl
from tether.data.records import PreferencePair
from tether.data.templates import encode_prompt, encode_response_with_flag
from tether.distributed import shard_blocks
from tether.eval.calibration import wilson_interval
from tether.losses import dpo_conservative_loss, dpo_hinge_loss, dpo_ipo_loss, dpo_ipo_token_mean_loss, dpo_sigmoid_loss
from tether.models.card import write_model_card
from tether.models.loading import (
    adapter_off,
    apply_lora,
    autocast,
    count_parameters,
    device,
    enable_activation_checkpointing,
    freeze_lower_layers,
    load_causal_lm,
    load_frozen_lm,
    load_tokenizer,
    model_device,
    resolve_model,
    save_model,
    trunk_of,
    unwrap,
)
from tether.models.reward_model import shared_prompt_mask
from tether.processes import processes
from tether.rewards.sources import load_reward_sources, score_pairs, source_names
from tether.rollout.logprobs import head_logprobs
from tether.rollout.sampling import sample_responses
from tether.stages.reward import is_tie, leave_out_identical_pairs, split_by_prompt
from tether.tracking import MetricsLogger, console, peak_rss_gb, read_summary, write_summary
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

LOSSES = {"sigmoid": dpo_sigmoid_loss, "ipo": dpo_ipo_loss, "hinge": dpo_hinge_loss, "conservative": dpo_conservative_loss}
REFERENCE_FILE = "reference_logps.safetensors"
"""Precomputed reference log-probs in the run dir: tensors 'train' (N, 2) and 'eval' (M, 2), columns (chosen, rejected)."""
METRICS = ("loss", "rewards_chosen", "rewards_rejected", "margin", "accuracy")


class EncodedPair(NamedTuple):
    """Token ids of one preference pair: the prompt as the policy reads it, each response with its EOS."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def __len__(self) -> int:  # tokens of the packed row, the sort key for batching similar lengths
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def encode_pair(tokenizer, pair: PreferencePair, max_prompt_tokens: int, max_response_tokens: int) -> tuple[EncodedPair, bool]:
    """The pair's ids (prompt cut from the left, responses from the right) and whether anything was cut."""
    prompt, prompt_cut = encode_prompt(tokenizer, pair.prompt, max_prompt_tokens)
    chosen, chosen_cut = encode_response_with_flag(tokenizer, pair.chosen, max_response_tokens)
    rejected, rejected_cut = encode_response_with_flag(tokenizer, pair.rejected, max_response_tokens)
    return EncodedPair(prompt, chosen, rejected), prompt_cut or chosen_cut or rejected_cut


def response_logprobs(model, pairs: list[EncodedPair], pad_id: int, pack: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) log pi(y_chosen | x) and (B,) log pi(y_rejected | x), each summed over the response's tokens.

    Packed: one row per pair, prompt + chosen + rejected; the mask lets each response see only
    the prompt and itself (`shared_prompt_mask`) and its positions continue the prompt's, so it
    is computed exactly as in a row of its own, and the prompt once. Unpacked: 2B right-padded
    rows, chosen rows first. Only the hidden states that predict a response token go through
    the LM head (the prompt's logits are never needed).
    """
    rows = (
        [(p.prompt, [p.chosen, p.rejected]) for p in pairs]
        if pack
        else [(p.prompt, [p.chosen]) for p in pairs] + [(p.prompt, [p.rejected]) for p in pairs]
    )
    packed = pack_shared_prompts(rows, pad_id)
    dev = model_device(model)
    ids, seg = packed["input_ids"].to(dev), packed["segment_ids"].to(dev)  # (R, T); seg: 0 prompt, k response k, -1 pad
    attention = shared_prompt_mask(seg) if pack else (seg >= 0).long()
    hidden = trunk_of(model)(
        input_ids=ids, attention_mask=attention, position_ids=packed["position_ids"].to(dev), use_cache=False
    ).last_hidden_state  # (R, T, d)
    # the token in column c is predicted by column c - 1, except each response's first token: the
    # prompt's last token predicts it (in a packed row, column c - 1 ends the other response)
    is_response = seg > 0
    first = is_response & (seg != torch.nn.functional.pad(seg, (1, 0), value=-1)[:, :-1])
    prompt_len = (seg == 0).sum(-1, keepdim=True)  # (R, 1)
    predictor = torch.where(first, prompt_len - 1, torch.arange(seg.shape[1], device=dev) - 1)  # (R, T)
    r, c = is_response.nonzero(as_tuple=True)  # (N_tok,) every response token
    logp_tokens = head_logprobs(unwrap(model).get_output_embeddings(), hidden[r, predictor[r, c]], ids[r, c])  # (N_tok,) fp32
    per_row = seg.max(-1).values  # responses in each row
    response = (per_row.cumsum(0) - per_row)[r] + seg[r, c] - 1  # each token's response, in `ends` order
    logp = torch.zeros(len(packed["ends"]), device=dev, dtype=logp_tokens.dtype).index_add(0, response, logp_tokens)
    return (logp[0::2], logp[1::2]) if pack else (logp[: len(pairs)], logp[len(pairs) :])


def packing_matches(model, pairs: list[EncodedPair], pad_id: int) -> bool:
    """Whether packed rows give this model's separate-row log-probs (the attention implementation must honour a
    custom 4D mask); checked once, in fp32, on a few pairs."""
    if getattr(unwrap(model).config, "_attn_implementation", "sdpa") not in ("sdpa", "eager") or not pairs:
        return False
    with torch.no_grad():
        packed, separate = response_logprobs(model, pairs, pad_id, True), response_logprobs(model, pairs, pad_id, False)
    return all(torch.allclose(a, b, atol=1e-3, rtol=1e-4) for a, b in zip(packed, separate))


@torch.no_grad()
def live_reference(policy, reference, pairs: list[EncodedPair], pad_id: int, pack: bool, precision: str):
    """(B,), (B,) reference log-probs: from `reference` when one is held, else the policy with its LoRA adapter off."""
    with adapter_off(policy) if reference is None else contextlib.nullcontext(), autocast(precision):
        return response_logprobs(policy if reference is None else reference, pairs, pad_id, pack)


def length_batches(examples: list[EncodedPair], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length (less padding), for passes where the order does not matter."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def precompute_reference(
    policy, reference, splits: dict[str, list[EncodedPair]], batch_size: int, pad_id: int, pack: bool, precision: str
) -> dict[str, torch.Tensor]:
    """{split: (N, 2) reference log-probs of (chosen, rejected)}, computed once before training
    (with several processes, each computes its share of the batches and the tables are summed)."""
    tables = {}
    for name, examples in splits.items():
        table = torch.zeros(len(examples), 2)
        for idx in processes().share_batches(length_batches(examples, batch_size)):
            ref_c, ref_r = live_reference(policy, reference, [examples[i] for i in idx], pad_id, pack, precision)
            table[idx] = torch.stack([ref_c, ref_r], -1).float().cpu()
            release_freed_memory()
        tables[name] = processes().sum_batches(table)
    return tables


def reference_fingerprint(reference_id: str, precision: str, splits: dict[str, list[EncodedPair]]) -> str:
    """Names the reference and every token id, so a table is only reused for the same reference and data."""
    digest = hashlib.sha256(json.dumps([reference_id, precision]).encode())
    for name, examples in splits.items():
        digest.update(json.dumps([name, [list(e) for e in examples]]).encode())
    return digest.hexdigest()


def read_reference_table(path: Path, fingerprint: str) -> dict[str, torch.Tensor] | None:
    """The stored table if it was made for this reference and data, else None."""
    from safetensors import safe_open

    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("fingerprint") != fingerprint:
            return None
    return load_file(str(path))


def write_reference_table(path: Path, tables: dict[str, torch.Tensor], fingerprint: str) -> None:
    """Atomically: a table half written by an interrupted run is never read."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tables.items()}, str(tmp), metadata={"fingerprint": fingerprint})
    tmp.replace(path)


@torch.no_grad()
def pair_loss(cfg: DPOConfig):
    """The configured loss as loss_fn(logp_c, logp_r, ref_c, ref_r, batch) -> (loss, metrics); the batch's
    EncodedPairs give IPO's token counts when ipo_token_mean is set (each response's tokens, EOS included)."""
    if cfg.ipo_token_mean:

        def ipo_token_mean(logp_c, logp_r, ref_c, ref_r, batch: list[EncodedPair]):
            n_c = torch.tensor([len(p.chosen) for p in batch], device=logp_c.device)  # (B,)
            n_r = torch.tensor([len(p.rejected) for p in batch], device=logp_r.device)  # (B,)
            return dpo_ipo_token_mean_loss(logp_c, logp_r, ref_c, ref_r, n_c, n_r, beta=cfg.beta)

        return ipo_token_mean
    loss_fn = functools.partial(LOSSES[cfg.loss], beta=cfg.beta)
    if cfg.loss == "conservative":
        loss_fn = functools.partial(loss_fn, label_smoothing=cfg.label_smoothing)
    return lambda logp_c, logp_r, ref_c, ref_r, batch: loss_fn(logp_c, logp_r, ref_c, ref_r)


def evaluate(
    policy, examples: list[EncodedPair], reference_for, loss_fn, beta: float, batch_size: int, pad_id: int, pack: bool, precision: str
) -> dict:
    """The loss and the preference accuracy of the implicit reward on held-out pairs (a tie counts one half),
    with a 95% Wilson interval; mean implicit rewards and margin. Each process takes its share of the batches."""
    if not examples:
        return {"n": 0}
    r_chosen, r_rejected, loss_sum = torch.zeros(len(examples)), torch.zeros(len(examples)), 0.0
    for idx in processes().share_batches(length_batches(examples, batch_size)):
        batch = [examples[i] for i in idx]
        ref_c, ref_r = reference_for("eval", idx, batch)
        with autocast(precision):
            logp_c, logp_r = response_logprobs(policy, batch, pad_id, pack)
        loss, _ = loss_fn(logp_c, logp_r, ref_c, ref_r, batch)
        loss_sum += loss.item() * len(batch)
        r_chosen[idx], r_rejected[idx] = (beta * (logp_c - ref_c)).float().cpu(), (beta * (logp_r - ref_r)).float().cpu()
        release_freed_memory()
    procs = processes()
    r_chosen, r_rejected, loss_sum = procs.sum_batches(r_chosen), procs.sum_batches(r_rejected), procs.sum_batches(loss_sum)
    n = len(examples)
    wins = ((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).sum().item()
    low, high = wilson_interval(wins, n)
    return {
        "loss": loss_sum / n,
        "accuracy": wins / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "n": n,
        "margin": (r_chosen - r_rejected).mean().item(),
        "rewards_chosen": r_chosen.mean().item(),
        "rewards_rejected": r_rejected.mean().item(),
    }


def run_dpo(cfg: DPOConfig) -> dict | None:
    """`tether dpo`: offline DPO on `data`, or online rounds with `online: true`."""
    return train_dpo_online(cfg) if cfg.online else train_dpo(cfg)


def train_dpo(cfg: DPOConfig) -> dict | None:
    """Run DPO; returns the summary, or None if stopped early by `interrupt_after` (a checkpoint is left)."""
    out = start_stage(cfg)
    t_start = time.time()

    # ---- data: preference pairs -> token ids; held-out pairs
    policy_path = resolve_model(cfg.policy, "policy")
    tokenizer = load_tokenizer(policy_path, cfg.chat_template)
    pad_id = tokenizer.pad_token_id
    skipped: list[DataError] | None = [] if cfg.skip_bad_rows else None
    report = ReadReport()
    pairs = read_preferences(resolve_path(cfg.data), limit=cfg.limit, skipped=skipped, report=report, **cfg.dataset.read_args())
    console.print(f"dpo: {report.kept()}")
    if cfg.eval_data:
        train_pairs, eval_pairs = (
            pairs,
            read_preferences(resolve_path(cfg.eval_data), limit=cfg.eval_limit, skipped=skipped, **cfg.dataset.read_args(held_out=True)),
        )
    else:
        train_pairs, eval_pairs = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
        eval_pairs = eval_pairs[: cfg.eval_limit] if cfg.eval_limit is not None else eval_pairs
    if skipped:
        console.print(f"dpo: skipped {len(skipped)} malformed rows (skip_bad_rows=true); first: {skipped[0]}")
    ties = sum(is_tie(p) for p in train_pairs + eval_pairs)  # a tie says nothing about which answer is better
    train_pairs, eval_pairs = [p for p in train_pairs if not is_tie(p)], [p for p in eval_pairs if not is_tie(p)]
    if not train_pairs:
        held_out = "" if cfg.eval_data else f"the held-out split (eval_fraction={cfg.eval_fraction:g}) and "
        raise report.nothing_left(
            f"to train on after {held_out}{ties} ties were left out; "
            + ("add untied pairs" if cfg.eval_data else "lower eval_fraction or add pairs with other prompts")
        )
    train_pairs, eval_pairs, n_identical = leave_out_identical_pairs(
        "dpo", tokenizer, train_pairs, eval_pairs, cfg.max_response_tokens, report
    )
    encoded = [encode_pair(tokenizer, p, cfg.max_prompt_tokens, cfg.max_response_tokens) for p in train_pairs + eval_pairs]
    examples = [e for e, _ in encoded]
    train_ex, eval_ex = examples[: len(train_pairs)], examples[len(train_pairs) :]
    n_cut = sum(cut for _, cut in encoded)
    if n_cut:
        console.print(
            f"dpo: {n_cut} of {len(encoded)} pairs were cut to max_prompt_tokens={cfg.max_prompt_tokens} "
            f"(from the left) or max_response_tokens={cfg.max_response_tokens}"
        )

    # ---- models: the policy; the reference is its adapter switched off, a frozen model, a table, or nothing
    policy = load_causal_lm(policy_path)
    own_base = cfg.reference == "policy" and cfg.lora.enabled  # reference = the policy's weights with the adapter off
    reference_mode = (
        "none"
        if cfg.reference == "none"
        else "precomputed"
        if cfg.precompute_reference
        else "adapter off"
        if own_base
        else "frozen model, offloaded"
        if cfg.offload_frozen
        else "frozen model"
    )
    if cfg.reference == "none" or own_base:
        reference_path = None
    elif cfg.reference == "policy":  # full fine-tuning: a frozen copy, or, precomputed, the policy itself before any update
        reference_path = None if cfg.precompute_reference else policy_path
    else:
        reference_path = resolve_model(cfg.reference, "reference")
    reference = load_frozen_lm(reference_path, cfg.offload_frozen) if reference_path else None
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora)
    if cfg.freeze_layers:
        freeze_lower_layers(policy, cfg.freeze_layers, policy_path)
    if cfg.parallel.activation_checkpointing:
        enable_activation_checkpointing(policy)
    if cfg.parallel.fsdp:  # each block's weights, gradients and Adam moments split between the processes
        shard_blocks(policy, cfg.parallel.zero_stage, cfg.parallel.offload_trainable)
    pack = cfg.pack_prompts and packing_matches(policy, train_ex[:2], pad_id)
    if cfg.pack_prompts and not pack:
        console.print("dpo: this model's attention does not honour a packed (block-diagonal) mask; each response gets its own row")

    tables, reference_seconds = None, 0.0
    if cfg.precompute_reference:  # once, before any update (a resumed run reuses the stored table)
        t0 = time.time()
        reference_id = policy_path if cfg.reference == "policy" else reference_path
        splits = {"train": train_ex, "eval": eval_ex}
        fingerprint = reference_fingerprint(reference_id, cfg.precision, splits)
        tables = read_reference_table(out / REFERENCE_FILE, fingerprint)
        if tables is None:
            console.print(f"dpo: computing the reference log-probs of {len(train_ex) + len(eval_ex)} pairs once, before training")
            source = reference if reference is not None or own_base else policy  # None: the adapter off
            tables = precompute_reference(policy, source, splits, cfg.batch_size, pad_id, pack, cfg.precision)
            if processes().is_main:
                write_reference_table(out / REFERENCE_FILE, tables, fingerprint)
        reference = None  # no reference model is held while training
        reference_seconds = time.time() - t0
        console.print(
            f"dpo: reference log-probs of {len(train_ex) + len(eval_ex)} pairs in {out / REFERENCE_FILE} "
            f"({reference_seconds:.0f} s); no reference model is held while training"
        )

    def reference_for(split: str, idx: list[int], batch: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
        if cfg.reference == "none":  # reference-free: log pi_ref taken as 0
            zeros = torch.zeros(len(batch), device=device())
            return zeros, zeros
        if tables is not None:
            rows = tables[split][idx].to(device())
            return rows[:, 0], rows[:, 1]
        return live_reference(policy, reference, batch, pad_id, pack, cfg.precision)

    loss_fn = pair_loss(cfg)
    run_eval = functools.partial(evaluate, policy, eval_ex, reference_for, loss_fn, cfg.beta, cfg.batch_size, pad_id, pack, cfg.precision)

    params = [p for p in policy.parameters() if p.requires_grad]
    procs = processes()  # data parallel: each process runs every world-th micro-batch of a step
    per_step = cfg.batch_size * cfg.grad_accum * procs.world
    total_steps = cfg.max_steps or max(1, math.ceil(len(train_ex) * cfg.epochs / per_step))
    optimizer, scheduler = make_optimizer(params, cfg.optim, total_steps)
    scaler = LossScaler(cfg.precision == "fp16")  # fp16: dynamic loss scaling; otherwise it changes nothing
    stream = index_stream(len(train_ex), cfg.seed, total_steps * per_step)
    if cfg.bucket_by_length:
        stream = bucket_by_length(stream, lambda i: len(train_ex[i]), cfg.batch_size, cfg.seed)
    start_step = 0
    resumed = load_checkpoint(out, {"model": policy}, optimizer, scheduler, scaler)
    if resumed is not None:
        start_step = resumed[0]
        console.print(f"dpo: resuming from step {start_step} of {total_steps}")
    logger = MetricsLogger(
        out, total_steps, "dpo", ["train/loss", "train/accuracy", "train/margin"], start_step=start_step, tracker=cfg.tracker
    )

    # held on the device while training (offload_frozen: in CPU memory instead, counted apart)
    reference_params = sum(p.numel() for p in reference.parameters() if not p.is_meta) if reference is not None else 0
    offloaded_params = getattr(reference, "offloaded_params", 0)

    # ---- the loop: one optimizer step per `grad_accum` micro-batches of `batch_size` pairs
    t_loop, eval_seconds = time.time(), 0.0
    policy.train()
    for step in range(start_step, total_steps):
        window = stream[step * per_step : (step + 1) * per_step]
        totals = dict.fromkeys(METRICS, 0.0)
        for k in procs.share(range(0, per_step, cfg.batch_size)):
            idx = window[k : k + cfg.batch_size]
            batch = [train_ex[i] for i in idx]
            # 1. reference log-probs (B,), (B,): live (no grad), from the table, or 0
            ref_c, ref_r = reference_for("train", idx, batch)
            # 2. policy log-probs (B,), (B,), summed over each response's tokens
            with autocast(cfg.precision):
                logp_c, logp_r = response_logprobs(policy, batch, pad_id, pack)
            # 3. the loss on the implicit rewards; the step's gradient is the mean over all its pairs
            loss, m = loss_fn(logp_c, logp_r, ref_c, ref_r, batch)
            scaler.scale(loss * len(batch) / per_step).backward()
            for key in METRICS:
                totals[key] += m[key] * len(batch) / per_step
        # 4. update (the processes' gradients summed: each loss was weighted by its share of the whole step)
        procs.reduce_gradients(params, average=False)
        totals = {key: procs.sum(v) for key, v in totals.items()}
        grad_norm = clip_and_step(params, optimizer, scheduler, cfg.optim.max_grad_norm, scaler)
        release_freed_memory()  # batch shapes vary: without this, resident memory creeps up
        done = step + 1
        metrics = {f"train/{key}": totals[key] for key in METRICS}
        metrics.update(
            {
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": grad_norm,
                "sys/peak_rss_gb": peak_rss_gb(),
                **scaler_metrics(scaler),
            }
        )
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps and eval_ex:
            t_eval = time.time()
            metrics.update({f"eval/{key}": v for key, v in run_eval().items() if key in METRICS})
            eval_seconds += time.time() - t_eval
        logger.log(done, metrics)
        if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
            save_checkpoint(out, done, {"model": policy}, optimizer, scheduler, scaler=scaler)
        if cfg.interrupt_after is not None and cfg.interrupt_after <= done < total_steps:
            save_checkpoint(out, done, {"model": policy}, optimizer, scheduler, scaler=scaler)
            logger.close()
            console.print(f"dpo: stopped after step {done} (interrupt_after); rerun the same command to resume")
            return None
    train_seconds = time.time() - t_loop - eval_seconds  # this session's part of the loop, evaluations left out
    procs.check_in_step(params, "dpo")
    policy.eval()

    # ---- held-out accuracy of the implicit reward, the final policy (LoRA merged), the summary
    final = run_eval()
    if final["n"]:
        logger.log(total_steps, {f"eval/{key}": v for key, v in final.items() if key in METRICS})
    logger.close()
    save_model(policy, tokenizer, out / "model")
    trainable, total = count_parameters(policy)
    summary = {
        "stage": "dpo",
        "model": str(out / "model"),
        "policy_init": policy_path,
        "loss": cfg.loss,
        "beta": cfg.beta,
        "reference": cfg.reference,
        "reference_mode": reference_mode,
        "steps": total_steps,
        "train_pairs": len(train_ex),
        "eval_pairs": final["n"],
        "pairs_cut": n_cut,
        "ties_dropped": ties,
        "skipped_rows": len(skipped or []),
        "pairs_identical_after_truncation": n_identical,
        "data": report.to_dict(),
        "eval_accuracy": final.get("accuracy"),
        "eval_accuracy_ci": [final.get("accuracy_ci_low"), final.get("accuracy_ci_high")],
        "eval_loss": final.get("loss"),
        "eval_margin": final.get("margin"),
        "eval_rewards_chosen": final.get("rewards_chosen"),
        "eval_rewards_rejected": final.get("rewards_rejected"),
        "final_train_accuracy": totals["accuracy"] if total_steps > start_step else None,
        "trainable_params": trainable,
        "total_params": total,
        "reference_params_held": reference_params,
        "reference_params_offloaded": offloaded_params,
        "packed": pack,
        "processes": procs.world,
        "sharding": procs.sharding,
        "train_seconds": train_seconds,
        "reference_seconds": reference_seconds,
        "train_pairs_per_second": (total_steps - start_step) * per_step / max(train_seconds, 1e-9),
        "peak_rss_gb": peak_rss_gb(),
        "seconds": time.time() - t_start,
    }
    write_model_card(out / "model", cfg, summary, base_model=cfg.policy, data=[cfg.data, cfg.eval_data])
    write_summary(out, summary)
    drop_checkpoint(out, cfg)  # the final model and summary are written: the checkpoint has done its job
    return summary


# --------------------------------------------------------------------------- online / iterative DPO


def label_pairs(prompts, firsts: list[str], seconds: list[str], scores, round_index: int) -> list[PreferencePair]:
    """Preference pairs from two answers per prompt: the higher-scored one is chosen; pairs with equal scores,
    identical or empty answers, or no score are dropped."""
    pairs = []
    for prompt, a, b, s in zip(prompts, firsts, seconds, scores):
        if s is None or s[0] == s[1] or not a.strip() or not b.strip() or a == b:
            continue
        (chosen, s_c), (rejected, s_r) = sorted([(a, s[0]), (b, s[1])], key=lambda x: -x[1])
        pairs.append(PreferencePair(prompt, chosen, rejected, meta={"round": round_index, "score_chosen": s_c, "score_rejected": s_r}))
    return pairs


def train_dpo_online(cfg: DPOConfig) -> dict:
    """Online / iterative DPO (e.g. Xu et al. 2023, Yuan et al. 2024 "Self-Rewarding Language Models"), in rounds:

      1. sample: the current policy answers `prompts_per_round` prompts twice
      2. label:  the `reward` sources score both answers (rewards/sources.py `score_pairs`: a reward model or function
                 scores each answer, a judge gives the pair's verdict); the higher-scored answer is chosen
      3. train:  `train_dpo` on those pairs in round_<k>/, starting from the current policy, which is also the
                 reference with reference=policy (each round stays near the last); its model starts round k+1

    Logged per round: rollout/reward (mean labeller score of the round's samples: how good the policy's answers
    are by the labeller's measure), rollout/pairs, and the round's eval/accuracy. At the end the final policy
    answers round 1's prompts with round 1's seed, so `final_score` against `initial_score` compares policies
    on the same prompts and random numbers. A round whose summary.json exists is skipped on rerun.
    """
    out = start_stage(cfg, rounds="round_*")  # rounds made with other settings are not gone on from
    t_start = time.time()
    prompts = [r.prompt for r in read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, **cfg.dataset.read_args())]
    n = min(cfg.prompts_per_round, len(prompts))
    stream = index_stream(len(prompts), cfg.seed, cfg.rounds * n)
    sources = load_reward_sources(cfg.reward, cfg.precision)  # models and judges loaded once, for every round
    policy_path = resolve_model(cfg.policy, "policy")

    def sample_and_score(model_path: str, batch: list, seed: int):
        tokenizer, model = load_tokenizer(model_path, cfg.chat_template), load_causal_lm(model_path).eval()
        samples = sample_responses(model, tokenizer, batch + batch, cfg.generation, seed=seed, precision=cfg.precision)
        firsts, seconds = [s["response"] for s in samples[: len(batch)]], [s["response"] for s in samples[len(batch) :]]
        scores = score_pairs(sources, batch, firsts, seconds, [{} for _ in batch])[0]  # (first, second) or None per prompt
        kept = [x for s in scores if s is not None for x in s]
        return firsts, seconds, scores, (sum(kept) / len(kept) if kept else None)

    rounds = []
    logger = MetricsLogger(out, cfg.rounds, "dpo online", ["rollout/reward", "eval/accuracy"], tracker=cfg.tracker)
    for k in range(1, cfg.rounds + 1):
        round_dir = out / f"round_{k}"
        batch = [prompts[i] for i in stream[(k - 1) * n : k * n]]
        stats_path = round_dir / "round.json"
        if not stats_path.exists():
            # 1. sample two answers per prompt from the current policy; 2. label them
            firsts, seconds, scores, mean_score = sample_and_score(policy_path, batch, seed=cfg.seed * 1009 + k)
            pairs = label_pairs(batch, firsts, seconds, scores, k)
            write_jsonl(round_dir / "pairs.jsonl", pairs)
            stats_path.write_text(json.dumps({"score": mean_score, "pairs": len(pairs), "prompts": len(batch)}) + "\n")
        stats = json.loads(stats_path.read_text())
        # 3. DPO on the round's pairs, from (and by default referenced to) the current policy
        summary = read_summary(round_dir)
        if summary is None and stats["pairs"] == 0:
            console.print(f"dpo online: round {k} produced no usable pairs (all ties or identical answers); the policy is unchanged")
            summary = {"model": policy_path, "eval_accuracy": None}
        elif summary is None:
            summary = train_dpo(
                dataclasses.replace(
                    cfg,
                    online=False,
                    rounds=1,
                    reward=[],
                    policy=policy_path,
                    data=str(round_dir / "pairs.jsonl"),
                    output_dir=str(round_dir),
                    limit=None,
                )
            )
            if summary is None:  # interrupt_after inside the round: rerun to resume it
                logger.close()
                return None
        policy_path = summary["model"]
        rounds.append({"round": k, "score": stats["score"], "pairs": stats["pairs"], "eval_accuracy": summary.get("eval_accuracy")})
        logger.log(k, {"rollout/reward": stats["score"], "rollout/pairs": stats["pairs"], "eval/accuracy": summary.get("eval_accuracy")})
    logger.close()

    # the final policy on round 1's prompts with round 1's seed: the same draw the starting policy was scored on
    first_batch = [prompts[i] for i in stream[:n]]
    final_score = sample_and_score(policy_path, first_batch, seed=cfg.seed * 1009 + 1)[3]
    summary = {
        "stage": "dpo_online",
        "model": policy_path,
        "rounds": rounds,
        "initial_score": rounds[0]["score"],
        "final_score": final_score,
        "reward": source_names(cfg.reward),
        "peak_rss_gb": peak_rss_gb(),
        "seconds": time.time() - t_start,
    }
    write_summary(out, summary)
    return summary
