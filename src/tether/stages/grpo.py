"""GRPO, RLOO and REINFORCE with a baseline: no value model, the baseline comes from other samples.

Shao et al. 2024 (DeepSeekMath, GRPO), Ahmadian et al. 2024 (RLOO), Williams 1992 (REINFORCE),
with the fixes of DAPO (Yu et al. 2025) and Dr. GRPO (Liu et al. 2025) as settings. Each iteration:

  1. rollout:     G samples y ~ pi(.|x) for each of P prompts (one batch of P * G)
  2. score:       the reward sources (rewards/sources.py) give r (P, G); a sample a source drops
                  (None) takes no part; dynamic sampling drops the groups whose rewards are all
                  equal, which carry no signal (DAPO, sec. 3.2)
  3. log-probs:   log pi_old (the sampling policy) and log pi_ref of the kept samples (no grad);
                  with kl_penalty=reward, r -= beta * sum_t log pi_old/pi_ref
  4. advantages:  one number per sample, spread over its tokens: (r - group mean) / group std
                  (GRPO; Dr. GRPO without the std; or the batch's std), r - mean of the group's other samples (RLOO),
                  or r - a baseline (REINFORCE: batch mean or moving average)
  5. update:      `iterations` passes over the batch in minibatches: the clipped surrogate with
                  importance ratio pi / pi_old and clip range [1 - eps_low, 1 + eps_high], plus
                  beta * k3 KL to the reference per token, summed into one number per minibatch
                  by token_mean (DAPO), sequence_mean (GRPO) or constant (Dr. GRPO)
  6. guard:       every N steps, reward and KL on held-out prompts; the best policy is kept, and
                  training stops (rolled back to the best) on a KL ceiling or a stalled reward

Models: with LoRA (the default) the reference is the policy's own weights with the adapter
switched off; with full fine-tuning and beta > 0 a frozen copy; with beta = 0 and full fine-tuning
no reference at all. With one minibatch and one iteration the update is on-policy: pi_old is
the policy of the update's own forward pass (the same numbers), so no scoring pass is run.
Rollouts come from the lean sampling loop of rollout/sampling.py (the same distribution as
`generate`, less overhead per token).

Layout: `setup_grpo` loads the models and makes every choice of where they live (this process, CPU
memory, Ray actors, sharded), which engine samples and whether the update's own pass stands for
pi_old, once; it hands `grpo_loop` the parts of stages/rl_parts.py (a sampler, a reference, a group
scorer over the reward sources, the policy's passes over the kept samples), and `grpo_loop` is
steps 1-6 above.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tether.config import GRPOConfig, resolve_path
from tether.data.readers import ReadReport, read_prompts
from tether.data.records import prompt_text
from tether.distributed import gathered, shard_blocks
from tether.eval.calibration import length_correlation
from tether.eval.metrics import distinct_n
from tether.feedback.gold import gold_scores
from tether.losses import (
    MovingAverageBaseline,
    constant_mean,
    group_advantages,
    group_advantages_batch_std,
    grpo_token_loss,
    kl_k1,
    leave_one_out_advantages,
    masked_mean,
    masked_whiten,
    reinforce_advantages,
    sequence_mean,
    token_mean,
)
from tether.models.card import write_model_card
from tether.models.loading import (
    apply_lora,
    autocast,
    count_parameters,
    enable_activation_checkpointing,
    load_causal_lm,
    load_frozen_lm,
    load_tokenizer,
    resolve_model,
    save_model,
)
from tether.models.sharing import unique_parameter_bytes
from tether.placement import RayPlacement, RemoteModel, placed
from tether.processes import processes
from tether.rewards.sources import load_reward_sources
from tether.rollout.logprobs import policy_forward
from tether.rollout.sampling import sample_rollout
from tether.rollout.vllm_engine import training_sampler
from tether.stages.rl_parts import (
    GroupScorer,
    GroupScores,
    KeptBatch,
    KeptPasses,
    LocalReference,
    PolicySampler,
    RayReference,
    VLLMEngineSampler,
    rows_of,
)
from tether.tracking import MetricsLogger, console, peak_rss_gb, write_summary
from tether.training import (
    GoodhartGuard,
    LossScaler,
    checkpoint_or_interrupt,
    clip_and_step,
    drop_checkpoint,
    index_stream,
    load_checkpoint,
    make_optimizer,
    release_freed_memory,
    resumed_history,
    scaler_metrics,
    start_stage,
)

__all__ = ["GRPOSetup", "grpo_loop", "run_grpo", "setup_grpo", "train_grpo"]


TRIM_EVERY = 4
"""Steps between handing freed heap memory back to the OS (malloc_trim: it keeps resident memory from creeping
up as rollout shapes vary, at a few milliseconds a call, which on a tiny model is a noticeable share of a step)."""


@torch.no_grad()
def held_out_check(policy, reference, tokenizer, records, cfg: GRPOConfig, scorer: GroupScorer) -> dict:
    """Mean reward (one sample per prompt), each source's mean when there are several ("reward/<name>"),
    KL (k1, nats per response; None without a reference) and the gold scorer's mean (feedback/gold.py:
    `tether eval overopt` fits gold against KL) of the current policy on held-out prompts, sampled
    with a fixed seed so successive checks differ only by the policy."""
    with gathered(policy):  # each process samples its own share of the batches: a sharded policy is gathered whole first
        return _held_out_check(policy, reference, tokenizer, records, cfg, scorer)


def _held_out_check(policy, reference, tokenizer, records, cfg: GRPOConfig, scorer: GroupScorer) -> dict:
    rewards, kls, golds, by_source = [], [], [], {s.name: [] for s in scorer.sources}
    has_reference = reference is not None
    procs = processes()  # several processes: each samples every world-th batch, the means are over all
    for b, start in enumerate(range(0, len(records), cfg.generation.batch_size)):
        if b % procs.world != procs.rank:
            continue
        batch = records[start : start + cfg.generation.batch_size]
        prompts = [r.prompt for r in batch]
        rollout = sample_rollout(policy, tokenizer, prompts, cfg.generation, seed=cfg.seed * 7919 + b, precision=cfg.precision)
        if has_reference:
            seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
            with autocast(cfg.precision):
                logp = (
                    rollout.logprobs
                    if rollout.logprobs is not None
                    else policy_forward(policy, seqs, attn, P, cfg.generation.temperature)["logp"]
                )
                ref_logp = reference.logprobs(seqs, attn, P, chunk=len(seqs))
            kls.extend(((logp - ref_logp) * rollout.response_mask).sum(-1).tolist())
        scores, parts = scorer.score(prompts, rollout.texts, [dict(r.meta) for r in batch])
        rewards.extend(s for s in scores if s is not None)
        golds.extend(gold_scores([prompt_text(p) for p in prompts], rollout.texts))
        for name, values in parts.items():
            by_source[name].extend(v for v in values if v is not None)
    mean = procs.mean_of
    return {
        "reward": mean(rewards) or 0.0,
        "kl": mean(kls) if has_reference else None,
        "gold": mean(golds),
        **({f"reward/{k}": mean(v) for k, v in by_source.items()} if len(scorer.sources) > 1 else {}),
    }


def grpo_advantages(
    cfg: GRPOConfig, groups: GroupScores, train_scores: torch.Tensor, baseline: MovingAverageBaseline
) -> torch.Tensor | None:
    """Step 4: one advantage per kept sample (N,), from its training reward (N,) and the others of its group (P, G); None
    when this process kept nothing. scale_rewards=batch divides by the std of every process's kept rewards: each
    process joins that gather, even one that kept none; REINFORCE's baseline moves on the valid rewards then."""
    rows, keep = groups.rows, groups.keep
    N = len(rows)
    batch_rewards = (
        torch.tensor(processes().gather(train_scores.float().tolist() if N > 0 else []))
        if cfg.advantage == "grpo" and cfg.scale_rewards == "batch"
        else None
    )
    if N == 0:
        if cfg.advantage == "reinforce" and groups.valid.any():
            baseline.update(masked_mean(groups.scores, groups.valid).item())
        return None
    on = train_scores.device
    r = torch.zeros(keep.numel(), device=on).index_put((rows.to(on),), train_scores.float()).view(keep.shape)  # (P, G)
    if cfg.advantage == "grpo" and cfg.scale_rewards == "batch":
        adv = group_advantages_batch_std(r, keep, batch_rewards)
    elif cfg.advantage == "grpo":
        adv = group_advantages(r, keep, scale_std=cfg.scale_rewards == "group")
    elif cfg.advantage == "rloo":
        adv = leave_one_out_advantages(r, keep)
    else:
        batch_mean = masked_mean(r, keep.to(r.device)).item()
        b = baseline.value if cfg.baseline == "moving_average" and baseline.value is not None else batch_mean
        adv = reinforce_advantages(r, b, keep)
        baseline.update(batch_mean)
    advantages = adv.flatten()[rows]  # (N,)
    if cfg.normalize_advantages and N > 1:
        advantages = masked_whiten(advantages, torch.ones_like(advantages))
    return advantages


