"""The lean sampling loop: exact draws from softmax(logits / T) (top-p as HF), the Rollout layout, greedy agreement with HF."""

import math

import pytest
import torch

from tether.config import GenerationSettings
from tether.models.loading import load_causal_lm, load_tokenizer
from tether.rollout.generate import generate
from tether.rollout.sampling import next_token, sample_rollout

PROMPTS = ["Name two primary colors.", "Write a haiku about autumn leaves and the cold wind in October.", "Why is the sky blue?"]


def frequencies(logits, temperature=1.0, top_p=1.0, n=10_000):
    # u on an even grid: each token is drawn n * p_j times, up to rounding -- an exact check of the inverse CDF
    u = (torch.arange(n) + 0.5) / n
    tokens, _ = next_token(logits.expand(n, -1), temperature, top_p, u)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / n


def test_draws_follow_the_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    for t in (1.0, 0.5):
        p = torch.softmax(logits / t, -1)[0]
        assert torch.allclose(frequencies(logits, t), p, atol=2e-4)


def test_zero_probability_tokens_are_never_drawn():
    logits = torch.tensor([[-math.inf, 0.0, -math.inf, 0.0, -math.inf]])
    u = torch.tensor([0.0, 1e-9, 0.5, 1.0 - 1e-7])
    tokens, logp = next_token(logits.expand(4, -1), 1.0, 1.0, u)
    assert set(tokens.tolist()) <= {1, 3} and tokens.tolist() == [1, 1, 3, 3]
    assert torch.allclose(logp, torch.full((4,), math.log(0.5)))


