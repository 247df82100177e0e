"""PPO-RLHF: maximise E[r(x, y)] - beta * KL(pi || pi_ref), one loop, top to bottom.

Ziegler et al. 2019 (Fine-Tuning Language Models from Human Preferences), Stiennon et al.
2020, Ouyang et al. 2022. Each iteration:

  1. rollout:   sample responses y ~ pi(.|x) for a batch of prompts, keeping log pi_old and
                the policy-head values V_old from the sampling pass itself
  2. score:     log pi_ref, RM score r(x, y)   (no grad)
  3. rewards:   per token  -beta * (log pi - log pi_ref),  plus r(x, y) at the last token;
                advantages and returns by GAE (Schulman et al. 2016)
  4. update:    ppo_epochs passes over minibatches of the rollout: clipped surrogate
                (Schulman et al. 2017, eq. 7) + vf_coef * clipped value loss
  5. control:   the adaptive KL controller moves beta towards the target KL
  6. guard:     every N steps, reward and KL on held-out prompts; the best policy is kept,
                and training stops (rolled back to the best) when KL passes a ceiling or
                the held-out reward stops rising (the Goodhart guard)

Options on top of the classic recipe: KL as a loss term instead of a reward penalty,
reward whitening, an entropy bonus, and InstructGPT's PPO-ptx (an SFT loss mixed into
every minibatch).

Models: with LoRA (the default) the reference is the policy's own weights with the
adapter switched off, so policy and reference share one copy of the weights, and the
reward model's tensors that equal those weights (its frozen layers) point at the same copy.
The value function is a zero-initialised head on the policy trunk, a second adapter with a
copy of the reward head over the reward model's (shared) weights, or a full copy of the
reward model.

Layout: `setup_ppo` loads the models and makes every choice of where they live and which engine
samples, once; it hands `ppo_loop` the parts of stages/rl_parts.py (a sampler, a reference, a
scorer, a value and the policy's passes over a rollout), and `ppo_loop` is steps 1-6 above.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tether.config import PPOConfig, resolve_path, reward_model_source
from tether.data.collate import collate_sft, encode_demonstration
from tether.data.readers import ReadReport, read_demonstrations, read_prompts
from tether.data.records import prompt_text
from tether.distributed import gathered, shard_blocks
from tether.eval.calibration import length_correlation
from tether.eval.metrics import distinct_n
from tether.feedback.gold import gold_scores
from tether.losses import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    leave_one_out_advantages,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    sft_loss,
)
from tether.models.card import write_model_card
from tether.models.loading import (
    ModelError,
    apply_lora,
    autocast,
    count_parameters,
    device,
    enable_activation_checkpointing,
    freeze_lower_layers,
    load_causal_lm,
    load_frozen_lm,
    load_tokenizer,
    resolve_model,
    save_model,
)
from tether.models.reward_model import load_reward_model
from tether.models.sharing import share_with_base, unique_parameter_bytes
from tether.placement import RayPlacement, RemoteModel, placed
from tether.processes import processes
from tether.rewards.sources import source_names
from tether.rollout.logprobs import policy_forward, replays_exactly
from tether.rollout.sampling import sample_rollout
from tether.rollout.vllm_engine import training_sampler
from tether.stages.rl_parts import (
    LocalReference,
    ModelValue,
    PolicyHeadValue,
    PolicyPasses,
    PolicySampler,
    RayReference,
    RewardModelValue,
    Scorer,
    VLLMEngineSampler,
    build_scorer,
    reward_adapter_value,
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

__all__ = ["RewardModelValue", "reward_adapter_value", "run_ppo", "setup_ppo", "ppo_loop", "train_ppo"]

KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def set_train_mode(modules: dict, training: bool) -> None:
    """Train mode for the update, eval mode for scoring. Dropout is off either way; activation
    checkpointing works only in train mode."""
    for module in modules.values():
        module.train(training)


@torch.no_grad()
def held_out_check(policy, reference, tokenizer, prompts, cfg: PPOConfig, score_fn) -> dict:
    """Mean reward, gold score and KL (k1, nats per response) of the current policy on held-out prompts,
    sampled with a fixed seed so successive checks differ only by the policy. With several processes each
    samples every world-th batch (the same draws as one process would) and the means are taken over all."""
    with gathered(policy):  # each process samples its own share of the batches: a sharded policy is gathered whole first
        return _held_out_check(policy, reference, tokenizer, prompts, cfg, score_fn)


def _held_out_check(policy, reference, tokenizer, prompts, cfg: PPOConfig, score_fn) -> dict:
    rewards, kls, golds = [], [], []
    settings, procs = cfg.generation, processes()
    for b, start in enumerate(range(0, len(prompts), settings.batch_size)):
        if b % procs.world != procs.rank:
            continue
        batch = prompts[start : start + settings.batch_size]
        rollout = sample_rollout(policy, tokenizer, batch, settings, seed=cfg.seed * 7919 + b, precision=cfg.precision)
        seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
        mask = rollout.response_mask.float()
        with autocast(cfg.precision):
            logp = (
                rollout.logprobs
                if rollout.logprobs is not None and cfg.reuse_sampling_pass
                else policy_forward(policy, seqs, attn, P, settings.temperature)["logp"]
            )
            ref_logp = reference.logprobs(seqs, attn, P, chunk=len(seqs))
        kls.extend(((logp - ref_logp) * mask).sum(-1).tolist())
        scores, keep = score_fn(batch, rollout)
        rewards.extend(s for s, k in zip(scores.tolist(), keep.tolist()) if k)
        golds.extend(gold_scores([prompt_text(p) for p in batch], rollout.texts))
    mean, n = procs.mean_of(rewards) or 0.0, procs.sum(float(len(rewards)))
    # the standard error of the mean reward: how far two readings may differ by the draw alone (early_stop.tolerance)
    variance = max((procs.mean_of([r * r for r in rewards]) or 0.0) - mean * mean, 0.0) * n / max(n - 1, 1.0)
    return {
        "reward": mean,
        "reward_se": math.sqrt(variance / max(n, 1.0)),
        "kl": procs.mean_of(kls) or 0.0,
        "gold": procs.mean_of(golds) or 0.0,
    }


class PtxLoss:
    """InstructGPT's PPO-ptx (Ouyang et al. 2022, eq. 2): the SFT loss of `ptx_batch_size` demonstrations, a fresh
    batch for every minibatch update (`update` counts them over the whole run, so a resumed run draws the same)."""

    def __init__(self, policy, tokenizer, cfg: PPOConfig, n_updates: int):
        self.policy, self.pad, self.size = policy, tokenizer.pad_token_id, cfg.ptx_batch_size
        self.examples = [
            encode_demonstration(tokenizer, d, cfg.generation.max_prompt_tokens, cfg.generation.max_new_tokens)
            for d in read_demonstrations(resolve_path(cfg.ptx_data))
        ]
        self.stream = index_stream(len(self.examples), cfg.seed, n_updates * self.size)
        self.precision = cfg.precision

    def __call__(self, update: int) -> torch.Tensor:
        at = update * self.size
        ptx = collate_sft([self.examples[i] for i in self.stream[at : at + self.size]], self.pad)
        with autocast(self.precision):
            logits = self.policy(input_ids=ptx["input_ids"].to(device()), attention_mask=ptx["attention_mask"].to(device())).logits
        return sft_loss(logits.float(), ptx["labels"].to(device()))[0]


def ppo_loss(
    new: dict, old_logp, old_values, ref_logp, advantages, returns, mask, is_weights, cfg: PPOConfig, beta: float, kl_estimator
) -> tuple[torch.Tensor, dict]:
    """One micro-batch's PPO loss (every tensor (b, R), already its rows): the clipped surrogate (Schulman et al. 2017,
    eq. 7) + vf_coef * the clipped value loss; with kl.penalty=loss + beta * KL(pi || pi_ref) of the current policy
    (k3 is the usual choice there); with ent_coef > 0 - ent_coef * entropy (keeps the policy from collapsing onto a
    few answers). Returns the loss (the micro-batch's token mean) and its statistics."""
    pg_loss, pg_stats = ppo_policy_loss(new["logp"], old_logp, advantages, mask, cfg.clip_eps, weights=is_weights)
    vf_loss, vf_stats = ppo_value_loss(new["values"], old_values, returns, mask, cfg.value_clip_eps)
    loss, stats = pg_loss + cfg.vf_coef * vf_loss, {**pg_stats, **vf_stats}
    if cfg.kl.penalty == "loss":
        kl_loss = masked_mean(kl_estimator(new["logp"], ref_logp), mask)
        loss, stats["kl_loss"] = loss + beta * kl_loss, kl_loss.item()
    if cfg.ent_coef > 0:
        entropy = masked_mean(new["entropy"], mask)
        loss, stats["entropy_bonus"] = loss - cfg.ent_coef * entropy, entropy.item()
    return loss, stats


def rollout_metrics(rollout, scores, keep, mask, entropy, mean_kl: float, kl_per_response, beta: float, kl_in_reward: bool, K: int) -> dict:
    """The rollout's `rollout/*` diagnostics (README), the means over every process's episodes where the loss uses them;
    scores, keep (B,) (the reward statistics are over the kept episodes: a dropped one has no score), mask, entropy (B, R),
    kl_per_response (B,), K responses per prompt."""
    procs = processes()
    kept = scores[keep]
    n_kept = procs.sum(float(len(kept)))
    return {
        "rollout/reward": procs.sum(kept.sum().item()) / max(n_kept, 1.0),
        "rollout/reward_std": kept.std().item() if len(kept) > 1 else 0.0,
        "rollout/kl": mean_kl,
        "rollout/beta": beta,
        "rollout/non_score_reward": (-beta * kl_per_response).mean().item() if kl_in_reward else 0.0,  # KL part of the reward
        "rollout/entropy": procs.mean(masked_mean(entropy, mask).item()),
        "rollout/length": procs.mean(mask.sum(-1).mean().item()),
        "rollout/finished": procs.mean(rollout.finished.float().mean().item()),
        "rollout/length_p95": torch.quantile(mask.sum(-1), 0.95).item(),
        "rollout/distinct1": distinct_n(rollout.texts, 1),
        "rollout/distinct2": distinct_n(rollout.texts, 2),
        "rollout/reward_length_corr": length_correlation(kept.cpu().numpy(), mask.sum(-1)[keep].cpu().numpy()),
        **({"rollout/reward_std_within_prompt": procs.mean(scores.view(-1, K).std(1).mean().item())} if K > 1 else {}),
    }


def train_metrics(stats: dict, explained_variance: float, lr: float) -> dict:
    """The update's `train/*` metrics (README) from its statistics, reduced over every process."""
    keys = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "vf_clipfrac")
    return {
        "train/ratio_max": stats["ratio_peak"],
        **{f"train/{key}": stats[key] for key in keys},
        "train/explained_variance": explained_variance,
        "train/grad_norm": stats["grad_norm"],
        "train/lr": lr,
        **{f"train/{key}": stats[key] for key in ("kl_loss", "entropy_bonus", "ptx_loss") if key in stats},
    }


