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
"""

from __future__ import annotations

import json
import math
import time

import torch
from safetensors.torch import save_file

from tether.config import LoraSettings, PPOConfig, resolve_path
from tether.data.collate import collate_sft, encode_demonstration
from tether.data.readers import ReadReport, read_demonstrations, read_prompts
from tether.data.records import prompt_text
from tether.distributed import gathered, processes, shard_blocks
from tether.eval.calibration import length_correlation
from tether.eval.metrics import distinct_n
from tether.feedback.gold import gold_scores
from tether.losses import (AdaptiveKLController, FixedKLController, explained_variance, gae, kl_k1, kl_k2, kl_k3, leave_one_out_advantages,
                           masked_mean, masked_whiten, per_token_rewards, ppo_policy_loss, ppo_value_loss, sft_loss,
                           truncated_importance_weights)
from tether.models.loading import (ModelError, apply_lora, autocast, count_parameters, device, enable_activation_checkpointing,
                                   freeze_lower_layers, load_causal_lm, load_frozen_lm, load_tokenizer, resolve_model, save_model)
from tether.models.reward_model import RewardNormalization, load_reward_model, position_ids_from_mask, trunk_of, unwrap
from tether.models.sharing import shallow_clone, share_with_base, unique_parameter_bytes
from tether.placement import RayPlacement, RemoteModel, placed
from tether.rewards.functions import call_reward_function, load_reward_function
from tether.rewards.sources import load_reward_sources, score_samples
from tether.rollout.sampling import sample_rollout
from tether.rollout.vllm_engine import training_sampler
from tether.rollout.logprobs import policy_forward, record_frozen, reference_logprobs, replays_exactly
from tether.tracking import MetricsLogger, console, peak_rss_gb, write_summary
from tether.training import (LossScaler, scaler_metrics, GoodhartGuard, checkpoint_or_interrupt, clip_and_step, drop_checkpoint, in_chunks, index_stream, load_checkpoint, make_optimizer,
                             release_freed_memory, resumed_history, start_stage)

KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


class RewardModelValue(torch.nn.Module):
    """Value function from a copy of the reward model: its head applied at every response position,
    on the reward model's normalised scale (the scale of the scores it will predict)."""

    def __init__(self, reward_model, normalization: RewardNormalization):
        super().__init__()
        self.model, self.gain, self.bias = reward_model, normalization.gain, normalization.bias

    def forward(self, sequences, attention_mask, prompt_len: int) -> torch.Tensor:
        hidden = trunk_of(self.model)(input_ids=sequences, attention_mask=attention_mask, use_cache=False,
                                      position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        raw = unwrap(self.model).score(hidden[:, prompt_len - 1:-1]).squeeze(-1).float()  # (B, R)
        return raw * self.gain + self.bias


def reward_adapter_value(member, lora: LoraSettings) -> RewardModelValue:
    """A value model that starts as the reward model at the memory cost of an adapter: the
    reward model's own (frozen, shared) tensors under a new LoRA adapter, and a trainable copy of its head."""
    model = apply_lora(shallow_clone(member.model), lora, task_type="SEQ_CLS", modules_to_save=["score"])
    return RewardModelValue(model, member.normalization)


def evaluate_step(policy, value_head, value_model, seqs, attn, P: int, temperature: float, with_entropy: bool = False,
                  frozen=None) -> dict:
    """Policy log-probs (B, R), values (B, R) and optionally entropy, from the trainable models; the policy's pass
    starts above its frozen blocks when given their recorded `frozen` states."""
    out = policy_forward(policy, seqs, attn, P, temperature, value_head=value_head, with_entropy=with_entropy, frozen=frozen)
    if value_model is not None:
        out["values"] = value_model(seqs, attn, P)
    return out


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
        batch = prompts[start:start + settings.batch_size]
        rollout = sample_rollout(policy, tokenizer, batch, settings, seed=cfg.seed * 7919 + b, precision=cfg.precision)
        seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
        mask = rollout.response_mask.float()
        with autocast(cfg.precision):
            logp = rollout.logprobs if rollout.logprobs is not None and cfg.reuse_sampling_pass else \
                policy_forward(policy, seqs, attn, P, settings.temperature)["logp"]
            ref_logp = reference_logprobs(policy, reference, seqs, attn, P, settings.temperature, len(seqs))
        kls.extend(((logp - ref_logp) * mask).sum(-1).tolist())
        scores, keep = score_fn(batch, rollout)
        rewards.extend(s for s, k in zip(scores.tolist(), keep.tolist()) if k)
        golds.extend(gold_scores([prompt_text(p) for p in batch], rollout.texts))
    mean, n = procs.mean_of(rewards) or 0.0, procs.sum(float(len(rewards)))
    # the standard error of the mean reward: how far two readings may differ by the draw alone (early_stop.tolerance)
    variance = max((procs.mean_of([r * r for r in rewards]) or 0.0) - mean * mean, 0.0) * n / max(n - 1, 1.0)
    return {"reward": mean, "reward_se": math.sqrt(variance / max(n, 1.0)), "kl": procs.mean_of(kls) or 0.0,
            "gold": procs.mean_of(golds) or 0.0}


def train_ppo(cfg: PPOConfig) -> dict | None:
    with placed(cfg) as placement:  # placement=ray: the frozen models in Ray actors
        return run_ppo(cfg, placement)


def run_ppo(cfg: PPOConfig, placement: RayPlacement | None) -> dict | None:
    out = start_stage(cfg)
    t_start = time.time()

    # ---- models: policy (+ value), reference, reward model (placement=ray: the frozen ones in Ray actors)
    policy_path = resolve_model(cfg.policy, "policy")
    tokenizer = load_tokenizer(policy_path)
    report = ReadReport()
    prompts = read_prompts(resolve_path(cfg.prompts), limit=cfg.limit, report=report)
    console.print(f"ppo: {report.kept()}")
    rm = None
    if cfg.reward_model:
        rm = placement.model("reward", cfg.reward_model, cfg.precision) if placement else load_reward_model(cfg.reward_model, cfg.offload_frozen)
    reward_fn = load_reward_function(cfg.reward_function) if cfg.reward_function else None
    sources = load_reward_sources(cfg.reward, cfg.precision, cfg.offload_frozen) if cfg.reward else None  # reward sources (rewards/sources.py)
    if rm is not None and rm.vocab() != tokenizer.get_vocab():
        raise ModelError(f"reward model {cfg.reward_model} uses a different tokenizer from the policy {policy_path}; "
                         "train the reward model from the SFT model so both read the same tokens")
    policy = load_causal_lm(policy_path)
    # With LoRA the reference is the policy's own base weights with the adapter disabled;
    # with full fine-tuning it is a frozen second copy. Either way those weights never change,
    # so the reward model's tensors that equal them are held once (its frozen layers).
    reference = None
    if not cfg.lora.enabled:
        reference = placement.model("reference", policy_path, cfg.precision) if placement else load_frozen_lm(policy_path, cfg.offload_frozen)
    # a short text the weight-sharing and frozen-block checks run the models on before training
    probe = tokenizer("Is this a helpful answer? Yes, it is.", return_tensors="pt").input_ids.to(device())
    shared_params = 0
    if rm is not None and cfg.share_weights and placement is None and not cfg.offload_frozen:  # a LoRA-trained RM becomes an adapter on the base (not under a value adapter)
        shared_params = share_with_base(rm, policy if reference is None else reference, probe,
                                        use_adapters=cfg.value_model != "reward_adapter")
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora)  # freezes the base weights, shared ones included
    if cfg.freeze_layers:
        freeze_lower_layers(policy, cfg.freeze_layers, policy_path)
    frozen_blocks = 0  # > 0: the frozen blocks run once per rollout, their output recorded (reuse_frozen_states)
    if cfg.freeze_layers and cfg.reuse_frozen_states and not cfg.fsdp:
        if replays_exactly(policy, probe, cfg.freeze_layers, with_adapter_off=cfg.lora.enabled):
            frozen_blocks = cfg.freeze_layers
        else:
            console.print("ppo: reuse_frozen_states is off: passes started from the recorded lower blocks did not give this model's logits")
    if cfg.fsdp:  # each block's weights, gradients and Adam moments split between the processes
        shard_blocks(policy, cfg.zero_stage, cfg.offload_trainable)
    value_head, value_model = None, None
    if cfg.value_model == "policy_head":
        value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(device())
        torch.nn.init.zeros_(value_head.weight)
        torch.nn.init.zeros_(value_head.bias)
        trainable = {"policy": policy, "value_head": value_head}
    elif cfg.value_model == "reward_adapter":  # the reward model's weights, a second adapter, a copy of its head
        value_model = reward_adapter_value(rm.members[0], cfg.lora)
        trainable = {"policy": policy, "value_model": value_model}
    else:
        member = load_reward_model(cfg.reward_model).members[0]
        value_model = RewardModelValue(member.model.requires_grad_(True), member.normalization).to(device())
        trainable = {"policy": policy, "value_model": value_model}
    if cfg.freeze_layers and value_model is not None:  # a value model on its own trunk: the same saving
        freeze_lower_layers(value_model.model, cfg.freeze_layers, cfg.reward_model)
    if cfg.activation_checkpointing:  # the models that are trained through their blocks
        for model in [policy] + ([value_model.model] if value_model is not None else []):
            enable_activation_checkpointing(model)
    frozen_rms = [m.model for m in rm.members] if rm is not None and placement is None else []
    if any(p.requires_grad for m in frozen_rms for p in m.parameters()):
        raise AssertionError("a reward-model weight is trainable: weight sharing must only join frozen tensors")
    held = [m for m in (policy, reference, value_head, value_model, *frozen_rms) if m is not None and not isinstance(m, RemoteModel)]
    parameter_gb = unique_parameter_bytes(*held) / 1e9  # every weight tensor on this process's device, shared ones once
    offloaded_gb = unique_parameter_bytes(*held, offloaded=True) / 1e9  # offload_frozen: held in CPU memory instead
    console.print(f"ppo: {parameter_gb:.2f} GB of weights for policy, reference, value and reward"
                  + (f" ({shared_params / 1e6:.1f}M reward-model parameters shared with the frozen base)" if shared_params else "")
                  + (f", {offloaded_gb:.2f} GB of frozen weights offloaded to CPU memory" if offloaded_gb else ""))
    params = [p for m in trainable.values() for p in m.parameters() if p.requires_grad]
    procs = processes()  # data parallel: each process samples batch_size episodes a step, gradients summed over all
    n_minibatches = cfg.batch_size // cfg.mini_batch_size
    critic = {id(p) for name, m in trainable.items() if name != "policy" for p in m.parameters()}  # the value head or model
    groups = [{"params": [p for p in params if id(p) not in critic]},
              {"params": [p for p in params if id(p) in critic], "lr": cfg.value_lr or cfg.optim.lr}]
    optimizer, scheduler = make_optimizer([g for g in groups if g["params"]], cfg.optim, cfg.steps * cfg.ppo_epochs * n_minibatches)
    scaler = LossScaler(cfg.precision == "fp16")  # fp16: dynamic loss scaling; otherwise it changes nothing
    kl_ctl = (AdaptiveKLController(cfg.kl.init_beta, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
              else FixedKLController(cfg.kl.init_beta))
    kl_estimator = KL_ESTIMATORS[cfg.kl.estimator]
    per_step = cfg.batch_size * procs.world  # episodes a step over all processes
    K = cfg.samples_per_prompt  # each prompt's responses are K consecutive rows
    prompts_per_step = per_step // K
    stream = index_stream(len(prompts), cfg.seed, cfg.steps * prompts_per_step)
    temperature = cfg.generation.temperature
    ptx_examples = []
    if cfg.ptx_coef > 0:  # PPO-ptx: demonstrations whose SFT loss is mixed into every minibatch
        ptx_examples = [encode_demonstration(tokenizer, d, cfg.generation.max_prompt_tokens, cfg.generation.max_new_tokens)
                        for d in read_demonstrations(resolve_path(cfg.ptx_data))]
        ptx_stream = index_stream(len(ptx_examples), cfg.seed, cfg.steps * cfg.ppo_epochs * n_minibatches * cfg.ptx_batch_size)
    held_out = read_prompts(resolve_path(cfg.early_stop.prompts), limit=cfg.early_stop.limit) if cfg.early_stop.prompts else []
    guard = GoodhartGuard(cfg.early_stop, out, trainable, cfg.steps, started=t_start)

    def score(batch_prompts, rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) scores after penalties and clipping, and (B,) whether each episode counts."""
        keep = torch.ones(len(batch_prompts), dtype=torch.bool, device=rollout.sequences.device)
        if rm is not None:
            with torch.no_grad(), autocast(cfg.precision):
                scores = rm.scores(*rollout.sequences_for_reward(tokenizer.eos_token_id, tokenizer.pad_token_id), std_coef=cfg.reward_std_coef)
            if placement is not None:  # the reward actor's answer
                scores = scores.result().to(keep.device)
        else:  # None from the function drops that episode from the update
            values = (score_samples(sources, batch_prompts, rollout.texts, [{} for _ in batch_prompts])[0] if sources is not None else
                      call_reward_function(reward_fn, [prompt_text(p) for p in batch_prompts], rollout.texts, [{} for _ in batch_prompts]))
            scores = torch.tensor([0.0 if v is None else v for v in values], device=keep.device)
            keep = torch.tensor([v is not None for v in values], device=keep.device)
        if cfg.missing_eos_penalty is not None:
            scores = torch.where(rollout.finished, scores, torch.full_like(scores, cfg.missing_eos_penalty))
        return scores.clamp(-cfg.reward_clip, cfg.reward_clip), keep

    start_step = 0
    resumed = load_checkpoint(out, trainable, optimizer, scheduler, scaler)
    if resumed is not None:
        start_step = resumed[0]
        kl_ctl.load_state_dict(resumed[1]["kl_controller"])
        guard.best = resumed[1].get("best", guard.best)
        console.print(f"ppo: resuming from step {start_step} of {cfg.steps}")
    if held_out and start_step == 0:  # the starting policy is the first "best": RL must beat it
        check = guard.timed(lambda: held_out_check(policy, reference, tokenizer, [p.prompt for p in held_out], cfg, score))
        guard.start(check)
        console.print(f"ppo: held-out reward at the start {check['reward']:.3f} on {len(held_out)} prompts")
    n_trainable, n_total = count_parameters(policy)
    logger = MetricsLogger(out, cfg.steps, "ppo", ["rollout/reward", "rollout/kl", "rollout/beta"], start_step=start_step, tracker=cfg.tracker)
    history = resumed_history(logger, out, start_step, procs.is_main)  # steps before a resume
    samples_path = out / "samples.jsonl"

    sampler = training_sampler(cfg, policy_path, policy, procs.world)  # engine=vllm: vLLM samples, synced after every update

    done, stop_reason = start_step, None
    set_train_mode(trainable, False)
    for step in range(start_step, cfg.steps):
        t0 = time.time()
        step_prompts = procs.share(stream[step * prompts_per_step:(step + 1) * prompts_per_step])
        batch_prompts = [prompts[i].prompt for i in step_prompts for _ in range(K)]

        # 1. rollout; the sampler keeps each token's log pi_old, the policy-head value and the entropy
        seed = (cfg.seed * 1000003 + step) * procs.world + procs.rank
        if sampler is not None:  # engine=vllm: vLLM's log-probs, compared with the trainer's below
            rollout = sampler.sample(tokenizer, batch_prompts, seed)
        else:
            with gathered(policy):  # sharded (fsdp): whole for the rollout, whose length differs between processes
                rollout = sample_rollout(policy, tokenizer, batch_prompts, cfg.generation, seed=seed, precision=cfg.precision,
                                         value_head=value_head if cfg.reuse_sampling_pass else None, with_entropy=cfg.reuse_sampling_pass)
        seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
        mask = rollout.response_mask.float()  # (B, R)
        t_gen = time.time() - t0

        # 2. score with the frozen models and the pre-update policy; with placement=ray the reference's actor
        #    works while this process runs the value model and the reward actor scores
        pending_ref = reference.logprobs(seqs, attn, P, temperature, cfg.mini_batch_size) if isinstance(reference, RemoteModel) else None
        with torch.no_grad(), autocast(cfg.precision):
            # in minibatch-sized chunks: without gradients, a minibatch's logits weigh about what a
            # micro-batch's kept activations do, and fewer, larger passes are faster
            frozen = record_frozen(policy, seqs, attn, frozen_blocks, cfg.mini_batch_size) if frozen_blocks else None
            if cfg.reuse_sampling_pass and rollout.logprobs is not None and sampler is None:  # no second pass of the policy
                old = {"logp": rollout.logprobs, "values": rollout.values, "entropy": rollout.entropy}
                if value_model is not None:
                    old["values"] = in_chunks(lambda rows: {"values": value_model(seqs[rows], attn[rows], P)},
                                              cfg.batch_size, cfg.mini_batch_size)["values"]
            else:
                old = in_chunks(lambda rows: evaluate_step(policy, value_head, value_model, seqs[rows], attn[rows], P, temperature,
                                                           with_entropy=True, frozen=None if frozen is None else frozen[rows]),
                                cfg.batch_size, cfg.mini_batch_size)
            if pending_ref is None:
                ref_logp = reference_logprobs(policy, reference, seqs, attn, P, temperature, cfg.mini_batch_size, frozen=frozen)
        scores, keep = score(batch_prompts, rollout)  # (B,), (B,)
        if pending_ref is not None:
            ref_logp = pending_ref.result().to(seqs.device)
        mask = mask * keep.to(mask.dtype).unsqueeze(-1)
        old_logp, old_values = old["logp"], old["values"]
        # engine=vllm: each token's surrogate term weighed by min(pi_old / pi_vllm, cap) (truncated importance sampling)
        is_weights, is_stats = (truncated_importance_weights(old_logp, rollout.logprobs, mask, cfg.vllm.is_cap) if sampler is not None
                                else (None, {}))
        # the score RL sees: with prompt_baseline, minus the mean of the prompt's other responses (RLOO's baseline)
        rl_scores = (leave_one_out_advantages(scores.view(-1, K), keep.view(-1, K)).view(-1) if cfg.prompt_baseline else scores)

        # 3. per-token rewards (KL penalty + score at the last token), GAE;
        #    with kl.penalty=loss the KL leaves the reward and enters the loss below
        kl_in_reward = cfg.kl.penalty == "reward"
        rewards, kl = per_token_rewards(rl_scores, old_logp, ref_logp, mask, kl_ctl.beta if kl_in_reward else 0.0, kl_estimator)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        t_update = time.time()

        # 4. PPO update: several epochs over minibatches of this rollout; a minibatch runs as
        #    micro-batches, each loss weighted by its share of the minibatch's tokens (over every
        #    process) so the summed gradient is the minibatch's token mean
        set_train_mode(trainable, True)
        stats: dict[str, float] = {}
        n_updates = cfg.ppo_epochs * n_minibatches
        for epoch in range(cfg.ppo_epochs):
            perm = torch.randperm(cfg.batch_size)
            for k in range(n_minibatches):
                mb = perm[k * cfg.mini_batch_size:(k + 1) * cfg.mini_batch_size]
                mb_tokens = procs.sum(mask[mb].sum()).clamp(min=1.0)
                for micro_index, micro in enumerate(mb.split(cfg.micro_batch_size)):
                    share = (mask[micro].sum() / mb_tokens).item()
                    with autocast(cfg.precision):
                        new = evaluate_step(policy, value_head, value_model, seqs[micro], attn[micro], P, temperature,
                                            with_entropy=cfg.ent_coef > 0, frozen=None if frozen is None else frozen[micro])
                    pg_loss, pg_stats = ppo_policy_loss(new["logp"], old_logp[micro], advantages[micro], mask[micro], cfg.clip_eps,
                                                        weights=None if is_weights is None else is_weights[micro])
                    vf_loss, vf_stats = ppo_value_loss(new["values"], old_values[micro], returns[micro], mask[micro], cfg.value_clip_eps)
                    loss, extra = pg_loss + cfg.vf_coef * vf_loss, {}
                    if not kl_in_reward:  # beta * KL(pi || pi_ref) on the current policy (k3 is the usual choice here)
                        kl_loss = masked_mean(kl_estimator(new["logp"], ref_logp[micro]), mask[micro])
                        loss, extra["kl_loss"] = loss + kl_ctl.beta * kl_loss, kl_loss.item()
                    if cfg.ent_coef > 0:  # entropy bonus: keeps the policy from collapsing onto a few answers
                        entropy = masked_mean(new["entropy"], mask[micro])
                        loss, extra["entropy_bonus"] = loss - cfg.ent_coef * entropy, entropy.item()
                    loss = loss * share
                    if ptx_examples and micro_index == 0:  # PPO-ptx (Ouyang et al. 2022, eq. 2): keep the demonstrations' likelihood
                        at = ((step * cfg.ppo_epochs + epoch) * n_minibatches + k) * cfg.ptx_batch_size
                        ptx = collate_sft([ptx_examples[i] for i in ptx_stream[at:at + cfg.ptx_batch_size]], tokenizer.pad_token_id)
                        with autocast(cfg.precision):
                            logits = policy(input_ids=ptx["input_ids"].to(device()), attention_mask=ptx["attention_mask"].to(device())).logits
                        ptx_loss, _ = sft_loss(logits.float(), ptx["labels"].to(device()))
                        loss = loss + cfg.ptx_coef * ptx_loss / procs.world  # once per minibatch, its own mean
                        stats["ptx_loss"] = stats.get("ptx_loss", 0.0) + ptx_loss.item() / n_updates
                    scaler.scale(loss).backward()
                    for key, v in {**pg_stats, **vf_stats, **extra}.items():  # token-weighted, as the loss
                        stats[key] = stats.get(key, 0.0) + v * share / n_updates
                    stats["ratio_peak"] = max(stats.get("ratio_peak", 0.0), pg_stats["ratio_max"])
                procs.reduce_gradients(params, average=False)
                grad_norm = clip_and_step(params, optimizer, scheduler, cfg.optim.max_grad_norm, scaler)
                stats["grad_norm"] = stats.get("grad_norm", 0.0) + grad_norm / n_updates

        set_train_mode(trainable, False)  # eval mode for the held-out check and the next rollout (KV cache on)
        release_freed_memory()  # rollout shapes vary: without this, resident memory creeps up
        if sampler is not None:  # the next rollout samples the updated policy
            sampler.sync(policy)

        # 5. adapt beta towards the target KL (nats per response), the mean over every process's episodes
        kl_per_response = (kl * mask).sum(-1)  # (B,)
        mean_kl = procs.mean(kl_per_response.mean().item())
        beta_used = kl_ctl.beta
        kl_ctl.update(mean_kl, per_step)
        stats = procs.reduce_stats(stats)

        metrics = {
            "rollout/reward": procs.mean(scores.mean().item()), "rollout/reward_std": scores.std().item() if len(scores) > 1 else 0.0,
            "rollout/kl": mean_kl, "rollout/beta": beta_used,
            "rollout/non_score_reward": (-beta_used * kl_per_response).mean().item() if kl_in_reward else 0.0,  # KL part of the reward
            "rollout/entropy": procs.mean(masked_mean(old["entropy"], mask).item()), "rollout/length": procs.mean(mask.sum(-1).mean().item()),
            "rollout/finished": procs.mean(rollout.finished.float().mean().item()),
            "rollout/length_p95": torch.quantile(mask.sum(-1), 0.95).item(),
            "rollout/distinct1": distinct_n(rollout.texts, 1), "rollout/distinct2": distinct_n(rollout.texts, 2),
            "rollout/reward_length_corr": length_correlation(scores.cpu().numpy(), mask.sum(-1).cpu().numpy()),
            **({"rollout/reward_std_within_prompt": procs.mean(scores.view(-1, K).std(1).mean().item())} if K > 1 else {}),
            "train/ratio_max": stats["ratio_peak"],
            "train/policy_loss": stats["policy_loss"], "train/value_loss": stats["value_loss"],
            "train/clipfrac": stats["clipfrac"], "train/approx_kl": stats["approx_kl"], "train/vf_clipfrac": stats["vf_clipfrac"],
            "train/explained_variance": explained_variance(old_values, returns, mask),
            "train/grad_norm": stats["grad_norm"], "train/lr": scheduler.get_last_lr()[0],
            "time/rollout_s": t_gen, "time/score_s": t_update - t0 - t_gen, "time/update_s": time.time() - t_update,
            "time/step_s": time.time() - t0,
            **{f"train/{key}": stats[key] for key in ("kl_loss", "entropy_bonus", "ptx_loss") if key in stats},
            **{f"rollout/{key}": value for key, value in is_stats.items()},
        }
        done = step + 1

        # 6. the Goodhart guard: held-out reward and KL; keep the best, stop when it turns
        stop_reason = None
        if guard.due(done):
            check = guard.timed(lambda: held_out_check(policy, reference, tokenizer, [p.prompt for p in held_out], cfg, score))
            metrics.update({f"held_out/{key}": value for key, value in check.items()})
            stop_reason = guard.update(done, check)
            if cfg.early_stop.gold_peak:
                metrics["held_out/gold_peak_kl"] = guard.peak_kl
        stop_reason = stop_reason or guard.out_of_time(done, metrics["time/step_s"])  # early_stop.max_minutes
        metrics.update(scaler_metrics(scaler))
        history.append(metrics)
        logger.log(done, metrics)
        if cfg.samples_every and (done % cfg.samples_every == 0 or done == 1) and procs.is_main:  # read what the policy does
            with samples_path.open("a") as f:
                for prompt, text, r in zip(batch_prompts, rollout.texts, scores.tolist()):
                    f.write(json.dumps({"step": done, "prompt": prompt, "response": text, "reward": r}) + "\n")
        if stop_reason:
            console.print(f"ppo: early stop after step {done}: {stop_reason}")
            break
        if checkpoint_or_interrupt(out, done, cfg, trainable, optimizer, scheduler, {"kl_controller": kl_ctl.state_dict(), "best": guard.best}, logger, "ppo", scaler):
            return None
    logger.close()
    guard.roll_back(done, "ppo")  # to the policy that did best on held-out prompts

    # ---- save the policy (LoRA merged: a plain HF directory) and the value function
    procs.check_in_step(params, "ppo")
    save_model(policy, tokenizer, out / "model")
    if value_head is not None and procs.is_main:
        save_file({k: v.detach().cpu() for k, v in value_head.state_dict().items()}, str(out / "value_head.safetensors"))
    quarter = max(1, len(history) // 4)
    head, tail = history[:quarter], history[-quarter:]
    mean = lambda key, rows=tail: sum(h[key] for h in rows) / len(rows) if rows else None  # noqa: E731
    summary = {
        "stage": "ppo", "model": str(out / "model"), "policy_init": policy_path, "reward_model": cfg.reward_model,
        "steps": cfg.steps, "episodes": cfg.steps * per_step, "data": report.to_dict(), "processes": procs.world, "sharded": procs.sharded, "sharding": procs.sharding,
        "reward_first_quarter": mean("rollout/reward", head), "reward_last_quarter": mean("rollout/reward"),
        "kl_last_quarter": mean("rollout/kl"), "kl_target": cfg.kl.target if cfg.kl.adaptive else None,
        "beta_final": kl_ctl.beta, "entropy_last_quarter": mean("rollout/entropy"),
        "steps_done": done, "stopped_early": stop_reason,
        "held_out": guard.summary(len(held_out)),
        "trainable_params": n_trainable, "total_params": n_total, "reward_model_shared_params": shared_params,
        "frozen_blocks_recorded": frozen_blocks,  # reuse_frozen_states: blocks run once per rollout, not in every pass
        "parameter_gb": parameter_gb, "offloaded_gb": offloaded_gb,
        "peak_rss_gb": peak_rss_gb(), "seconds": time.time() - t_start,
    }
    write_summary(out, summary)
    drop_checkpoint(out, cfg)  # the final model and summary are written: the checkpoint has done its job
    return summary
