"""The model card: the `README.md` every saved model folder holds, in the Hugging Face format.

YAML front matter the hub reads (base_model, library_name, pipeline_tag, tags, datasets), then what a reader needs:
how the folder loads with plain transformers, the stage that made it, its data, the run's headline metrics and its
whole config. A reward model's card also gives the normalisation tether applies on every load (tether_reward.json,
r = gain * raw + bias) and the lines that apply it. The card is written after the model and summary.json, from the
stage's config and summary; it records the run and feeds no stage (fingerprint.py leaves it out of a folder's content).

    write_model_card(out / "model", cfg, summary, base_model=cfg.model, data=[cfg.data])
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from tether.config import HUB_ID, to_dict
from tether.processes import processes

MODEL_CARD = "README.md"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the embedded default model (`model=default`), named as the base model on the hub."""


HEADLINE: dict[str, tuple[str, ...]] = {
    "sft": ("eval_loss_before", "eval_loss", "final_train_loss", "steps", "train_examples"),
    "reward": ("eval_accuracy", "eval_loss", "eval_mean_margin", "eval_ece", "eval_disagreement", "train_accuracy", "steps", "train_pairs"),
    "ppo": (
        "reward_first_quarter",
        "reward_last_quarter",
        "kl_last_quarter",
        "beta_final",
        "entropy_last_quarter",
        "steps_done",
        "episodes",
    ),
    "grpo": ("reward_first_quarter", "reward_last_quarter", "kl_last_quarter", "steps_done", "samples"),
    "dpo": ("eval_accuracy", "eval_loss", "eval_margin", "final_train_accuracy", "steps", "train_pairs"),
}
"""The summary.json values a card shows under Results, per stage."""

TAGS = {"sft": ["sft"], "reward": ["reward-model", "bradley-terry"], "ppo": ["ppo"], "grpo": ["grpo"], "dpo": ["dpo"]}


def hub_base_model(name: str) -> str | None:
    """The hub id a model was trained from: `name` itself when it is one; the default's id for 'default'; for a local
    folder, the base_model its own card names (a PPO policy trained from an SFT run is based on the SFT run's base)."""
    if name == "default":
        return DEFAULT_HUB_ID
    card = Path(name).expanduser() / MODEL_CARD
    if card.is_file():
        return read_card_metadata(card).get("base_model")
    return name if HUB_ID.fullmatch(name) and not Path(name).expanduser().exists() else None


def read_card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card (between the leading `---` lines); {} when it has none."""
    text = Path(path).read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    return (yaml.safe_load(match.group(1)) or {}) if match else {}


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if not math.isfinite(value) else f"{value:.4g}"


def has_chat_template(folder: str | Path) -> bool:
    """Whether the tokenizer saved in `folder` carries a chat template (chat_template.jinja, or in tokenizer_config.json)."""
    config = Path(folder) / "tokenizer_config.json"
    in_config = config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))
    return (Path(folder) / "chat_template.jinja").is_file() or in_config


def _usage_policy(name: str, chat: bool) -> str:
    render = (
        'messages = [{"role": "user", "content": "Give three tips for staying healthy."}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)'
        if chat  # without a template, tether's own rendering of a prompt (data/templates.py)
        else 'inputs = tokenizer("User: Give three tips for staying healthy.\\n\\nAssistant:", return_tensors="pt")'
    )
    return f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
{render}
output = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=64)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def _usage_reward(name: str, norm: dict[str, Any]) -> str:
    return f"""A scalar head on a causal-LM trunk (`AutoModelForSequenceClassification`, `num_labels=1`), read at the last
token of prompt + response. tether normalises its raw output on every load with the affine map in `tether_reward.json`:

    r = gain * raw + bias,   gain = {_number(norm.get("gain"))}, bias = {_number(norm.get("bias"))}

(fitted on {norm.get("fitted_on")}, {norm.get("n")} samples, so that they score mean 0 and standard deviation 1).
The prompt is rendered with the tokenizer's chat template (ending with the generation prompt), the response follows
it and ends with the EOS token, tokenized separately, as tether scores it (for a tokenizer with a chat template; without
one tether renders `User: ...\\n\\nAssistant:` after the BOS token, as `normalized_reward` below does):