def write_samples(path, done: int, prompts: list, texts: list[str], rewards: list[float]) -> None:
    """The step's episodes (prompt, response, reward) to samples.jsonl, to read what the policy does."""
    with path.open("a") as f:
        for prompt, text, r in zip(prompts, texts, rewards):
            f.write(json.dumps({"step": done, "prompt": prompt, "response": text, "reward": r}) + "\n")


def train_ppo(cfg: PPOConfig) -> dict | None:
    with placed(cfg) as placement:  # placement=ray: the frozen models in Ray actors
        return run_ppo(cfg, placement)


@dataclass
class PPOSetup:
    """What setup_ppo builds: the parts the loop calls (sampler, reference, scorer, passes over a rollout), the
    optimisation state, the data streams and what the summary reports."""

    policy: torch.nn.Module
    tokenizer: object
    sampler: PolicySampler | VLLMEngineSampler
    reference: LocalReference | RayReference
    scorer: Scorer
    value: PolicyHeadValue | ModelValue
    passes: PolicyPasses
    trainable: dict
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: LossScaler
    kl_ctl: AdaptiveKLController | FixedKLController
    kl_estimator: Callable
    ptx: PtxLoss | None
    guard: GoodhartGuard
    logger: MetricsLogger
    history: list
    prompts: list
    held_out: list
    stream: list
    start_step: int
    info: dict  # for the summary: policy_init, data, parameters, weight sharing, memory


