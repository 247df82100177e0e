"""The reward model: a causal-LM trunk plus a scalar head read at the last real token.

Saved as an ordinary Hugging Face `AutoModelForSequenceClassification` directory
(`num_labels=1`) so other tools can load it, plus `tether_reward.json` holding the
normalisation (gain, bias) that tether applies on every load:  r = gain * raw + bias.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tether.config import did_you_mean
from tether.data.collate import pack_shared_prompts, pad_right
from tether.data.records import PreferencePair, Prompt, prompt_key
from tether.data.templates import encode_prompt, encode_response
from tether.models.loading import (
    ModelError,
    autocast,
    device,
    disable_dropout,
    from_hub_cache,
    load_tokenizer,
    model_device,
    offload_to_cpu,
    position_ids_from_mask,
    trunk_of,
    unwrap,
)

NORMALIZATION_FILE = "tether_reward.json"
ENSEMBLE_FILE = "tether_ensemble.json"
ADAPTER_DIR = "adapter"
"""A LoRA-trained reward model also keeps its adapter and head here (peft format), unmerged."""


@dataclass
class RewardNormalization:
    """Affine map applied to raw head outputs so that reference samples score mean 0, std 1."""

    gain: float = 1.0
    bias: float = 0.0
    fitted_on: str = "none"
    n: int = 0

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.gain + self.bias

    @classmethod
    def fit(cls, raw: torch.Tensor, fitted_on: str) -> RewardNormalization:
        mean, std = raw.float().mean().item(), raw.float().std().item() if raw.numel() > 1 else 1.0
        gain = 1.0 / std if std > 1e-6 else 1.0
        return cls(gain=gain, bias=-mean * gain, fitted_on=fitted_on, n=int(raw.numel()))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) column of the last real (mask == 1) token of each row; works for left and right padding."""
    T = attention_mask.shape[-1]
    cols = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return (cols * attention_mask.long()).argmax(-1)


def init_reward_model(trunk_path: str, pad_token_id: int, seed: int = 0):
    """SFT trunk + a fresh scalar head initialised N(0, 1/sqrt(d+1)) (Stiennon et al. 2020).

    Given a reward model's directory instead (one `tether reward train` wrote), its trunk and
    head are kept: training continues from it (iterative RLHF, `iterate.reward_from=previous`).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    continued = (Path(trunk_path) / NORMALIZATION_FILE).exists()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "score.weight newly initialised" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(trunk_path, num_labels=1, dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_token_id
    if not continued:
        head = unwrap(model).score
        d = head.weight.shape[1]
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) / math.sqrt(d + 1))
            if head.bias is not None:
                head.bias.zero_()
    disable_dropout(model)
    return model.to(device())


def raw_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) head output at the last real token of each row, in fp32."""
    hidden = trunk_of(model)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).last_hidden_state  # (B, T, d)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    h_last = hidden[rows, last_token_index(attention_mask)]  # (B, d)
    return unwrap(model).score(h_last).squeeze(-1).float()


