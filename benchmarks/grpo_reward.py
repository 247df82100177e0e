"""The reward both sides of benchmarks/grpo_vs_trl.py optimise: the fraction of a completion's characters that are 'e'.

One function, two call conventions: tether calls `letter_e(prompts, completions, metadata)`; TRL calls
`trl_letter_e(prompts=..., completions=..., **kwargs)` with chat completions ([{"role": "assistant", "content": ...}]).
"""


def letter_e(prompts, completions, metadata):
    return [sum(c == "e" for c in text) / max(len(text), 1) for text in completions]


def trl_letter_e(prompts, completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return letter_e(prompts, texts, [{} for _ in texts])