def setup_ppo(cfg: PPOConfig, placement: RayPlacement | None, out, t_start: float) -> PPOSetup:
    """Load the models and build the loop's parts; every choice of where a model lives and which engine samples is
    made here. A resumed run gets its models, optimiser, KL controller and guard back from the checkpoint."""
    # ---- models: policy (+ value), reference, reward model (placement=ray: the frozen ones in Ray actors)
    policy_path = resolve_model(cfg.policy, "policy")
    tokenizer = load_tokenizer(policy_path, cfg.chat_template)
    report = ReadReport()
    prompts = read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, report=report, **cfg.dataset.read_args())
    console.print(f"ppo: {report.kept()}")
    # the reward: one reward model alone scores the policy's token ids (placement=ray: in its own actor); any other list of
    # sources (rewards/sources.py) is loaded by build_scorer and reads the decoded text
    rm_source, rm = reward_model_source(cfg.reward), None
    if rm_source is not None:
        rm = (
            placement.model("reward", rm_source.path, cfg.precision) if placement else load_reward_model(rm_source.path, cfg.offload_frozen)
        )
    scorer = build_scorer(
        cfg.reward,
        rm,
        tokenizer,
        cfg.precision,
        cfg.missing_eos_penalty,
        cfg.reward_clip,
        remote=placement is not None,
        offload=cfg.offload_frozen,
    )
    if rm is not None and rm.vocab() != tokenizer.get_vocab():
        raise ModelError(
            f"reward model {rm_source.path} uses a different tokenizer from the policy {policy_path}; "
            "train the reward model from the SFT model so both read the same tokens"
        )
    policy = load_causal_lm(policy_path)
    # With LoRA the reference is the policy's own base weights with the adapter disabled;
    # with full fine-tuning it is a frozen second copy. Either way those weights never change,
    # so the reward model's tensors that equal them are held once (its frozen layers).
    reference_model = None
    if not cfg.lora.enabled:
        reference_model = (
            placement.model("reference", policy_path, cfg.precision) if placement else load_frozen_lm(policy_path, cfg.offload_frozen)
        )
    # a short text the weight-sharing and frozen-block checks run the models on before training
    probe = tokenizer("Is this a helpful answer? Yes, it is.", return_tensors="pt").input_ids.to(device())
    shared_params = 0
    if (
        rm is not None and cfg.share_weights and placement is None and not cfg.offload_frozen
    ):  # a LoRA-trained RM becomes an adapter on the base (not under a value adapter)
        shared_params = share_with_base(
            rm, policy if reference_model is None else reference_model, probe, use_adapters=cfg.value_model != "reward_adapter"
        )
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora)  # freezes the base weights, shared ones included
    if cfg.freeze_layers:
        freeze_lower_layers(policy, cfg.freeze_layers, policy_path)
    frozen_blocks = 0  # > 0: the frozen blocks run once per rollout, their output recorded (reuse_frozen_states)
    if cfg.freeze_layers and cfg.reuse_frozen_states and not cfg.parallel.fsdp:
        if replays_exactly(policy, probe, cfg.freeze_layers, with_adapter_off=cfg.lora.enabled):
            frozen_blocks = cfg.freeze_layers
        else:
            console.print("ppo: reuse_frozen_states is off: passes started from the recorded lower blocks did not give this model's logits")
    if cfg.parallel.fsdp:  # each block's weights, gradients and Adam moments split between the processes
        shard_blocks(policy, cfg.parallel.zero_stage, cfg.parallel.offload_trainable)
    if cfg.value_model == "policy_head":
        value = PolicyHeadValue(policy.config.hidden_size)
    elif cfg.value_model == "reward_adapter":  # the reward model's weights, a second adapter, a copy of its head
        value = ModelValue(reward_adapter_value(rm.members[0], cfg.lora))
    else:
        member = load_reward_model(rm_source.path).members[0]
        value = ModelValue(RewardModelValue(member.model.requires_grad_(True), member.normalization).to(device()))
    trainable = {"policy": policy, **value.modules}
    if cfg.freeze_layers and value.model is not None:  # a value model on its own trunk: the same saving
        freeze_lower_layers(value.model.model, cfg.freeze_layers, rm_source.path)
    if cfg.parallel.activation_checkpointing:  # the models that are trained through their blocks
        for model in [policy] + ([value.model.model] if value.model is not None else []):
            enable_activation_checkpointing(model)
    frozen_rms = [m.model for m in rm.members] if rm is not None and placement is None else []
    if any(p.requires_grad for m in frozen_rms for p in m.parameters()):
        raise AssertionError("a reward-model weight is trainable: weight sharing must only join frozen tensors")
    held = [m for m in (policy, reference_model, value.head, value.model, *frozen_rms) if m is not None and not isinstance(m, RemoteModel)]
    parameter_gb = unique_parameter_bytes(*held) / 1e9  # every weight tensor on this process's device, shared ones once
    offloaded_gb = unique_parameter_bytes(*held, offloaded=True) / 1e9  # offload_frozen: held in CPU memory instead
    console.print(
        f"ppo: {parameter_gb:.2f} GB of weights for policy, reference, value and reward"
        + (f" ({shared_params / 1e6:.1f}M reward-model parameters shared with the frozen base)" if shared_params else "")
        + (f", {offloaded_gb:.2f} GB of frozen weights offloaded to CPU memory" if offloaded_gb else "")
    )

    # ---- the parts the loop calls
    temperature = cfg.generation.temperature
    reference = (
        RayReference(reference_model, temperature, cfg.mini_batch_size)
        if isinstance(reference_model, RemoteModel)
        else LocalReference(policy, reference_model, temperature, cfg.mini_batch_size)
    )

    # ---- optimisation: the policy and the value function, each its own learning rate
    params = [p for m in trainable.values() for p in m.parameters() if p.requires_grad]
    procs = processes()  # data parallel: each process samples batch_size episodes a step, gradients summed over all
    n_updates = cfg.steps * cfg.ppo_epochs * (cfg.batch_size // cfg.mini_batch_size)
    critic = {id(p) for name, m in trainable.items() if name != "policy" for p in m.parameters()}  # the value head or model
    groups = [
        {"params": [p for p in params if id(p) not in critic]},
        {"params": [p for p in params if id(p) in critic], "lr": cfg.value_lr or cfg.optim.lr},
    ]
    optimizer, scheduler = make_optimizer([g for g in groups if g["params"]], cfg.optim, n_updates)
    scaler = LossScaler(cfg.precision == "fp16")  # fp16: dynamic loss scaling; otherwise it changes nothing
    kl_ctl = (
        AdaptiveKLController(cfg.kl.init_beta, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive else FixedKLController(cfg.kl.init_beta)
    )
    per_step = cfg.batch_size * procs.world  # episodes a step over all processes
    stream = index_stream(len(prompts), cfg.seed, cfg.steps * (per_step // cfg.samples_per_prompt))
    ptx = PtxLoss(policy, tokenizer, cfg, n_updates) if cfg.ptx_coef > 0 else None  # PPO-ptx: demonstrations' SFT loss mixed in
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
        kl_ctl.load_state_dict(resumed[1]["kl_controller"])
        guard.load_state_dict(resumed[1].get("best"))
        console.print(f"ppo: resuming from step {start_step} of {cfg.steps}")
    if held_out and start_step == 0:  # the starting policy is the first "best": RL must beat it
        check = guard.timed(lambda: held_out_check(policy, reference, tokenizer, [p.prompt for p in held_out], cfg, scorer))
        guard.start(check)
        console.print(f"ppo: held-out reward at the start {check['reward']:.3f} on {len(held_out)} prompts")
    n_trainable, n_total = count_parameters(policy)
    logger = MetricsLogger(
        out, cfg.steps, "ppo", ["rollout/reward", "rollout/kl", "rollout/beta"], start_step=start_step, tracker=cfg.tracker
    )
    history = resumed_history(logger, out, start_step, procs.is_main)  # steps before a resume

    # engine=vllm: vLLM samples (holding the policy's current weights, a resumed run's too), synced after every update
    engine = training_sampler(cfg, policy_path, policy, procs.world)
    reuse = cfg.reuse_sampling_pass and engine is None  # the sampling pass's own log-probs and values are log pi_old, V_old
    sampler = (
        VLLMEngineSampler(engine, tokenizer, cfg.vllm.is_cap)
        if engine is not None
        else PolicySampler(policy, tokenizer, cfg.generation, cfg.precision, value.head if reuse else None, with_entropy=reuse)
    )
    passes = PolicyPasses(policy, value, temperature, cfg.mini_batch_size, frozen_blocks, reuse)
    info = {
        "policy_init": policy_path,
        "reward_model": rm_source.path if rm_source else None,
        "reward": source_names(cfg.reward),
        "data": report.to_dict(),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "reward_model_shared_params": shared_params,
        "frozen_blocks_recorded": frozen_blocks,
        "parameter_gb": parameter_gb,
        "offloaded_gb": offloaded_gb,
    }
    return PPOSetup(
        policy,
        tokenizer,
        sampler,
        reference,
        scorer,
        value,
        passes,
        trainable,
        params,
        optimizer,
        scheduler,
        scaler,
        kl_ctl,
        KL_ESTIMATORS[cfg.kl.estimator],
        ptx,
        guard,
        logger,
        history,
        prompts,
        held_out,
        stream,
        start_step,
        info,
    )


def run_ppo(cfg: PPOConfig, placement: RayPlacement | None) -> dict | None:
    out = start_stage(cfg)
    t_start = time.time()
    run = setup_ppo(cfg, placement, out, t_start)
    finished = ppo_loop(cfg, run, out)
    if finished is None:  # interrupted: the checkpoint is written, a later run resumes it
        return None
    done, stop_reason = finished
    run.guard.roll_back(done, "ppo")  # to the policy that did best on held-out prompts

    # ---- save the policy (LoRA merged: a plain HF directory) and the value function
    procs = processes()
    procs.check_in_step(run.params, "ppo")
    save_model(run.policy, run.tokenizer, out / "model")
    if procs.is_main:
        run.value.save(out)
    history, per_step = run.history, cfg.batch_size * procs.world
    quarter = max(1, len(history) // 4)
    head, tail = history[:quarter], history[-quarter:]
    mean = lambda key, rows=tail: sum(h[key] for h in rows) / len(rows) if rows else None  # noqa: E731
    info = run.info
    summary = {
        "stage": "ppo",
        "model": str(out / "model"),
        "policy_init": info["policy_init"],
        "reward_model": info["reward_model"],
        "reward": info["reward"],
        "steps": cfg.steps,
        "episodes": cfg.steps * per_step,
        "data": info["data"],
        "processes": procs.world,
        "sharded": procs.sharded,
        "sharding": procs.sharding,
        "reward_first_quarter": mean("rollout/reward", head),
        "reward_last_quarter": mean("rollout/reward"),
        "kl_last_quarter": mean("rollout/kl"),
        "kl_target": cfg.kl.target if cfg.kl.adaptive else None,
        "beta_final": run.kl_ctl.beta,
        "entropy_last_quarter": mean("rollout/entropy"),
        "steps_done": done,
        "stopped_early": stop_reason,
        "held_out": run.guard.summary(len(run.held_out)),
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        "reward_model_shared_params": info["reward_model_shared_params"],
        "frozen_blocks_recorded": info["frozen_blocks_recorded"],  # reuse_frozen_states: blocks run once per rollout, not in every pass
        "parameter_gb": info["parameter_gb"],
        "offloaded_gb": info["offloaded_gb"],
        "peak_rss_gb": peak_rss_gb(),
        "seconds": time.time() - t_start,
    }
    write_model_card(out / "model", cfg, summary, base_model=cfg.policy, data=[cfg.prompts, cfg.ptx_data])
    write_summary(out, summary)
    drop_checkpoint(out, cfg)  # the final model and summary are written: the checkpoint has done its job
    return summary


def ppo_loop(cfg: PPOConfig, run: PPOSetup, out) -> tuple[int, str | None] | None:
    """Steps 1-6 of the module docstring, once per step from where the run starts. Returns the steps done and why
    training stopped early (None when it ran them all), or None when interrupted (after writing the checkpoint)."""
    procs, K, kl_ctl, guard, history = processes(), cfg.samples_per_prompt, run.kl_ctl, run.guard, run.history
    per_step = cfg.batch_size * procs.world  # episodes a step over all processes
    prompts_per_step = per_step // K  # each prompt's responses are K consecutive rows
    n_minibatches = cfg.batch_size // cfg.mini_batch_size
    n_updates = cfg.ppo_epochs * n_minibatches
    kl_in_reward = cfg.kl.penalty == "reward"  # kl.penalty=loss: the KL leaves the reward and enters the loss (ppo_loss)
    samples_path = out / "samples.jsonl"
    done, stop_reason = run.start_step, None
    set_train_mode(run.trainable, False)
    for step in range(run.start_step, cfg.steps):
        t0 = time.time()
        step_prompts = procs.share(run.stream[step * prompts_per_step : (step + 1) * prompts_per_step])
        batch_prompts = [run.prompts[i].prompt for i in step_prompts for _ in range(K)]

        # 1. rollout: responses y ~ pi(.|x), each token's log-prob under the sampling policy
        rollout = run.sampler.sample(batch_prompts, seed=(cfg.seed * 1000003 + step) * procs.world + procs.rank)
        seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
        t_gen = time.time() - t0

        # 2. score: log pi_old, V_old (the pre-update policy), log pi_ref and r(x, y), no gradients
        with torch.no_grad(), autocast(cfg.precision):
            passes = run.passes.over(rollout)  # reuse_frozen_states: the frozen lower blocks run here, once
            pending_ref = run.reference.start(seqs, attn, P, frozen=passes.frozen)  # an actor's works meanwhile
            old = passes.old()
        scores, keep = run.scorer(batch_prompts, rollout)  # (B,), (B,)
        ref_logp = pending_ref.result()  # (B, R)
        mask = rollout.response_mask.float() * keep.float().unsqueeze(-1)  # (B, R); a dropped episode counts nowhere
        old_logp, old_values = old["logp"], old["values"]  # (B, R)
        is_weights, is_stats = run.sampler.importance_weights(old_logp, rollout, mask)  # a sampler off the trainer's numbers
        # the score RL sees: with prompt_baseline, minus the mean of the prompt's other responses (RLOO's baseline)
        rl_scores = leave_one_out_advantages(scores.view(-1, K), keep.view(-1, K)).view(-1) if cfg.prompt_baseline else scores

        # 3. per-token rewards (-beta * KL, plus the score at the last token), then advantages and returns by GAE
        rewards, kl = per_token_rewards(rl_scores, old_logp, ref_logp, mask, kl_ctl.beta if kl_in_reward else 0.0, run.kl_estimator)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, R)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        t_update = time.time()

        # 4. PPO update: ppo_epochs passes over minibatches of this rollout; a minibatch runs as micro-batches, each
        #    loss weighted by its share of the minibatch's tokens (over every process): the summed gradient is the token mean
        set_train_mode(run.trainable, True)
        stats: dict[str, float] = {}
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(cfg.batch_size)
            for k in range(n_minibatches):
                mb = perm[k * cfg.mini_batch_size : (k + 1) * cfg.mini_batch_size]
                mb_tokens = procs.sum(mask[mb].sum()).clamp(min=1.0)
                for micro_index, micro in enumerate(mb.split(cfg.micro_batch_size)):
                    share = (mask[micro].sum() / mb_tokens).item()
                    with autocast(cfg.precision):
                        new = passes(micro, with_entropy=cfg.ent_coef > 0)
                    batch = (x[micro] for x in (old_logp, old_values, ref_logp, advantages, returns, mask))
                    loss, micro_stats = ppo_loss(new, *batch, rows_of(is_weights, micro), cfg, kl_ctl.beta, run.kl_estimator)
                    loss = loss * share
                    if run.ptx is not None and micro_index == 0:  # PPO-ptx, once per minibatch: keep the demonstrations' likelihood
                        ptx_loss = run.ptx((step * cfg.ppo_epochs + epoch) * n_minibatches + k)
                        loss = loss + cfg.ptx_coef * ptx_loss / procs.world
                        stats["ptx_loss"] = stats.get("ptx_loss", 0.0) + ptx_loss.item() / n_updates
                    run.scaler.scale(loss).backward()
                    for key, v in micro_stats.items():  # token-weighted, as the loss
                        stats[key] = stats.get(key, 0.0) + v * share / n_updates
                    stats["ratio_peak"] = max(stats.get("ratio_peak", 0.0), micro_stats["ratio_max"])
                procs.reduce_gradients(run.params, average=False)
                grad_norm = clip_and_step(run.params, run.optimizer, run.scheduler, cfg.optim.max_grad_norm, run.scaler)
                stats["grad_norm"] = stats.get("grad_norm", 0.0) + grad_norm / n_updates
        set_train_mode(run.trainable, False)  # eval mode for the held-out check and the next rollout (KV cache on)
        release_freed_memory()  # rollout shapes vary: without this, resident memory creeps up
        run.sampler.sync(run.policy)  # a vLLM engine gets the updated weights for the next rollout

        # 5. adapt beta towards the target KL (nats per response), the mean over every process's episodes
        kl_per_response = (kl * mask).sum(-1)  # (B,)
        mean_kl = procs.mean(kl_per_response.mean().item())
        beta_used = kl_ctl.beta
        kl_ctl.update(mean_kl, per_step)
        stats = procs.reduce_stats(stats)
        metrics = {
            **rollout_metrics(rollout, scores, keep, mask, old["entropy"], mean_kl, kl_per_response, beta_used, kl_in_reward, K),
            **train_metrics(stats, explained_variance(old_values, returns, mask), run.scheduler.get_last_lr()[0]),
            **{f"rollout/{key}": value for key, value in is_stats.items()},
            "time/rollout_s": t_gen,
            "time/score_s": t_update - t0 - t_gen,
            "time/update_s": time.time() - t_update,
            "time/step_s": time.time() - t0,
        }
        done = step + 1

        # 6. the Goodhart guard: held-out reward and KL; keep the best, stop when it turns
        stop_reason = None
        if guard.due(done):
            check = guard.timed(
                lambda: held_out_check(run.policy, run.reference, run.tokenizer, [p.prompt for p in run.held_out], cfg, run.scorer)
            )
            metrics.update({f"held_out/{key}": value for key, value in check.items()})
            stop_reason = guard.update(done, check)
            if cfg.early_stop.gold_peak:
                metrics["held_out/gold_peak_kl"] = guard.peak_kl
        stop_reason = stop_reason or guard.out_of_time(done, metrics["time/step_s"])  # early_stop.max_minutes
        metrics.update(scaler_metrics(run.scaler))
        history.append(metrics)
        run.logger.log(done, metrics)
        if cfg.samples_every and (done % cfg.samples_every == 0 or done == 1) and procs.is_main:  # read what the policy does
            write_samples(samples_path, done, batch_prompts, rollout.texts, scores.tolist())
        if stop_reason:
            console.print(f"ppo: early stop after step {done}: {stop_reason}")
            break
        state = {"kl_controller": kl_ctl.state_dict(), "best": guard.state_dict()}
        if checkpoint_or_interrupt(out, done, cfg, run.trainable, run.optimizer, run.scheduler, state, run.logger, "ppo", run.scaler):
            return None
    run.logger.close()
    return done, stop_reason