def shared_prompt_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(R, 1, T, T) boolean attention mask for rows packed by `pack_shared_prompts`.

    Token i sees token j <= i when j is on the prompt (segment 0) or on i's own response;
    never another response, never padding. A padding query sees itself only, so no row of
    the mask is empty (an empty row makes SDPA return NaN).
    """
    T = segment_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    mask = causal & (query >= 0) & (key >= 0) & ((key == 0) | (key == query))
    mask |= torch.eye(T, dtype=torch.bool, device=segment_ids.device)
    return mask[:, None]


def packed_rewards(model, packed) -> torch.Tensor:
    """(N,) head outputs at each packed response's last token, in fp32 (same values as `raw_rewards`
    on separate rows, with each shared prompt computed once)."""
    dev = model_device(model)
    hidden = trunk_of(model)(
        input_ids=packed["input_ids"].to(dev),
        attention_mask=shared_prompt_mask(packed["segment_ids"].to(dev)),
        position_ids=packed["position_ids"].to(dev),
    ).last_hidden_state  # (R, T, d)
    ends = packed["ends"].to(dev)
    return unwrap(model).score(hidden[ends[:, 0], ends[:, 1]]).squeeze(-1).float()


class RewardModel:
    """A loaded, frozen reward model: `scores(input_ids, attention_mask)` gives normalised rewards."""

    def __init__(self, model, tokenizer, normalization: RewardNormalization, path: str):
        self.model, self.tokenizer, self.normalization, self.path = model, tokenizer, normalization, path

    @classmethod
    def load(cls, path: str, offload: bool = False) -> RewardModel:
        """`offload`: the weights stay in CPU memory, each layer's brought to the accelerator while it computes."""
        from transformers import AutoModelForSequenceClassification

        norm_file = Path(path) / NORMALIZATION_FILE
        if Path(path).is_file():
            raise ModelError(f"reward model '{path}' is a file; expected a folder written by `tether reward train` (config.json + weights)")
        if not Path(path).exists():
            raise ModelError(
                f"reward model '{path}': no such directory{did_you_mean(path)}; expected a folder written by `tether reward train`"
            )
        if not (Path(path) / "config.json").exists():
            raise ModelError(f"reward model '{path}': no config.json (expected a folder written by `tether reward train`)")
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        if model.config.num_labels != 1:
            raise ModelError(f"reward model '{path}': num_labels is {model.config.num_labels}, expected 1")
        disable_dropout(model)
        model.eval().requires_grad_(False)
        norm = RewardNormalization(**json.loads(norm_file.read_text())) if norm_file.exists() else RewardNormalization()
        return cls(offload_to_cpu(model) if offload else model.to(device()), load_tokenizer(path), norm, path)

    @property
    def members(self) -> list[RewardModel]:
        return [self]

    @torch.no_grad()
    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(1, B) normalised rewards (the ensemble interface with one member)."""
        return self.normalization.apply(raw_rewards(self.model, input_ids, attention_mask)).unsqueeze(0)

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, std_coef: float = 0.0) -> torch.Tensor:
        return conservative_reward(self.member_scores(input_ids, attention_mask), std_coef)

    def vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()


class RewardEnsemble:
    """Several reward models trained with different seeds; `tether_ensemble.json` lists them.

    `scores` gives mean - k * std over members: the conservative reward of Coste et al.
    2023 ("Reward Model Ensembles Help Mitigate Overoptimization"); k = 0 is the mean.
    """

    def __init__(self, members: list[RewardModel], path: str):
        self.members, self.path = members, path
        self.tokenizer = members[0].tokenizer

    @torch.no_grad()
    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, B) normalised rewards, one row per member."""
        return torch.cat([m.member_scores(input_ids, attention_mask) for m in self.members])

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, std_coef: float = 0.0) -> torch.Tensor:
        return conservative_reward(self.member_scores(input_ids, attention_mask), std_coef)

    def vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()


def conservative_reward(member_scores: torch.Tensor, std_coef: float) -> torch.Tensor:
    """(N, B) member rewards -> (B,) mean - std_coef * std over members (population std; 0 for one member)."""
    return member_scores.mean(0) - std_coef * member_scores.std(0, correction=0)


def load_reward_model(path: str, offload: bool = False) -> RewardModel | RewardEnsemble:
    """A reward model folder (or a hub id `org/name` in the local Hugging Face cache), or an ensemble folder holding
    tether_ensemble.json; `offload`: weights held in CPU memory."""
    path = from_hub_cache(path, "reward model")
    manifest = Path(path) / ENSEMBLE_FILE
    if manifest.exists():
        members = json.loads(manifest.read_text())["members"]
        return RewardEnsemble([RewardModel.load(str((Path(path) / m).resolve()), offload) for m in members], path)
    return RewardModel.load(path, offload)


def save_ensemble_manifest(path: str | Path, member_dirs: list[str]) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / ENSEMBLE_FILE).write_text(json.dumps({"members": member_dirs}, indent=2) + "\n")


def save_normalization(path: str | Path, norm: RewardNormalization) -> None:
    (Path(path) / NORMALIZATION_FILE).write_text(json.dumps(asdict(norm), indent=2) + "\n")


# ---- scoring (prompt, response) texts: encoded with the reward model's own tokenizer


def encode_texts(tokenizer, prompts: list[Prompt], responses: list[str], max_prompt_tokens: int, max_response_tokens: int):
    """Right-padded (input_ids, attention_mask) of prompt + response (+ EOS), on the model's device."""
    seqs = [
        encode_prompt(tokenizer, p, max_prompt_tokens)[0] + encode_response(tokenizer, r, max_response_tokens)
        for p, r in zip(prompts, responses)
    ]
    ids, mask = pad_right(seqs, tokenizer.pad_token_id)
    return ids.to(device()), mask.to(device())