def minibatch_counts(mask: torch.Tensor, mb: torch.Tensor) -> dict:
    """The minibatch's tokens, responses with a token and rows, summed over every process (the loss's denominators)."""
    local = torch.tensor([mask[mb].sum().item(), float((mask[mb].sum(-1) > 0).sum()), float(len(mb))], dtype=torch.float64)
    tokens, sequences, rows = processes().sum(local).tolist()
    return {"tokens": tokens, "sequences": int(sequences), "rows": int(rows)}


def step_metrics(
    cfg: GRPOConfig, rollout, groups: GroupScores, old: dict, mask, kl_per_response, stats: dict, lr: float, baseline: MovingAverageBaseline
) -> dict:
    """The step's `rollout/*` and `train/*` metrics (README): rewards over the valid samples, entropy and KL over the kept."""
    procs, valid = processes(), groups.valid.flatten()
    valid_scores, lengths = groups.scores.flatten()[valid], rollout.response_mask.sum(-1).float()  # (V,), (B,)
    entropy, parts = old["entropy"], groups.parts
    return {
        "rollout/reward": procs.mean_of(valid_scores.tolist()),
        "rollout/reward_std": valid_scores.std().item() if len(valid_scores) > 1 else 0.0,
        "rollout/kl": procs.mean_of(kl_per_response.tolist() if kl_per_response is not None else []),
        "rollout/entropy": masked_mean(entropy, mask).item() if entropy is not None else None,
        "rollout/length": lengths.mean().item(),
        "rollout/length_p95": torch.quantile(lengths, 0.95).item(),
        "rollout/finished": rollout.finished.float().mean().item(),
        "rollout/groups_dropped": int(groups.equal_groups.sum()) if cfg.dynamic_sampling else 0,
        "rollout/groups_equal": int(groups.equal_groups.sum()),
        "rollout/samples_dropped": int((~groups.valid).sum()),
        "rollout/samples_trained": len(groups.rows),
        "rollout/distinct1": distinct_n(rollout.texts, 1),
        "rollout/distinct2": distinct_n(rollout.texts, 2),
        "rollout/reward_length_corr": length_correlation(valid_scores.numpy(), lengths[valid].cpu().numpy()) if valid.sum() > 1 else None,
        **(
            {
                f"rollout/reward/{name}": sum(v for v in vals if v is not None) / max(sum(v is not None for v in vals), 1)
                for name, vals in parts.items()
            }
            if len(parts) > 1
            else {}
        ),
        **(
            {
                f"train/{key}": stats[key]
                for key in ("loss", "clipfrac", "clipfrac_low", "clipfrac_high", "approx_kl", "ratio_mean", "grad_norm", "kl")
                if key in stats
            }
        ),
        **({"train/ratio_max": stats["ratio_peak"]} if "ratio_peak" in stats else {}),
        **{f"rollout/{key}": stats[key] for key in ("is_weight_mean", "is_weight_capped", "is_logp_gap") if key in stats},  # engine=vllm
        "train/lr": lr,
        "rollout/baseline": baseline.value if cfg.advantage == "reinforce" else None,
    }


