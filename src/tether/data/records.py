"""The three kinds of record tether trains on, and their native JSON form.

* :class:`PromptRecord` -- a prompt alone (for rollouts and evaluation).
* :class:`Demonstration` -- a prompt and the response to imitate (SFT).
* :class:`PreferencePair` -- a prompt and two responses, ``chosen`` preferred
  over ``rejected`` (reward models, DPO).

A prompt (:data:`Prompt`) is either plain text or a list of chat messages
``{"role": "system" | "user" | "assistant", "content": str}`` that ends with a
user message. Responses are always plain text: the assistant's next turn.
A demonstration may have the empty prompt ``""``: a language-modeling text (TRL's
``{"text"}`` rows), trained on as a whole.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

Prompt = str | list[dict[str, str]]
"""Plain text, or chat messages ending with a user message."""

ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""The message roles tether accepts."""


class _Missing:
    """Marks a field that is absent, as opposed to present with a null value."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Stands for an absent field in error reports."""


def _copy_prompt(prompt: Prompt) -> Prompt:
    """A copy of ``prompt`` that shares no mutable state with the original."""
    if isinstance(prompt, str):
        return prompt
    return [dict(message) for message in prompt]


def prompt_key(prompt: Prompt) -> str:
    """A string that is equal for equal prompts (plain text as it is; chat messages as canonical JSON): a dict key."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def prompt_text(prompt: Prompt) -> str:
    """Flatten a prompt to plain text, for scorers and logs that read text.

    Plain text is returned unchanged; for chat messages the contents are joined
    with blank lines, in order, without role names.
    """
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(message.get("content", "")) for message in prompt)


def messages_problem(messages: Any, name: str, *, last_role: str | None) -> tuple[str, str, Any] | None:
    """Check that ``messages`` is a well-formed list of chat messages.

    Args:
        messages: the value to check.
        name: how to name the value in the report, e.g. ``"prompt"``.
        last_role: the role the final message must have, or None for any.

    Returns:
        None when the messages are well formed, else ``(field, expected, got)``
        for the first problem found, e.g.
        ``("messages[2].role", "one of 'system', 'user', 'assistant'", "bot")``.
    """
    if not isinstance(messages, list):
        return name, "a list of messages", messages
    if not messages:
        return name, "a non-empty list of messages", messages
    for index, message in enumerate(messages):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            return where, 'a message object {"role": ..., "content": ...}', message
        if "role" not in message:
            return f"{where}.role", "one of 'system', 'user', 'assistant'", MISSING
        if message["role"] not in ROLES:
            return f"{where}.role", "one of 'system', 'user', 'assistant'", message["role"]
        if "content" not in message:
            return f"{where}.content", "a string", MISSING
        if not isinstance(message["content"], str):
            return f"{where}.content", "a string", message["content"]
    if last_role is not None:
        last = len(messages) - 1
        if messages[last]["role"] != last_role:
            return f"{name}[{last}].role", f"'{last_role}' (the last message must be the {last_role}'s)", messages[last]["role"]
        if last_role == "user" and not messages[last]["content"].strip():
            return f"{name}[{last}].content", "a non-empty string", messages[last]["content"]
    return None


@dataclass
class PromptRecord:
    """A prompt alone, e.g. for rollouts or evaluation.

    Attributes:
        prompt: plain text or chat messages ending with a user message.
        meta: free-form information carried along (source, id, ...).
    """

    prompt: Prompt
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Native JSON form: ``{"prompt"[, "meta"]}`` (meta only when non-empty)."""
        row: dict[str, Any] = {"prompt": _copy_prompt(self.prompt)}
        if self.meta:
            row["meta"] = copy.deepcopy(self.meta)
        return row


@dataclass
class Demonstration:
    """A prompt and the response to imitate (supervised fine-tuning).

    Attributes:
        prompt: plain text or chat messages ending with a user message; ``""`` for a language-modeling text.
        response: the assistant's reply, plain text (the whole text when there is no prompt).
        meta: free-form information carried along.
    """

    prompt: Prompt
    response: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Native JSON form: ``{"prompt", "response"[, "meta"]}`` (meta only when non-empty)."""
        row: dict[str, Any] = {"prompt": _copy_prompt(self.prompt), "response": self.response}
        if self.meta:
            row["meta"] = copy.deepcopy(self.meta)
        return row


@dataclass
class PreferencePair:
    """A prompt and two responses, ``chosen`` preferred over ``rejected``.

    Attributes:
        prompt: plain text or chat messages ending with a user message.
        chosen: the preferred reply.
        rejected: the other reply.
        margin: optional strength of the preference (a number), or None.
        meta: free-form information carried along.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Native JSON form: ``{"prompt", "chosen", "rejected"[, "margin"][, "meta"]}``."""
        row: dict[str, Any] = {
            "prompt": _copy_prompt(self.prompt),
            "chosen": self.chosen,
            "rejected": self.rejected,
        }
        if self.margin is not None:
            row["margin"] = self.margin
        if self.meta:
            row["meta"] = copy.deepcopy(self.meta)
        return row


Record = PromptRecord | Demonstration | PreferencePair
"""Any of the three record kinds."""
