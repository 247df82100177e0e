"""Turn prompts and responses into token ids, the way a policy sees them.

A prompt is rendered with the tokenizer's chat template, ending with the
generation prompt (the opening of the assistant's turn); a response is the
text the policy would sample after it, ending with the end-of-sequence token.
So ``encode_prompt(...) + encode_response(...)`` is exactly the sequence a
policy produces when it generates that response, which keeps supervised
fine-tuning, reward scoring and PPO rollouts consistent with each other.

Tokenizers without a chat template (base models) get a plain fallback::

    System: <system message>

    User: <user message>

    Assistant: <assistant message>

    User: <user message>

    Assistant:

i.e. each message as ``"<Role>: <content>"``, messages separated by a blank
line, ending with ``"Assistant:"``; a plain-text prompt is one user message.
The response follows directly, so a response usually starts with a space or
newline under this fallback, as in HH-RLHF's raw dialogues.
"""

from __future__ import annotations

from typing import Any

from tether.data.records import Prompt, messages_problem

__all__ = ["as_messages", "render_prompt", "encode_prompt", "encode_response"]

_FALLBACK_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as chat messages: plain text becomes one user message.

    Returns a new list of new dicts, so callers may change it freely.

    Raises:
        ValueError: the messages are malformed or do not end with a user message.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    problem = messages_problem(prompt, "prompt", last_role="user")
    if problem is not None:
        field, expected, got = problem
        raise ValueError(f"Malformed prompt: field '{field}': expected {expected}, got {got!r}.")
    return [{"role": message["role"], "content": message["content"]} for message in prompt]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The prompt as the text a policy reads, ending where its reply begins.

    With a chat template: ``tokenizer.apply_chat_template(messages,
    add_generation_prompt=True, tokenize=False)``. Without one: the plain
    ``"User: ...\\n\\nAssistant:"`` fallback described in the module docstring.
    """
    messages = as_messages(prompt)
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not isinstance(text, str):  # some versions wrap a single rendering in a list
            text = text[0]
        return text
    turns = [f"{_FALLBACK_ROLE_NAMES[message['role']]}: {message['content']}" for message in messages]
    return "\n\n".join(turns + ["Assistant:"])


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text``, without special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_budget(max_tokens: int, name: str = "max_tokens") -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {max_tokens!r}.")


def encode_prompt(tokenizer: Any, prompt: Prompt, max_tokens: int) -> tuple[list[int], bool]:
    """Token ids of the rendered prompt, keeping its last ``max_tokens``.

    The prompt is rendered with :func:`render_prompt` and tokenized without
    special tokens (a chat template writes its own). Without a chat template,
    the tokenizer's BOS token (if it has one) is put in front. A prompt that is
    too long loses tokens from the left, so the end (the latest turn and the
    generation prompt) survives; a leading BOS we added is kept.

    Returns:
        ``(ids, truncated)``.
    """
    _check_budget(max_tokens)
    ids = _encode_text(tokenizer, render_prompt(tokenizer, prompt))
    bos = getattr(tokenizer, "bos_token_id", None)
    head: list[int] = []
    if not has_chat_template(tokenizer) and bos is not None:
        head = [bos]
    room = max_tokens - len(head)
    if room < 1:  # max_tokens == 1 and a BOS: keep the last prompt token instead
        head, room = [], max_tokens
    truncated = len(ids) > room
    if truncated:
        ids = ids[len(ids) - room :]
    return head + ids, truncated


def encode_response_with_flag(tokenizer: Any, response: str, max_tokens: int, add_eos: bool = True) -> tuple[list[int], bool]:
    """Like :func:`encode_response`, also telling whether it was truncated."""
    _check_budget(max_tokens)
    ids = _encode_text(tokenizer, response)
    if add_eos:
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("The tokenizer has no eos_token_id; set tokenizer.eos_token, or pass add_eos=False.")
        if len(ids) + 1 <= max_tokens:
            return ids + [eos], False
        return ids[:max_tokens], True
    return ids[:max_tokens], len(ids) > max_tokens


def encode_response(tokenizer: Any, response: str, max_tokens: int, add_eos: bool = True) -> list[int]:
    """Token ids of a response as a policy samples it after the prompt.

    The response text is tokenized without special tokens and followed by
    ``tokenizer.eos_token_id`` (when ``add_eos``), since generation ends with
    EOS. A response longer than ``max_tokens`` is cut on the right and gets no
    EOS: it did not finish within the budget.
    """
    return encode_response_with_flag(tokenizer, response, max_tokens, add_eos)[0]