def write_samples(path, done: int, prompts: list, rollout, groups: GroupScores, advantages, G: int) -> None:
    """Every sample of the step with its group, reward and advantage (None: not trained on), to read what the policy does."""
    adv_of = dict(zip(groups.rows.tolist(), advantages.tolist())) if advantages is not None else {}
    with path.open("a") as f:
        for i, (prompt, text, v) in enumerate(zip(prompts, rollout.texts, groups.values)):
            f.write(
                json.dumps({"step": done, "group": i // G, "prompt": prompt, "response": text, "reward": v, "advantage": adv_of.get(i)})
                + "\n"
            )


def train_grpo(cfg: GRPOConfig) -> dict | None:
    with placed(cfg) as placement:  # placement=ray: the reward models and the frozen reference in Ray actors
        return run_grpo(cfg, placement)


@dataclass
class GRPOSetup:
    """What setup_grpo builds: the parts the loop calls (sampler, reference, group scorer, passes over the kept samples),
    the optimisation state, the data streams and what the summary reports."""

    policy: torch.nn.Module
    tokenizer: object
    sampler: PolicySampler | VLLMEngineSampler
    reference: LocalReference | RayReference | None  # None: full fine-tuning without a KL term
    scorer: GroupScorer
    passes: KeptPasses
    trainable: dict
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: LossScaler
    aggregate: Callable  # (per-token loss, mask, minibatch counts) -> the micro-batch's share of the minibatch's loss
    baseline: MovingAverageBaseline
    guard: GoodhartGuard
    logger: MetricsLogger
    history: list
    records: list
    held_out: list
    stream: list
    start_step: int
    info: dict  # for the summary: policy_init, data, reference, parameters, memory


def setup_grpo(cfg: GRPOConfig, placement: RayPlacement | None, out, t_start: float) -> GRPOSetup:
    """Load the models and build the loop's parts; every choice of where a model lives, which engine samples and
    whether a scoring pass runs is made here. A resumed run gets its policy, optimiser, baseline and guard back."""
    # ---- models: policy, reference (only when needed), reward sources
    # first: a bad reward spec fails before the models load
    sources = (
        placement.reward_sources(cfg.reward, cfg.precision)
        if placement
        else load_reward_sources(cfg.reward, cfg.precision, cfg.offload_frozen)
    )
    policy_path = resolve_model(cfg.policy, "policy")
    tokenizer = load_tokenizer(policy_path, cfg.chat_template)
    report = ReadReport()
    records = read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, report=report, **cfg.dataset.read_args())
    console.print(f"grpo: {report.kept()}")
    policy = load_causal_lm(policy_path)
    # With LoRA the reference is the base weights with the adapter off (nothing loaded); with full
    # fine-tuning a frozen copy, and only when the KL is used (beta > 0).
    reference_model = None
    if not cfg.lora.enabled and cfg.beta > 0:
        reference_model = (
            placement.model("reference", policy_path, cfg.precision) if placement else load_frozen_lm(policy_path, cfg.offload_frozen)
        )
    reference_kind = (
        "adapter_off"
        if cfg.lora.enabled
        else "ray_actor"
        if isinstance(reference_model, RemoteModel)
        else "copy"
        if reference_model is not None
        else "none"
    )
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora)
    if cfg.parallel.activation_checkpointing:
        enable_activation_checkpointing(policy)
    if cfg.parallel.fsdp:  # each block's weights, gradients and Adam moments split between the processes
        shard_blocks(policy, cfg.parallel.zero_stage, cfg.parallel.offload_trainable)
    trainable = {"policy": policy}
    # the reference the loop and the held-out check call (None: full fine-tuning without a KL term)
    reference = (
        LocalReference(policy, reference_model, cfg.generation.temperature, cfg.micro_batch_size)
        if reference_kind in ("adapter_off", "copy")
        else RayReference(reference_model, cfg.generation.temperature, cfg.micro_batch_size)
        if reference_kind == "ray_actor"
        else None
    )
    held = [m for m in (policy, reference_model) if m is not None and not isinstance(m, RemoteModel)]
    parameter_gb = unique_parameter_bytes(*held) / 1e9
    offloaded_gb = unique_parameter_bytes(*held, offloaded=True) / 1e9  # offload_frozen: the reference copy in CPU memory
    console.print(
        f"grpo: {parameter_gb:.2f} GB of weights (reference: {reference_kind}"
        + (f", {offloaded_gb:.2f} GB of it offloaded to CPU memory" if offloaded_gb else "")
        + "); reward: "
        + ", ".join(f"{s.weight:g} x {s.name}" for s in sources)
    )
    scorer = GroupScorer(sources, cfg.group_size, cfg.dynamic_sampling)

    # ---- optimisation, the data streams, the guard; a resumed run's state
    params = [p for p in policy.parameters() if p.requires_grad]
    procs = processes()  # data parallel: each process samples prompts_per_step groups a step, gradients summed over all
    n_minibatches = cfg.batch_size // cfg.mini_batch_size
    optimizer, scheduler = make_optimizer(params, cfg.optim, cfg.steps * cfg.iterations * n_minibatches)
    scaler = LossScaler(cfg.precision == "fp16")  # fp16: dynamic loss scaling; otherwise it changes nothing
    aggregate = {
        "token_mean": lambda x, m, mb: token_mean(x, m, mb["tokens"]),
        "sequence_mean": lambda x, m, mb: sequence_mean(x, m, mb["sequences"]),
        "constant": lambda x, m, mb: constant_mean(x, m, mb["rows"] * cfg.generation.max_new_tokens),
    }[cfg.loss_aggregation]
    baseline = MovingAverageBaseline(cfg.baseline_decay)
    stream = index_stream(len(records), cfg.seed, cfg.steps * cfg.prompts_per_step * procs.world)
    held_out = (
        read_prompts(resolve_path(cfg.early_stop.prompts), limit=cfg.early_stop.limit, **cfg.dataset.read_args(held_out=True))
        if cfg.early_stop.prompts
        else []
    )
    guard = GoodhartGuard(cfg.early_stop, out, trainable, cfg.steps, started=t_start)

    start_step = 0
    resumed = load_checkpoint(out, trainable, optimizer, scheduler, scaler)
    if resumed is not None:
        start_step = resumed[0]
        guard.load_state_dict(resumed[1].get("best"))
        baseline.load_state_dict(resumed[1]["baseline"])
        console.print(f"grpo: resuming from step {start_step} of {cfg.steps}")
    if held_out and start_step == 0:  # the starting policy is the first "best": RL must beat it
        check = guard.timed(lambda: held_out_check(policy, reference, tokenizer, held_out, cfg, scorer))
        guard.start(check)
        console.print(f"grpo: held-out reward at the start {check['reward']:.3f} on {len(held_out)} prompts")
    n_trainable, n_total = count_parameters(policy)
    logger = MetricsLogger(
        out, cfg.steps, "grpo", ["rollout/reward", "rollout/kl", "rollout/groups_dropped"], start_step=start_step, tracker=cfg.tracker
    )
    history = resumed_history(logger, out, start_step, procs.is_main)  # steps before a resume

    # engine=vllm: vLLM samples (holding the policy's current weights, a resumed run's too), synced after every update; else
    # tether's sampler, inside the loop's own span that holds a sharded policy whole from sampling through scoring
    engine = training_sampler(cfg, policy_path, policy, procs.world)
    sampler = (
        VLLMEngineSampler(engine, tokenizer, cfg.vllm.is_cap)
        if engine is not None
        else PolicySampler(policy, tokenizer, cfg.generation, cfg.precision, gather=False)
    )
    # one minibatch and one iteration: pi_old is the update's own forward pass (no scoring pass), except that RLOO's
    # KL-shaped reward needs it before the update: then the sampler's log-probs where they are the trainer's own
    passes = KeptPasses(
        policy,
        cfg.generation.temperature,
        cfg.micro_batch_size,
        cfg.precision,
        on_policy=cfg.iterations == 1 and n_minibatches == 1,
        old_first=cfg.beta > 0 and cfg.kl_penalty == "reward",
        trust_sampler=sampler.exact,
        sharded=procs.sharded,
    )
    info = {
        "policy_init": policy_path,
        "data": report.to_dict(),
        "reference": reference_kind,
        "trainable_params": n_trainable,
        "total_params": n_total,
        "parameter_gb": parameter_gb,
        "offloaded_gb": offloaded_gb,
    }
    return GRPOSetup(
        policy,
        tokenizer,
        sampler,
        reference,
        scorer,
        passes,
        trainable,
        params,
        optimizer,
        scheduler,
        scaler,
        aggregate,
        baseline,
        guard,
        logger,
        history,
        records,
        held_out,
        stream,
        start_step,
        info,
    )