def encode_packed(tokenizer, prompts: list[Prompt], responses: list[str], max_prompt_tokens: int, max_response_tokens: int):
    """Responses packed one row per distinct prompt (`pack_shared_prompts`), and for each input
    the index of its reward in the packed output, so `packed_rewards(...)[order]` is in input order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(prompt_key(p), []).append(i)
    rows, order, slot = [], [0] * len(prompts), 0
    for members in groups.values():
        rows.append(
            (
                encode_prompt(tokenizer, prompts[members[0]], max_prompt_tokens)[0],
                [encode_response(tokenizer, responses[i], max_response_tokens) for i in members],
            )
        )
        for i in members:  # packed output lists responses row by row
            order[i], slot = slot, slot + 1
    return pack_shared_prompts(rows, tokenizer.pad_token_id), torch.tensor(order)


def batch_rewards(
    model, tokenizer, prompts: list[Prompt], responses: list[str], max_prompt_tokens: int, max_response_tokens: int, pack: bool = True
) -> torch.Tensor:
    """(N,) raw rewards of (prompt, response) pairs in one forward. With `pack`, responses to the
    same prompt share one row and the prompt is computed once (same values, less compute)."""
    if pack:
        packed, order = encode_packed(tokenizer, prompts, responses, max_prompt_tokens, max_response_tokens)
        return packed_rewards(model, packed)[order.to(device())]
    ids, mask = encode_texts(tokenizer, prompts, responses, max_prompt_tokens, max_response_tokens)
    return raw_rewards(model, ids, mask)


def can_pack(model, tokenizer, sample: list[PreferencePair], max_prompt_tokens: int, max_response_tokens: int) -> bool:
    """Whether packed scoring gives this model's separate-row rewards (it needs an attention
    implementation that honours a custom 4D mask); checked once, in fp32, on a few pairs."""
    if getattr(unwrap(model).config, "_attn_implementation", "sdpa") not in ("sdpa", "eager") or not sample:
        return False
    prompts = [p.prompt for p in sample for _ in (0, 1)]
    responses = [r for p in sample for r in (p.chosen, p.rejected)]
    with torch.no_grad():
        packed = batch_rewards(model, tokenizer, prompts, responses, max_prompt_tokens, max_response_tokens, pack=True)
        separate = batch_rewards(model, tokenizer, prompts, responses, max_prompt_tokens, max_response_tokens, pack=False)
    return bool(torch.allclose(packed, separate, atol=1e-3, rtol=1e-3))


@torch.no_grad()
def score_texts(
    model,
    tokenizer,
    prompts: list[Prompt],
    responses: list[str],
    max_prompt_tokens: int = 192,
    max_response_tokens: int = 128,
    batch_size: int = 16,
    precision: str = "bf16",
    pack: bool = True,
) -> torch.Tensor:
    """(N,) raw head outputs for (prompt, response) pairs, scored in batches of about `batch_size`
    responses; responses to one prompt are batched together, and batches hold similar lengths."""
    if not prompts:
        return torch.zeros(0)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(prompt_key(p), []).append(i)
    # sorting by length keeps padding low; the scores go back to input order at the end
    members = sorted(groups.values(), key=lambda g: len(prompt_key(prompts[g[0]])) + sum(len(responses[i]) for i in g))
    scores = torch.zeros(len(prompts))
    batch: list[int] = []
    for k, group in enumerate(members):
        batch.extend(group)
        if len(batch) >= batch_size or k == len(members) - 1:
            with autocast(precision):
                r = batch_rewards(
                    model,
                    tokenizer,
                    [prompts[i] for i in batch],
                    [responses[i] for i in batch],
                    max_prompt_tokens,
                    max_response_tokens,
                    pack,
                )
            scores[batch] = r.cpu()
            batch = []
    return scores


@torch.no_grad()
def normalized_reward(
    model_dir: str,
    prompts: list[Prompt],
    responses: list[str],
    max_prompt_tokens: int = 192,
    max_response_tokens: int = 128,
) -> torch.Tensor:
    """(N,) normalised rewards of (prompt, response) pairs from a reward model folder, with plain transformers: the
    folder loaded as `AutoModelForSequenceClassification`, each pair encoded as tether encodes it (the prompt through
    the chat template, then the response and EOS, tokenized separately), the head read at the last token
    (`logits[:, 0]`, raw), and the folder's tether_reward.json applied: r = gain * raw + bias. The model card's
    snippet is this function for one pair; `RewardModel.load(model_dir).scores` gives the same numbers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    norm_file = Path(model_dir) / NORMALIZATION_FILE
    norm = RewardNormalization(**json.loads(norm_file.read_text())) if norm_file.exists() else RewardNormalization()
    raw = []
    for prompt, response in zip(prompts, responses):  # one row each: no padding for the head's last-token search to skip
        ids = encode_prompt(tokenizer, prompt, max_prompt_tokens)[0] + encode_response(tokenizer, response, max_response_tokens)
        raw.append(model(input_ids=torch.tensor([ids])).logits[0, 0].float())
    return norm.apply(torch.stack(raw)) if raw else torch.zeros(0)
