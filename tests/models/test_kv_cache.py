"""tether's own forward passes use transformers' current key/value cache API: no deprecation from our calls.

transformers 5.24 renamed `past_key_values` to `cache` (argument and output); the old name still works until
5.40, with a FutureWarning for the argument and a logged warning (`logger.warning_once`) for the output field.
Here both become errors while the lean sampler and the judge's shared head run on the tiny model.
"""

import contextlib
import logging
import warnings

import pytest
import torch
import transformers

from tether.config import GenerationSettings
from tether.feedback.judge import judge_pairs
from tether.models.loading import kv_cache_of, load_causal_lm, load_tokenizer, with_kv_cache
from tether.rollout.sampling import sample_rollout

NEW_API = "cache" in transformers.modeling_outputs.CausalLMOutputWithPast.__dataclass_fields__


@contextlib.contextmanager
def no_deprecations():
    """FutureWarning and DeprecationWarning raised inside become errors, and so does a deprecation transformers
    logs instead of warning (its `warning_once` cache is cleared first, so a message seen before is logged again)."""
    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append
    hf_logger = logging.getLogger("transformers")
    once = getattr(logging.Logger, "warning_once", None)
    if hasattr(once, "cache_clear"):
        once.cache_clear()
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            yield
    finally:
        hf_logger.removeHandler(handler)
    messages = [r.getMessage() for r in logged if "deprecat" in r.getMessage().lower()]
    assert not messages, messages


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def test_the_adapter_uses_this_transformers_name(lm):
    model, _ = lm
    ids = torch.tensor([[5, 6, 7]])
    with no_deprecations():
        out = model(input_ids=ids, use_cache=True)
        cache = kv_cache_of(out)
        assert cache is not None and cache.get_seq_length() == 3
        step = model(input_ids=torch.tensor([[8]]), use_cache=True, **with_kv_cache(cache))
    assert list(with_kv_cache(None)) == (["cache"] if NEW_API else ["past_key_values"])
    assert kv_cache_of(step).get_seq_length() == 4
    with torch.no_grad():  # the cached step is the full pass's last position
        full = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], full, atol=1e-5, rtol=1e-5)


def test_the_sampler_calls_no_deprecated_api(lm):
    model, tok = lm
    prompts = ["Tell me a story.", "What is 2+2?", "Tell me a story."]  # a repeated prompt: its prefill cache is copied
    with no_deprecations():
        r = sample_rollout(model, tok, prompts, GenerationSettings(max_new_tokens=6, temperature=0.8), seed=1, precision="fp32")
    assert r.response_ids.shape[0] == 3 and r.logprobs is not None


def test_the_judges_shared_head_calls_no_deprecated_api(lm):
    model, tok = lm
    with no_deprecations():
        shared = judge_pairs(model, tok, ["Q?", "Q2?"], ["yes", "no"], ["no", "yes"], ["Be helpful."], precision="fp32", share_head=True)
    whole = judge_pairs(model, tok, ["Q?", "Q2?"], ["yes", "no"], ["no", "yes"], ["Be helpful."], precision="fp32", share_head=False)
    for a, b in zip(shared, whole):
        assert a.p_first == pytest.approx(b.p_first, abs=1e-5)