def run_grpo(cfg: GRPOConfig, placement: RayPlacement | None) -> dict | None:
    out = start_stage(cfg)
    t_start = time.time()
    run = setup_grpo(cfg, placement, out, t_start)
    finished = grpo_loop(cfg, run, out)
    if finished is None:  # interrupted: the checkpoint is written, a later run resumes it
        return None
    done, stop_reason = finished
    run.guard.roll_back(done, "grpo")  # to the policy that did best on held-out prompts

    # ---- save the policy (LoRA merged: a plain HF directory)
    procs = processes()
    procs.check_in_step(run.params, "grpo")
    save_model(run.policy, run.tokenizer, out / "model")
    history = run.history
    quarter = max(1, len(history) // 4)
    head, tail = history[:quarter], history[-quarter:]

    def mean(key, rows=tail):
        vals = [h[key] for h in rows if h.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    info = run.info
    summary = {
        "stage": "grpo",
        "model": str(out / "model"),
        "policy_init": info["policy_init"],
        "advantage": cfg.advantage,
        "reward": [{"name": s.name, "weight": s.weight} for s in run.scorer.sources],
        "steps": cfg.steps,
        "samples": cfg.steps * cfg.batch_size * procs.world,
        "data": info["data"],
        "processes": procs.world,
        "sharded": procs.sharded,
        "sharding": procs.sharding,
        "steps_done": done,
        "stopped_early": stop_reason,
        "reward_first_quarter": mean("rollout/reward", head),
        "reward_last_quarter": mean("rollout/reward"),
        "kl_last_quarter": mean("rollout/kl"),
        "groups_dropped": sum(h.get("rollout/groups_dropped") or 0 for h in history),
        "held_out": run.guard.summary(len(run.held_out)),
        "reference": info["reference"],
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        "parameter_gb": info["parameter_gb"],
        "offloaded_gb": info["offloaded_gb"],
        "peak_rss_gb": peak_rss_gb(),
        "seconds": time.time() - t_start,
    }
    write_model_card(out / "model", cfg, summary, base_model=cfg.policy, data=[cfg.prompts])
    write_summary(out, summary)
    drop_checkpoint(out, cfg)  # the final model and summary are written: the checkpoint has done its job
    return summary


def grpo_loop(cfg: GRPOConfig, run: GRPOSetup, out) -> tuple[int, str | None] | None:
    """Steps 1-6 of the module docstring, once per step from where the run starts. Returns the steps done and why
    training stopped early (None when it ran them all), or None when interrupted (after writing the checkpoint)."""
    procs, G, guard, history = processes(), cfg.group_size, run.guard, run.history
    per_step = cfg.prompts_per_step * procs.world  # prompts a step over all processes
    n_minibatches = cfg.batch_size // cfg.mini_batch_size
    n_updates = cfg.iterations * n_minibatches
    use_reference = cfg.beta > 0
    kl_in_loss = use_reference and cfg.kl_penalty == "loss"  # kl_penalty=reward: the KL shapes the reward instead (RLOO)
    samples_path = out / "samples.jsonl"
    done, stop_reason = run.start_step, None
    run.policy.eval()
    for step in range(run.start_step, cfg.steps):
        t0 = time.time()
        chosen = [run.records[i] for i in procs.share(run.stream[step * per_step : (step + 1) * per_step])]
        batch_prompts = [r.prompt for r in chosen for _ in range(G)]  # sample k of prompt p is row p * G + k

        # 1. rollout; a sharded (fsdp) policy is held whole from here through the passes of step 3, whose number
        #    differs between processes (each stops sampling when its own rows end, keeps its own samples)
        with gathered(run.policy):
            rollout = run.sampler.sample(batch_prompts, (cfg.seed * 1000003 + step) * procs.world + procs.rank)
            t_gen = time.time() - t0

            # 2. score (P, G); a sample a source drops takes no part, dynamic sampling leaves out the groups of equal rewards
            groups = run.scorer(batch_prompts, rollout.texts, [dict(r.meta) for r in chosen for _ in range(G)])
            batch = KeptBatch.of(rollout, groups.rows)  # the N kept samples
            N, mask = len(batch), batch.mask  # (N, R)

            # 3. log pi_old and log pi_ref of the kept samples (no grad)
            with torch.no_grad(), autocast(cfg.precision):
                old = run.passes.old(batch)  # on-policy: filled in by the update's own pass
                ref_logp = run.reference.logprobs(batch.seqs, batch.attn, batch.P) if use_reference and N > 0 else None  # (N, R)
        train_scores = groups.scores.flatten()[groups.rows].to(mask.device)  # (N,)
        if use_reference and not kl_in_loss and N > 0:  # RLOO's KL-shaped reward, from the sampling policy
            train_scores = train_scores - cfg.beta * (kl_k1(old["logp"], ref_logp) * mask).sum(-1)

        # 4. advantages, one per kept sample (N,)
        n_all = procs.sum(float(N))  # samples kept over every process: all of them update together, or none
        advantages = grpo_advantages(cfg, groups, train_scores, run.baseline)

        # 5. update: `iterations` passes, each over n_minibatches minibatches run as micro-batches; every micro-batch
        #    loss uses its minibatch's counts, so they add up to the minibatch's loss. A process that kept nothing
        #    still joins every update (its gradient is zero)
        stats: dict[str, float] = {}
        if n_all > 0:
            run.policy.train()
            for _ in range(cfg.iterations):
                for mb in torch.randperm(N).tensor_split(n_minibatches):
                    counts = minibatch_counts(mask, mb)  # the minibatch over every process
                    if counts["rows"] == 0:
                        continue
                    for micro in run.passes.micro_batches(mb, rollout):
                        share = mask[micro].sum().item() / max(counts["tokens"], 1.0) / n_updates  # its token weight in the stats
                        with autocast(cfg.precision):
                            new = run.passes(batch, micro, old)
                        # a sampler off the trainer's numbers (vLLM): min(pi_old / pi_sampler, cap) on each token's surrogate term
                        weights, is_stats = run.sampler.weigh(old["logp"][micro], rows_of(batch.sampled_logp, micro), mask[micro])
                        kl_args = (ref_logp[micro], cfg.beta) if kl_in_loss else (None, 0.0)
                        per_token, st = grpo_token_loss(
                            new["logp"],
                            old["logp"][micro],
                            advantages[micro],
                            mask[micro],
                            cfg.eps_low,
                            cfg.eps_high,
                            *kl_args,
                            weights=weights,
                        )
                        loss = run.aggregate(per_token, mask[micro], counts)
                        run.scaler.scale(loss).backward()
                        stats["loss"] = stats.get("loss", 0.0) + loss.item() / n_updates  # the micro-batch losses add up to the minibatch's
                        for key, v in {**st, **is_stats}.items():  # token-weighted, as the loss
                            stats[key] = stats.get(key, 0.0) + v * share
                        stats["ratio_peak"] = max(stats.get("ratio_peak", 0.0), st["ratio_max"])
                    procs.reduce_gradients(run.params, average=False)
                    grad_norm = clip_and_step(run.params, run.optimizer, run.scheduler, cfg.optim.max_grad_norm, run.scaler)
                    if N > 0:
                        stats["grad_norm"] = stats.get("grad_norm", 0.0) + grad_norm / n_updates
            run.policy.eval()  # eval mode for the held-out check and the next rollout (KV cache on)
            if step % TRIM_EVERY == 0:
                release_freed_memory()
            run.sampler.sync(run.policy)  # a vLLM engine gets the updated weights for the next rollout
        kl_per_response = (kl_k1(old["logp"], ref_logp) * mask).sum(-1) if ref_logp is not None else None  # (N,) nats, pi_old vs pi_ref

        stats, lr = procs.reduce_stats(stats), run.scheduler.get_last_lr()[0]
        metrics = step_metrics(cfg, rollout, groups, old, mask, kl_per_response, stats, lr, run.baseline)
        metrics.update({"time/rollout_s": t_gen, "time/step_s": time.time() - t0})
        done = step + 1

        # 6. the guard: held-out reward and KL; keep the best, stop when it turns
        stop_reason = None
        if guard.due(done):
            check = guard.timed(lambda: held_out_check(run.policy, run.reference, run.tokenizer, run.held_out, cfg, run.scorer))
            metrics.update({f"held_out/{key}": value for key, value in check.items()})
            stop_reason = guard.update(done, check)
            if cfg.early_stop.gold_peak:
                metrics["held_out/gold_peak_kl"] = guard.peak_kl
        stop_reason = stop_reason or guard.out_of_time(done, metrics["time/step_s"])  # early_stop.max_minutes
        metrics.update(scaler_metrics(run.scaler))
        history.append(metrics)
        run.logger.log(done, metrics)
        if cfg.samples_every and (done % cfg.samples_every == 0 or done == 1) and procs.is_main:  # read what the policy does
            write_samples(samples_path, done, batch_prompts, rollout, groups, advantages, G)
        if stop_reason:
            console.print(f"grpo: early stop after step {done}: {stop_reason}")
            break
        state = {"best": guard.state_dict(), "baseline": run.baseline.state_dict()}
        if checkpoint_or_interrupt(out, done, cfg, run.trainable, run.optimizer, run.scheduler, state, run.logger, "grpo", run.scaler):
            return None
    run.logger.close()
    return done, stop_reason
