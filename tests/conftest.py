"""Shared fixtures: a tiny tokenizer and a tiny Llama model built from a config in code.

Nothing is downloaded: the tokenizer is trained in memory on a few sentences, and the
model has two layers of width 32, so every stage runs end to end in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

os.environ.setdefault("TETHER_HOME", str(Path(__file__).resolve().parent / ".tether-home"))

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A ChatML template like SmolLM2's, without the default system message."""

_CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it.",
    "User: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
    "Rewrite the given sentence so that it is shorter and clearer.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,:;'\"()[]{}",
    "system user assistant You are a helpful assistant.",
]


def build_tiny_tokenizer(*, chat_template: str | None = CHATML_TEMPLATE, bos_token: str | None = None) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained in memory, in about 10 ms.

    Special tokens: ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>``
    (eos) and, when ``bos_token`` is given, that token as BOS. Any text
    encodes (byte-level), so no unknown tokens appear.
    """
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + ([bos_token] if bos_token else [])
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=bos_token,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny chat tokenizer with a ChatML template (eos ``<|im_end|>``, pad ``<|endoftext|>``)."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_base_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny tokenizer with no chat template and a BOS token ``<s>``, like a base model's."""
    return build_tiny_tokenizer(chat_template=None, bos_token="<s>")


def build_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Save a 2-layer Llama (hidden 32) and the tiny tokenizer as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory) -> Path:
    """The same architecture and tokenizer as `tiny_model_dir`, other random weights."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("other-tiny-model"), seed=1)


INSTRUCTIONS = [
    "Write a haiku about autumn leaves.",
    "Give three tips for staying healthy.",
    "Explain what a rainbow is.",
    "Name two primary colors.",
    "Describe the taste of a lemon.",
    "Suggest a name for a pet cat.",
    "What is the capital of France?",
    "Summarise the water cycle in one sentence.",
    "List three fruits.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Write a short greeting for a birthday card.",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Small demonstration, prompt and preference files in tether's native JSONL form."""
    root = tmp_path_factory.mktemp("tiny-data")
    demos = [{"prompt": q, "response": f"Here is an answer to: {q.lower()}"} for q in INSTRUCTIONS]
    prefs = [{"prompt": q, "chosen": "A clear, short answer.", "rejected": "no no no no no"} for q in INSTRUCTIONS]
    files = {"demos": demos, "prompts": [{"prompt": q} for q in INSTRUCTIONS], "prefs": prefs}
    out = {}
    for name, rows in files.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = path
    return out


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]
"""Chromium on a closed network, as root, without a GPU: nothing phones home, nothing waits for a sandbox."""


@pytest.fixture
def chromium(request, tmp_path):
    """Headless Chromium driven by Selenium (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them).
    Where Chromium, its driver or selenium is missing the test is skipped, and the reason is printed in the
    warnings summary at the end of the run."""

    def skip(reason: str):
        warnings.warn(f"{request.node.name} was skipped: {reason}", stacklevel=2)
        pytest.skip(reason)

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip("selenium is not installed (it is in the `test` extra: pip install -e '.[test]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            skip(f"{path} is missing (Debian package {package}: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def one_thread():
    """One torch thread for a tiny model's test: at width 32 a second thread only adds synchronisation, and on a busy
    machine two spinning threads per process slow a test several times over. Use: pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
