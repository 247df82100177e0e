"""`chat_template`: a Jinja file in place of the model's own template, checked when the config is built, kept by the saved model."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tether.config import ConfigError, PPOConfig, SFTConfig, load_config
from tether.data.templates import render_prompt
from tether.models.loading import load_tokenizer
from tether.stages.sft import train_sft

pytestmark = pytest.mark.usefixtures("one_thread")

PLAIN = (
    "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}### assistant:{% endif %}"
)


def test_a_missing_template_file_is_named_when_the_config_is_built(tmp_path):
    (tmp_path / "chat.jinja").write_text(PLAIN)
    with pytest.raises(ConfigError, match=r"^chat_template .*chat.jnja: no such file \(did you mean .*chat.jinja\?\); expected a Jinja"):
        SFTConfig(chat_template=str(tmp_path / "chat.jnja"))
    with pytest.raises(ConfigError, match=r"^chat_template .*: no such file"):
        load_config(PPOConfig, None, [f"chat_template={tmp_path / 'none.jinja'}"])
    assert SFTConfig(chat_template=str(tmp_path / "chat.jinja")).chat_template == str(tmp_path / "chat.jinja")


def test_the_template_file_renders_the_prompts_and_the_saved_model_keeps_it(tiny_model_dir, tiny_data, tmp_path):
    (tmp_path / "plain.jinja").write_text(PLAIN)
    (tmp_path / "own.jinja").write_text(AutoTokenizer.from_pretrained(tiny_model_dir).chat_template)
    tokenizer = load_tokenizer(str(tiny_model_dir), str(tmp_path / "plain.jinja"))
    assert render_prompt(tokenizer, "hi") == "### user: hi\n### assistant:"
    assert render_prompt(load_tokenizer(str(tiny_model_dir)), "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    def sft(name: str, *extra: str) -> dict:
        argv = [f"model={tiny_model_dir}", f"data={tiny_data['demos']}", f"output_dir={tmp_path / name}", "max_steps=2", *extra]
        return train_sft(load_config(SFTConfig, None, [*argv, "precision=fp32"]))

    own, same, plain = (
        sft("own"),
        sft("same", f"chat_template={tmp_path / 'own.jinja'}"),
        sft("plain", f"chat_template={tmp_path / 'plain.jinja'}"),
    )
    assert same["eval_loss"] == own["eval_loss"] and same["final_train_loss"] == own["final_train_loss"]  # the model's own, as a file
    assert plain["eval_loss_before"] != own["eval_loss_before"]  # other prompt tokens
    assert AutoTokenizer.from_pretrained(tmp_path / "plain" / "model").chat_template == PLAIN  # the next stage renders as this one