def test_top_p_keeps_the_nucleus_like_hf():
    # p = (0.5, 0.3, 0.2): top_p 0.6 keeps the first two (0.5 < 0.6, 0.8 >= 0.6), renormalised to (0.625, 0.375, 0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    assert torch.allclose(frequencies(logits, top_p=0.6), torch.tensor([0.625, 0.375, 0.0]), atol=2e-4)
    assert torch.allclose(frequencies(logits, top_p=0.45), torch.tensor([1.0, 0.0, 0.0]))  # 0.5 alone holds 0.45
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    g, n = torch.Generator().manual_seed(0), 200_000
    for top_p, temperature in ((0.3, 1.0), (0.7, 1.0), (0.95, 1.0), (0.7, 0.7)):
        logits = torch.randn(1, 50, generator=g)  # nuclei of 2, 17, 38 and 11 of the 50 tokens
        # HF's sampling distribution: the temperature, then the top-p cut, then the softmax of what is left
        p_hf = torch.softmax(TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone())), -1)[0]
        nucleus = p_hf > 0
        assert 2 <= nucleus.sum() < 50  # several tokens in, some out: an argmax-only sampler or no cut at all fails below
        freq = frequencies(logits, temperature, top_p, n)
        assert torch.equal(freq > 0, nucleus)  # every token of the nucleus is drawn, never one HF would cut
        assert torch.allclose(freq, p_hf, atol=2 / n, rtol=0)  # each drawn n * p_j times, up to rounding


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_causal_lm(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def test_layout_and_seed(lm):
    model, tok = lm
    settings = GenerationSettings(max_new_tokens=10)
    r = sample_rollout(model, tok, PROMPTS, settings, seed=3, precision="fp32")
    assert r.prompt_mask[0, 0] == 0 and r.prompt_mask[1].all()  # left padding
    for row in range(3):
        n = int(r.lengths[row])
        assert r.response_mask[row, :n].all() and not r.response_mask[row, n:].any()
        assert (r.response_ids[row, n:] == tok.pad_token_id).all()
        assert bool(r.finished[row]) == (n > 0 and r.response_ids[row, n - 1].item() == tok.eos_token_id)
        assert r.texts[row] == tok.decode(r.response_ids[row, :n], skip_special_tokens=True).strip()
    again = sample_rollout(model, tok, PROMPTS, settings, seed=3, precision="fp32")
    assert torch.equal(again.response_ids, r.response_ids)
    assert not torch.equal(sample_rollout(model, tok, PROMPTS, settings, seed=4, precision="fp32").response_ids, r.response_ids)


def test_near_greedy_matches_hf_greedy(lm):
    # at temperature 1e-4 every draw is the argmax: the KV cache, positions and masks of the loop must give HF's
    # greedy continuation of every left-padded prompt, token for token
    model, tok = lm
    from tether.data.collate import pad_left
    from tether.data.templates import encode_prompt

    r = sample_rollout(model, tok, PROMPTS, GenerationSettings(max_new_tokens=12, temperature=1e-4), seed=0, precision="fp32")
    ids, mask = pad_left([encode_prompt(tok, p, 192)[0] for p in PROMPTS], tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            top_p=None,
            top_k=None,
            temperature=None,
        )
    hf = out[:, ids.shape[1] :]
    for row in range(3):
        n = int(r.lengths[row])
        assert r.response_ids[row, :n].tolist() == hf[row, :n].tolist()


def test_stop_strings_fall_back_to_generate(lm):
    model, tok = lm
    settings = GenerationSettings(max_new_tokens=8, stop_strings=["e"])
    a = sample_rollout(model, tok, PROMPTS, settings, seed=1, precision="fp32", value_head=torch.nn.Linear(model.config.hidden_size, 1))
    assert a.logprobs is None and a.values is None and a.entropy is None  # the caller then runs the forward pass itself
    b = generate(model, tok, PROMPTS, settings, seed=1, precision="fp32")
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts


def test_logprobs_values_and_entropy_are_the_forward_passs(lm):
    # what the sampler keeps of its own tokens (log-probs at the temperature used, a value head on the state before
    # each token, the entropy of each step) equals a full forward pass's (policy_forward): PPO skips that pass
    from tether.rollout.logprobs import policy_forward

    model, tok = lm
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.normal_(head.weight, std=0.5)
    for t in (1.0, 0.7):
        r = sample_rollout(
            model,
            tok,
            PROMPTS,
            GenerationSettings(max_new_tokens=10, temperature=t, top_p=0.9),
            seed=2,
            precision="fp32",
            value_head=head,
            with_entropy=True,
        )
        with torch.no_grad():
            full = policy_forward(model, r.sequences, r.attention_mask, r.prompt_ids.shape[1], t, value_head=head, with_entropy=True)
        mask = r.response_mask.bool()
        for key in ("logprobs", "values", "entropy"):
            kept = getattr(r, key)
            assert kept.shape == r.response_ids.shape and (kept[~mask] == 0).all()
            torch.testing.assert_close(kept[mask], full[{"logprobs": "logp"}.get(key, key)][mask], atol=1e-4, rtol=1e-4)
        assert r.values.abs().max() > 0.1  # a head that reads something: the comparison is not 0 == 0


class EndsOften:
    """The tokenizer with another token playing EOS: one that a tiny random model draws often, so rows end at
    different steps and leave the batch mid-rollout."""

    def __init__(self, tok, eos: int):
        self._tok, self.eos_token_id = tok, eos

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


def test_repeated_prompts_and_rows_that_end_early_change_no_draw(lm):
    # a prompt given several times is prefilled once and its cache copied to each row; a row that ends leaves
    # the batch. Neither may change a number: every token must still be the inverse-CDF draw, with that row's
    # uniform, from a full forward pass's logits, and the kept log-probs, values and entropy must be that pass's
    from tether.rollout.logprobs import policy_forward, response_logits

    model, tok = lm
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[1]]
    settings = GenerationSettings(max_new_tokens=12, temperature=0.8, top_p=0.95)
    first = sample_rollout(model, tok, prompts, settings, seed=5, precision="fp32")
    common = torch.bincount(first.response_ids[first.response_mask.bool()]).argmax().item()
    ends = EndsOften(tok, common)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.normal_(head.weight, std=0.5)
    r = sample_rollout(model, ends, prompts, settings, seed=5, precision="fp32", value_head=head, with_entropy=True)
    lengths = r.lengths.tolist()
    assert len(set(lengths)) > 2 and min(lengths) < r.response_ids.shape[1], lengths  # rows ended at different steps
    assert torch.equal(r.prompt_ids[0], r.prompt_ids[2]) and torch.equal(r.prompt_ids[0], r.prompt_ids[4])
    P, mask = r.prompt_ids.shape[1], r.response_mask.bool()
    with torch.no_grad():
        logits, _ = response_logits(model, r.sequences, r.attention_mask, P)
        full = policy_forward(model, r.sequences, r.attention_mask, P, settings.temperature, value_head=head, with_entropy=True)
    u = torch.rand(settings.max_new_tokens, len(prompts), generator=torch.Generator().manual_seed(5))
    for t in range(r.response_ids.shape[1]):
        drawn, _ = next_token(logits[:, t], settings.temperature, settings.top_p, u[t])
        assert torch.equal(drawn[mask[:, t]], r.response_ids[mask[:, t], t]), t
    for key in ("logprobs", "values", "entropy"):
        kept = getattr(r, key)
        assert (kept[~mask] == 0).all()
        torch.testing.assert_close(kept[mask], full[{"logprobs": "logp"}.get(key, key)][mask], atol=1e-4, rtol=1e-4)
