"""Reward model training: SFT trunk + scalar head, Bradley-Terry loss.

    loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))      (Stiennon et al. 2020, eq. 1)

r is read at the last real token. After training, a gain and bias are fitted so that
responses sampled from the SFT policy score mean 0 and std 1 (stored beside the model in
`tether_reward.json` and applied on every load).
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from tether.config import RewardConfig, resolve_path
from tether.data.collate import drop_identical_pairs
from tether.data.readers import DataError, ReadReport, read_demonstrations, read_preferences, split
from tether.data.records import PreferencePair, Prompt, prompt_key
from tether.data.templates import encode_prompt, encode_response
from tether.distributed import shard_blocks
from tether.eval.calibration import length_correlation, pairwise_calibration, wilson_interval
from tether.fingerprint import recorded_changes
from tether.losses import bradley_terry_label_smoothed_loss, bradley_terry_loss, bradley_terry_tie_loss, reward_centering_penalty
from tether.models.card import write_model_card
from tether.models.loading import (
    apply_lora,
    autocast,
    count_parameters,
    enable_activation_checkpointing,
    freeze_lower_layers,
    load_tokenizer,
    resolve_model,
    save_model,
)
from tether.models.reward_model import (
    ADAPTER_DIR,
    RewardNormalization,
    batch_rewards,
    can_pack,
    init_reward_model,
    load_reward_model,
    save_ensemble_manifest,
    save_normalization,
    score_texts,
)
from tether.processes import processes
from tether.tracking import MetricsLogger, console, peak_rss_gb, read_summary, write_summary
from tether.training import (
    LossScaler,
    bucket_by_length,
    clip_and_step,
    drop_checkpoint,
    epoch_order,
    group_stream,
    index_stream,
    load_checkpoint,
    make_optimizer,
    release_freed_memory,
    save_checkpoint,
    scaler_metrics,
    start_stage,
)


def pair_stream(pairs: list[PreferencePair], seed: int, n_needed: int, group_by_prompt: bool) -> list[int]:
    """Pair indices for the whole run; with `group_by_prompt`, the pairs of one prompt stay adjacent
    (prompts are shuffled, not pairs), so a batch scores each shared response once."""
    if not group_by_prompt:
        return index_stream(len(pairs), seed, n_needed)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(prompt_key(p.prompt), []).append(i)
    return group_stream(list(groups.values()), seed, n_needed)


def packed_length_key(tokenizer, pairs: list[PreferencePair], prompt_ids: dict, cfg: RewardConfig):
    """Sort key for `bucket_by_length`: (tokens in the pair's packed prompt row, prompt); pairs
    of one prompt share a key, so they stay adjacent when sorted."""
    lengths: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for p in pairs:
        k = prompt_key(p.prompt)
        lengths.setdefault(k, len(prompt_ids[k][0]))
        for r in (p.chosen, p.rejected):
            if (k, r) not in seen:
                seen.add((k, r))
                lengths[k] += len(encode_response(tokenizer, r, cfg.max_response_tokens))
    order = {k: n for n, k in enumerate(lengths)}
    return lambda i: (lengths[prompt_key(pairs[i].prompt)], order[prompt_key(pairs[i].prompt)])


def token_chunks(indices: list[int], length_key, budget: int, packed: bool) -> list[list[int]]:
    """Consecutive chunks of a batch of pair indices whose padded size (rows x longest row, in
    tokens) stays within `budget`; a chunk holds at least one pair, and 0 means no limit.
    The chunks' gradients add up to the whole batch's, so this bounds activation memory
    without changing what is learnt. Packed, a row is a prompt with its responses; else
    each response is a row of its own (the packed length is then an upper bound)."""
    if not budget:
        return [indices]
    chunks: list[list[int]] = [[]]
    groups: set = set()
    longest = 0
    for i in indices:
        length, group = length_key(i)
        rows = len(groups | {group}) if packed else 2 * (len(chunks[-1]) + 1)
        if chunks[-1] and rows * max(longest, length) > budget:
            chunks.append([])
            groups, longest = set(), 0
        chunks[-1].append(i)
        groups.add(group)
        longest = max(longest, length)
    return chunks


def split_by_prompt(pairs: list[PreferencePair], eval_fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out whole prompts: pairs of one prompt share responses, so splitting pairs would leak."""
    train_keys, _ = split(sorted({prompt_key(p.prompt) for p in pairs}), eval_fraction, seed)
    keep = set(train_keys)
    return [p for p in pairs if prompt_key(p.prompt) in keep], [p for p in pairs if prompt_key(p.prompt) not in keep]


def is_tie(pair: PreferencePair) -> bool:
    return bool(pair.meta.get("tie", False))


def unique_responses(batch: list[PreferencePair]) -> tuple[list[Prompt], list[str], list[int], list[int]]:
    """Each distinct (prompt, response) once, and where each pair's chosen / rejected sits in that list."""
    index: dict[tuple[str, str], int] = {}
    prompts, responses = [], []

    def slot(prompt: Prompt, response: str) -> int:
        key = (prompt_key(prompt), response)
        if key not in index:
            index[key] = len(prompts)
            prompts.append(prompt)
            responses.append(response)
        return index[key]

    chosen = [slot(p.prompt, p.chosen) for p in batch]
    rejected = [slot(p.prompt, p.rejected) for p in batch]
    return prompts, responses, chosen, rejected


class CachedScorer:
    """Raw rewards of (prompt, response) pairs, each distinct pair scored once and remembered.

    After training, the normalisation set, the held-out pairs and the training pairs share
    most responses (they are all SFT samples), so each is run through the model only once.
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_prompt_tokens: int,
        max_response_tokens: int,
        precision: str,
        normalization: RewardNormalization | None = None,
        pack: bool = True,
    ):
        self.model, self.tokenizer, self.cache, self.normalization = model, tokenizer, {}, normalization
        self.kw = dict(max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens, precision=precision, pack=pack)

    def raw(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        keys = [(prompt_key(p), r) for p, r in zip(prompts, responses)]
        todo = {k: (p, r) for k, p, r in zip(keys, prompts, responses) if k not in self.cache}
        if todo:
            scores = score_texts(self.model, self.tokenizer, [p for p, _ in todo.values()], [r for _, r in todo.values()], **self.kw)
            self.cache.update(zip(todo.keys(), scores.tolist()))
        return torch.tensor([self.cache[k] for k in keys])

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        """Rewards, normalised when a normalisation is set."""
        r = self.raw(prompts, responses)
        return self.normalization.apply(r) if self.normalization is not None else r

    @classmethod
    def for_members(cls, reward_model, max_prompt_tokens: int, max_response_tokens: int, precision: str) -> list[CachedScorer]:
        """One normalised scorer per member of a loaded RewardModel or RewardEnsemble."""
        return [cls(m.model, m.tokenizer, max_prompt_tokens, max_response_tokens, precision, m.normalization) for m in reward_model.members]


def pair_metrics(scorers: list[CachedScorer], pairs: list[PreferencePair], with_bins: bool = False) -> dict:
    """How well rewards order held-out pairs; with several scorers, of the ensemble mean.

    accuracy (ties count half) with a 95% Wilson interval; ece: expected calibration error of
    sigmoid(r_c - r_r) on the symmetrised pairs, 10 bins (Guo et al. 2017); mean_margin;
    length_corr: Pearson correlation of reward with response length in words over every
    response (the first symptom of a length-hacked RM, Singhal et al. 2023); BT loss.
    Ensembles add disagreement (mean over pairs of the std of the members' margins) and
    vote_disagreement (fraction of pairs the members do not order unanimously).
    """
    if not pairs:
        return {"accuracy": None, "n": 0}
    prompts, responses, i_chosen, i_rejected = unique_responses(pairs)
    members = torch.stack([scorer(prompts, responses) for scorer in scorers])  # (N, U)
    r = members.mean(0)
    r_c, r_r = r[i_chosen], r[i_rejected]
    calibration = pairwise_calibration(r_c.numpy(), r_r.numpy())
    n = len(pairs)
    acc = calibration["accuracy"]
    low, high = wilson_interval(acc * n, n)
    loss, _ = bradley_terry_loss(r_c, r_r)
    out = {
        "accuracy": acc,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "n": n,
        "ece": calibration["ece"],
        "mean_margin": calibration["mean_margin"],
        "length_corr": length_correlation(r.numpy(), [len(x.split()) for x in responses]),
        "loss": loss.item(),
    }
    if len(scorers) > 1:
        margins = members[:, i_chosen] - members[:, i_rejected]  # (N, n)
        votes = (margins > 0).float().mean(0)
        out["disagreement"] = margins.std(0, correction=0).mean().item()
        out["vote_disagreement"] = ((votes > 0) & (votes < 1)).float().mean().item()
        out["members"] = len(scorers)
    if with_bins:
        out["bins"] = calibration["bins"]
    return out


def train_reward_ensemble(cfg: RewardConfig) -> dict:
    """N members with seeds seed..seed+N-1 in member_<i>/ (each resumable on its own), listed in model/."""
    out = start_stage(cfg)
    summaries = []
    for i in range(cfg.ensemble):
        member_dir = out / f"member_{i}"
        member = dataclasses.replace(cfg, ensemble=1, seed=cfg.seed + i, output_dir=str(member_dir))
        done = read_summary(member_dir) if not recorded_changes(member) else None  # trained with other settings: again
        if done is None:
            console.rule(f"reward ensemble: member {i + 1} of {cfg.ensemble}")
            done = train_reward(member)
        summaries.append(done)
    if processes().is_main:
        save_ensemble_manifest(out / "model", [f"../member_{i}/model" for i in range(cfg.ensemble)])
    processes().barrier()
    ensemble = load_reward_model(str(out / "model"))
    skipped: list[DataError] | None = [] if cfg.skip_bad_rows else None
    pairs = (
        read_preferences(resolve_path(cfg.eval_data), skipped=skipped, **cfg.dataset.read_args(held_out=True))
        if cfg.eval_data
        else split_by_prompt(
            read_preferences(resolve_path(cfg.data), limit=cfg.limit, skipped=skipped, **cfg.dataset.read_args()),
            cfg.eval_fraction,
            cfg.seed,
        )[1]
    )
    pairs = [p for p in pairs if not is_tie(p)]
    pairs, _ = drop_identical_pairs(ensemble.members[0].tokenizer, pairs, cfg.max_response_tokens)  # as each member's held-out pairs
    metrics = pair_metrics(CachedScorer.for_members(ensemble, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.precision), pairs)
    summary = {
        "stage": "reward",
        "model": str(out / "model"),
        "ensemble": cfg.ensemble,
        "train_pairs": summaries[0]["train_pairs"],
        "eval_pairs": metrics["n"],
        "eval_accuracy": metrics["accuracy"],
        "eval_accuracy_ci": [metrics["accuracy_ci_low"], metrics["accuracy_ci_high"]],
        "eval_ece": metrics["ece"],
        "eval_mean_margin": metrics["mean_margin"],
        "eval_length_corr": metrics["length_corr"],
        "eval_loss": metrics["loss"],
        "eval_disagreement": metrics["disagreement"],
        "eval_vote_disagreement": metrics["vote_disagreement"],
        "member_eval_accuracy": [m["eval_accuracy"] for m in summaries],
        "steps": sum(m["steps"] for m in summaries),
        "train_accuracy": sum(m["train_accuracy"] for m in summaries) / len(summaries),
        "normalization": {"gain": None, "bias": None, "fitted_on": "per member", "n": summaries[0]["normalization"]["n"]},
        "seconds": sum(m["seconds"] for m in summaries),
    }
    members = [f"../member_{i}/model" for i in range(cfg.ensemble)]
    write_model_card(out / "model", cfg, summary | {"members": members}, base_model=cfg.model, data=[cfg.data, cfg.eval_data])
    write_summary(out, summary)
    return summary


def leave_out_identical_pairs(
    stage: str, tokenizer, train_pairs: list[PreferencePair], eval_pairs: list[PreferencePair], max_response_tokens: int, report: ReadReport
) -> tuple[list[PreferencePair], list[PreferencePair], int]:
    """The training and held-out pairs less those whose chosen and rejected are the same tokens once cut to
    `max_response_tokens` (such a pair trains at loss ln 2 whatever the model), and how many were left out, said in a
    line; none left to train on is a DataError naming max_response_tokens. The reward stage and DPO use it."""
    train_pairs, n_train = drop_identical_pairs(tokenizer, train_pairs, max_response_tokens)
    eval_pairs, n_eval = drop_identical_pairs(tokenizer, eval_pairs, max_response_tokens)
    if n_train or n_eval:
        console.print(
            f"{stage}: left out {n_train + n_eval} pairs whose chosen and rejected are the same after truncation "
            f"to max_response_tokens={max_response_tokens} ({n_train} training, {n_eval} held-out)"
        )
    if not train_pairs:
        raise report.nothing_left(
            f"to train on: the chosen and rejected of all {n_train} training pairs are the same after truncation "
            f"to max_response_tokens={max_response_tokens}; raise max_response_tokens"
        )
    return train_pairs, eval_pairs, n_train + n_eval


def train_reward(cfg: RewardConfig) -> dict:
    if cfg.ensemble > 1:
        return train_reward_ensemble(cfg)
    out = start_stage(cfg)
    t0 = time.time()

    # 1. data: preference pairs, held-out split
    trunk_path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(trunk_path, cfg.chat_template)
    skipped: list[DataError] | None = [] if cfg.skip_bad_rows else None
    report = ReadReport()
    pairs = read_preferences(resolve_path(cfg.data), limit=cfg.limit, skipped=skipped, report=report, **cfg.dataset.read_args())
    console.print(f"reward: {report.kept()}")
    if cfg.eval_data:
        train_pairs, eval_pairs = (
            pairs,
            read_preferences(resolve_path(cfg.eval_data), skipped=skipped, **cfg.dataset.read_args(held_out=True)),
        )
    else:
        train_pairs, eval_pairs = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
        if not train_pairs:
            raise report.nothing_left(
                f"to train on: eval_fraction={cfg.eval_fraction:g} holds out every prompt ({len(eval_pairs)} pairs); "
                "lower eval_fraction or add pairs with other prompts"
            )
    if skipped:
        console.print(f"reward: skipped {len(skipped)} malformed rows (skip_bad_rows=true); first: {skipped[0]}")
    # a tie is a pair whose meta says {"tie": true}; accuracy is only defined on the others
    eval_pairs = [p for p in eval_pairs if not is_tie(p)]
    n_ties = sum(is_tie(p) for p in train_pairs)
    if cfg.ties == "skip":
        train_pairs = [p for p in train_pairs if not is_tie(p)]
        if not train_pairs:
            raise report.nothing_left(f"to train on: all {n_ties} training pairs are ties and ties=skip; set ties=half or add untied pairs")
    if n_ties:
        console.print(f"reward: {n_ties} tied training pairs ({'dropped' if cfg.ties == 'skip' else 'trained towards equal rewards'})")
    train_pairs, eval_pairs, n_identical = leave_out_identical_pairs(
        "reward", tokenizer, train_pairs, eval_pairs, cfg.max_response_tokens, report
    )

    prompt_ids = {prompt_key(p.prompt): encode_prompt(tokenizer, p.prompt, cfg.max_prompt_tokens) for p in train_pairs + eval_pairs}
    cut = sum(prompt_ids[prompt_key(p.prompt)][1] for p in train_pairs + eval_pairs)
    if cut:
        console.print(
            f"reward: {cut} of {len(train_pairs) + len(eval_pairs)} prompts were cut from the left to "
            f"max_prompt_tokens={cfg.max_prompt_tokens} (the response is never cut by this)"
        )

    # 2. model: trunk + fresh head; optionally LoRA or frozen lower layers
    model = init_reward_model(trunk_path, tokenizer.pad_token_id, seed=cfg.seed)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, task_type="SEQ_CLS", modules_to_save=["score"])
    if cfg.freeze_layers:
        freeze_lower_layers(model, cfg.freeze_layers, trunk_path)
    if cfg.parallel.activation_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.parallel.fsdp:  # each block's weights, gradients and Adam moments split between the processes
        shard_blocks(model, cfg.parallel.zero_stage, cfg.parallel.offload_trainable)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    procs = processes()  # data parallel: each process scores every world-th micro-batch of a step
    per_step = cfg.batch_size * cfg.grad_accum * procs.world
    total_steps = cfg.max_steps or max(1, math.ceil(len(train_pairs) * cfg.epochs / per_step))
    optimizer, scheduler = make_optimizer(params, cfg.optim, total_steps)
    scaler = LossScaler(cfg.precision == "fp16")  # fp16: dynamic loss scaling; otherwise it changes nothing
    stream = pair_stream(train_pairs, cfg.seed, total_steps * per_step, cfg.group_by_prompt)
    length_key = packed_length_key(tokenizer, train_pairs, prompt_ids, cfg)
    if cfg.bucket_by_length:
        stream = bucket_by_length(stream, length_key, cfg.batch_size, cfg.seed)
    pack = cfg.pack_prompts and can_pack(model, tokenizer, train_pairs[:2], cfg.max_prompt_tokens, cfg.max_response_tokens)
    if cfg.pack_prompts and not pack:
        console.print("reward: this model's attention does not honour a packed (block-diagonal) mask; scoring each response in its own row")
    start_step = 0
    resumed = load_checkpoint(out, {"model": model}, optimizer, scheduler, scaler)
    if resumed is not None:
        start_step = resumed[0]
        console.print(f"reward: resuming from step {start_step} of {total_steps}")
    logger = MetricsLogger(out, total_steps, "reward", ["train/loss", "train/accuracy"], start_step=start_step, tracker=cfg.tracker)

    # 3. the loop: Bradley-Terry on (chosen, rejected), mean over the pairs of the step
    t_loop = time.time()
    for step in range(start_step, total_steps):
        window = stream[step * per_step : (step + 1) * per_step]
        totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        # micro-batches of batch_size pairs, each cut further when its padded tokens pass the budget
        chunks = [
            c
            for k in range(0, per_step, cfg.batch_size)
            for c in token_chunks(window[k : k + cfg.batch_size], length_key, cfg.max_tokens_per_forward, pack)
        ]
        mine = procs.share(chunks)
        if procs.sharded:  # a sharded block computes only when every process runs it: as many passes in each
            mine = mine + [None] * (int(procs.max(len(mine))) - len(mine))
        for chunk in mine:
            weight = 1.0 if chunk is not None else 0.0  # an extra pass: the first chunk again, adding nothing
            batch = [train_pairs[i] for i in (chunk if chunk is not None else mine[0])]
            prompts, responses, i_chosen, i_rejected = unique_responses(batch)
            with autocast(cfg.precision):  # (N_unique,): each distinct response scored once
                r = batch_rewards(model, tokenizer, prompts, responses, cfg.max_prompt_tokens, cfg.max_response_tokens, pack)
            r_chosen, r_rejected = r[i_chosen], r[i_rejected]
            margin = None
            if any(p.margin is not None for p in batch):
                margin = torch.tensor([p.margin or 0.0 for p in batch], device=r.device)
            if cfg.ties == "half" and any(is_tie(p) for p in batch):
                target = torch.tensor([0.5 if is_tie(p) else 1.0 - cfg.label_smoothing for p in batch], device=r.device)
                loss, m = bradley_terry_tie_loss(r_chosen, r_rejected, target)
            elif cfg.label_smoothing > 0:
                loss, m = bradley_terry_label_smoothed_loss(r_chosen, r_rejected, cfg.label_smoothing, margin)
            else:
                loss, m = bradley_terry_loss(r_chosen, r_rejected, margin)
            if cfg.center_rewards_coefficient:
                loss = loss + cfg.center_rewards_coefficient * reward_centering_penalty(r_chosen, r_rejected)
            scaler.scale(loss * weight * len(batch) / per_step).backward()
            for key in totals:
                totals[key] += m[key] * weight * len(batch) / per_step
        procs.reduce_gradients(params, average=False)  # each loss was weighted by its share of the whole step
        totals = {key: procs.sum(v) for key, v in totals.items()}
        grad_norm = clip_and_step(params, optimizer, scheduler, cfg.optim.max_grad_norm, scaler)
        release_freed_memory()  # batch shapes vary: without this, resident memory creeps up
        done = step + 1
        logger.log(
            done,
            {
                "train/loss": totals["loss"],
                "train/accuracy": totals["accuracy"],
                "train/margin": totals["margin"],
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": grad_norm,
                "sys/peak_rss_gb": peak_rss_gb(),
                **scaler_metrics(scaler),
            },
        )
        if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
            save_checkpoint(out, done, {"model": model}, optimizer, scheduler, scaler=scaler)
    train_seconds = time.time() - t_loop  # the loop only (this session's part of it after a resume)
    procs.check_in_step(params, "reward")
    model.eval()

    # 4. normalise on policy samples (or the pairs' own responses), evaluate, save
    if cfg.normalize_data:
        norm_rows = read_demonstrations(resolve_path(cfg.normalize_data))
        norm_prompts, norm_responses, fitted_on = [d.prompt for d in norm_rows], [d.response for d in norm_rows], cfg.normalize_data
    else:
        norm_prompts = [p.prompt for p in train_pairs for _ in (0, 1)]
        norm_responses = [r for p in train_pairs for r in (p.chosen, p.rejected)]
        fitted_on = "training pairs (chosen and rejected)"
    if len(norm_responses) > cfg.normalize_samples:  # a mean and a std need a few hundred samples, not thousands
        keep = sorted(epoch_order(len(norm_responses), cfg.seed, 0)[: cfg.normalize_samples])
        norm_prompts, norm_responses = [norm_prompts[i] for i in keep], [norm_responses[i] for i in keep]
    scorer = CachedScorer(model, tokenizer, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.precision, pack=pack)
    normalization = RewardNormalization.fit(scorer.raw(norm_prompts, norm_responses), fitted_on)
    scorer.normalization = normalization
    eval_metrics = pair_metrics([scorer], eval_pairs, with_bins=True)
    train_metrics = pair_metrics([scorer], train_pairs[:128])  # enough to see over-fitting next to eval_accuracy
    logger.log(
        total_steps,
        {f"rm/{key}": eval_metrics.get(key) for key in ("accuracy", "loss", "mean_margin", "ece", "length_corr")}
        | {"rm/train_accuracy": train_metrics.get("accuracy")},
    )  # the held-out validation, under rm/ in every tracker
    logger.close()
    save_model(model, tokenizer, out / "model")  # LoRA merged in: a plain HF directory
    if procs.is_main:
        save_normalization(out / "model", normalization)
        if cfg.lora.enabled:  # the adapter and head on their own too, so PPO can hold this RM as an adapter on its base
            model.save_pretrained(out / "model" / ADAPTER_DIR)
    procs.barrier()  # the other processes may read this model next (an ensemble's next member, the next stage)
    trainable, total = count_parameters(model)
    summary = {
        "stage": "reward",
        "model": str(out / "model"),
        "trunk": trunk_path,
        "steps": total_steps,
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "prompts_truncated": cut,
        "skipped_rows": len(skipped or []),
        "pairs_identical_after_truncation": n_identical,
        "data": report.to_dict(),
        "eval_ece": eval_metrics.get("ece"),
        "eval_bins": eval_metrics.get("bins"),
        "eval_length_corr": eval_metrics.get("length_corr"),
        "eval_accuracy": eval_metrics.get("accuracy"),
        "eval_accuracy_ci": [eval_metrics.get("accuracy_ci_low"), eval_metrics.get("accuracy_ci_high")],
        "eval_mean_margin": eval_metrics.get("mean_margin"),
        "eval_loss": eval_metrics.get("loss"),
        "train_accuracy": train_metrics.get("accuracy"),
        "normalization": {"gain": normalization.gain, "bias": normalization.bias, "fitted_on": fitted_on, "n": normalization.n},
        "trainable_params": trainable,
        "total_params": total,
        "packed": pack,
        "bucketed": cfg.bucket_by_length,
        "processes": procs.world,
        "sharding": procs.sharding,
        "train_seconds": train_seconds,
        "train_pairs_per_second": (total_steps - start_step) * per_step / max(train_seconds, 1e-9),
        "peak_rss_gb": peak_rss_gb(),
        "seconds": time.time() - t0,
    }
    write_model_card(out / "model", cfg, summary, base_model=cfg.model, data=[cfg.data, cfg.eval_data, cfg.normalize_data])
    write_summary(out, summary)
    drop_checkpoint(out, cfg)  # the final model and summary are written: the checkpoint has done its job
    return summary