```python
import json
import os

import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = "{name}"  # a local folder or a hub id
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForSequenceClassification.from_pretrained(path).eval()
norm_file = os.path.join(path, "tether_reward.json") if os.path.isdir(path) else hf_hub_download(path, "tether_reward.json")
norm = json.load(open(norm_file))

def reward(prompt: str, response: str) -> float:
    text = tokenizer.apply_chat_template([{{"role": "user", "content": prompt}}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids + [tokenizer.eos_token_id]])
    with torch.no_grad():
        raw = model(input_ids=ids).logits[0, 0].item()
    return norm["gain"] * raw + norm["bias"]
```

With tether installed, `tether.models.reward_model.normalized_reward(path, prompts, responses)` does the same for a
batch (and `tether reward score` for a file)."""


def model_card(cfg, summary: dict[str, Any], base_model: str, data: list[str], name: str = "MODEL") -> str:
    """The card's text for the model a stage saved: `cfg` the stage's config, `summary` its summary.json, `base_model`
    the model it started from as the user named it, `data` the data files or hub ids it read, `name` the folder as the
    usage lines load it (`tether push` puts the hub id in its place)."""
    stage = str(summary.get("stage", "model"))
    is_reward = stage == "reward"
    base_id = hub_base_model(base_model)
    datasets = [d for d in data if HUB_ID.fullmatch(d) and not Path(d).expanduser().exists()]
    meta: dict[str, Any] = {}
    if base_id:
        meta["base_model"] = base_id
    meta["library_name"] = "tether"
    meta["pipeline_tag"] = "text-classification" if is_reward else "text-generation"
    meta["tags"] = ["tether", "rlhf", *TAGS.get(stage, [stage])] + (["ensemble"] if summary.get("ensemble") else [])
    if datasets:
        meta["datasets"] = datasets
    front = yaml.safe_dump(meta, sort_keys=False).strip()

    what = "reward model" if is_reward else "policy"
    title = Path(name).parent.name if Path(name).name == "model" and Path(name).parent.name else Path(name).name
    lines = [f"---\n{front}\n---\n", f"# {title}\n", f"A {what} trained with tether's `{stage}` stage"]
    lines[-1] += f" from `{base_model}`" + (f" ({base_id})" if base_id and base_id != base_model else "") + ".\n"
    lines.append("## Use\n")
    if is_reward and summary.get("ensemble"):
        members = ", ".join(f"`{m}`" for m in summary.get("members", []))
        lines.append(
            f"An ensemble of {summary['ensemble']} reward models trained with seeds {cfg.seed}..{cfg.seed + summary['ensemble'] - 1}"
            f" ({members or 'the member_<i>/model folders of the run'}), listed in `tether_ensemble.json`; tether scores "
            "with their mean minus `std_coef` times their spread (Coste et al. 2023). Each member is a reward model "
            "folder with its own card (normalisation included), loading with `AutoModelForSequenceClassification`.\n"
        )
    elif is_reward:
        lines.append(_usage_reward(name, summary.get("normalization") or {}) + "\n")
    else:
        chat = has_chat_template(name)
        carries = "carries the chat template it was trained with" if chat else "has no chat template: prompts read `User: ...`"
        lines.append(f"The folder loads with plain transformers (the tokenizer {carries}):\n")
        lines.append(_usage_policy(name, chat) + "\n")
    lines.append("## Training data\n")
    lines.extend(f"- `{d}`" for d in data)
    lines.append("")
    rows = [(key, summary[key]) for key in HEADLINE.get(stage, ()) if summary.get(key) is not None]
    if rows:
        lines.append("## Results\n")
        lines.append("From the run's `summary.json` (eval_* on the held-out split).\n")
        lines.append("| metric | value |\n|---|---|")
        lines.extend(f"| {key} | {_number(value)} |" for key, value in rows)
        lines.append("")
    lines.append("## Config\n")
    lines.append(f"The run's settings (`tether {'reward train' if is_reward else stage}` with this config reproduces it):\n")
    lines.append("```yaml\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False).strip() + "\n```\n")
    return "\n".join(lines)


def write_model_card(model_dir: str | Path, cfg, summary: dict[str, Any], base_model: str, data: list[str | None]) -> Path:
    """Write `model_dir`/README.md (the main process writes it; the others return at once). Changes no weight or number."""
    path = Path(model_dir) / MODEL_CARD
    if processes().is_main and Path(model_dir).is_dir():
        clean = json.loads(json.dumps(summary, default=str))
        path.write_text(model_card(cfg, clean, base_model, [d for d in data if d], name=str(model_dir)))
    return path
