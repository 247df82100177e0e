"""Prompt rendering and encoding: chat templates, fallback, truncation, EOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.data import as_messages, encode_prompt, encode_response, render_prompt

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
]


def test_as_messages() -> None:
    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    copy = as_messages(CHAT)
    assert copy == CHAT and copy is not CHAT and copy[0] is not CHAT[0]
    with pytest.raises(ValueError, match=r"prompt\[1\]\.role"):
        as_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_render_with_chat_template(tiny_tokenizer) -> None:
    assert render_prompt(tiny_tokenizer, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    text = render_prompt(tiny_tokenizer, CHAT)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")


def test_render_fallback(tiny_base_tokenizer) -> None:
    assert render_prompt(tiny_base_tokenizer, "hi") == "User: hi\n\nAssistant:"
    assert render_prompt(tiny_base_tokenizer, CHAT) == "System: Be brief.\n\nUser: Capital of France?\n\nAssistant:"


def test_encode_prompt(tiny_tokenizer) -> None:
    ids, truncated = encode_prompt(tiny_tokenizer, "hi", max_tokens=100)
    assert not truncated
    assert ids == tiny_tokenizer(render_prompt(tiny_tokenizer, "hi"), add_special_tokens=False)["input_ids"]
    assert ids[0] == tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_encode_prompt_truncates_from_the_left(tiny_tokenizer) -> None:
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 20 + "What now?"
    full, truncated = encode_prompt(tiny_tokenizer, long_prompt, max_tokens=10_000)
    assert not truncated
    ids, truncated = encode_prompt(tiny_tokenizer, long_prompt, max_tokens=16)
    assert truncated and len(ids) == 16
    assert ids == full[-16:]  # the end, with the generation prompt, survives
    assert tiny_tokenizer.decode(ids).endswith("What now?<|im_end|>\n<|im_start|>assistant\n")


def test_encode_prompt_fallback_keeps_bos(tiny_base_tokenizer) -> None:
    bos = tiny_base_tokenizer.bos_token_id
    ids, truncated = encode_prompt(tiny_base_tokenizer, "hi", max_tokens=100)
    assert ids[0] == bos and not truncated
    assert tiny_base_tokenizer.decode(ids) == "<s>User: hi\n\nAssistant:"
    full, _ = encode_prompt(tiny_base_tokenizer, "word " * 50, max_tokens=1000)
    cut, truncated = encode_prompt(tiny_base_tokenizer, "word " * 50, max_tokens=8)
    assert truncated and len(cut) == 8 and cut[0] == bos and cut[1:] == full[-7:]


def test_encode_response_eos(tiny_tokenizer) -> None:
    eos = tiny_tokenizer.eos_token_id
    text_ids = tiny_tokenizer("Paris is the capital.", add_special_tokens=False)["input_ids"]
    ids = encode_response(tiny_tokenizer, "Paris is the capital.", max_tokens=100)
    assert ids == text_ids + [eos]
    assert encode_response(tiny_tokenizer, "Paris is the capital.", max_tokens=100, add_eos=False) == text_ids
    # Exactly enough room for the text and EOS.
    assert encode_response(tiny_tokenizer, "Paris is the capital.", max_tokens=len(text_ids) + 1)[-1] == eos
    # Cut: no EOS, because the reply did not finish.
    cut = encode_response(tiny_tokenizer, "Paris is the capital.", max_tokens=len(text_ids))
    assert cut == text_ids and eos not in cut
    assert encode_response(tiny_tokenizer, "", max_tokens=4) == [eos]
    with pytest.raises(ValueError, match="max_tokens"):
        encode_response(tiny_tokenizer, "x", max_tokens=0)


def test_prompt_plus_response_matches_a_full_chat(tiny_tokenizer) -> None:
    """Prompt ids + response ids equal the rendered conversation's ids, up to the template's final newline."""
    prompt_ids, _ = encode_prompt(tiny_tokenizer, CHAT, 100)
    response_ids = encode_response(tiny_tokenizer, "Paris.", 100)
    full = tiny_tokenizer.apply_chat_template(CHAT + [{"role": "assistant", "content": "Paris."}], tokenize=False)
    assert full.endswith("\n")
    assert prompt_ids + response_ids == tiny_tokenizer(full[:-1], add_special_tokens=False)["input_ids"]


SMOL = Path("/tmp/smol")


@pytest.mark.skipif(not (SMOL / "tokenizer.json").exists(), reason="real SmolLM2 tokenizer not at /tmp/smol")
def test_real_smollm2_tokenizer() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(SMOL))
    ids, truncated = encode_prompt(tokenizer, "What is 2+2?", 256)
    assert not truncated
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert encode_response(tokenizer, "4", 8)[-1] == tokenizer.eos_token_id
