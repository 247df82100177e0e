"""Reward functions used by the tests (loaded by path, as a user's would be)."""


def letter_e(prompts, completions, metadata):
    """Fraction of the completion's characters that are 'e': dense, and maximised by a known behaviour."""
    return [sum(c == "e" for c in text) / max(len(text), 1) for text in completions]


def drop_odd(prompts, completions, metadata):
    """Scores even samples 1.0 and drops odd ones (None)."""
    return [1.0 if i % 2 == 0 else None for i in range(len(completions))]


def drop_all(prompts, completions, metadata):
    """Drops every sample (None): nothing is left to learn from."""
    return [None for _ in completions]


def wrong_length(prompts, completions, metadata):
    return [1.0]


def constant(prompts, completions, metadata):
    """The same score for everything: nothing to learn from the reward."""
    return [1.0 for _ in completions]


def hash_unless_fixed(prompts, completions, metadata):
    """1.0 for every completion to a prompt whose meta says {"fixed": true} (a group of equal rewards); otherwise a number
    in [0, 1) from the completion's text, so that only identical completions tie."""
    import hashlib

    return [
        1.0 if meta.get("fixed") else int(hashlib.md5(text.encode()).hexdigest()[:8], 16) / 2**32
        for meta, text in zip(metadata, completions)
    ]


def e_count(prompts, completions, metadata):
    """How many 'e' the completion holds, divided by 8 and capped at 1: with 8 new tokens the optimum, 1.0, is a
    completion of eight tokens that each hold an 'e' (no earlier EOS)."""
    return [min(text.count("e"), 8) / 8 for text in completions]


def prompt_length(prompts, completions, metadata):
    """A score set by the prompt alone (its length): every response to one prompt is as good as the others."""
    return [len(p) / 100 for p in prompts]
