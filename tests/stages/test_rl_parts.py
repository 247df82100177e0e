"""The parts an RL loop is written against (stages/rl_parts.py), each on its own: the scorer's penalty, clip and
dropped episodes; the LoRA reference (the policy with its adapter off); the policy's passes over a rollout, with and
without the sampling pass's own numbers and the recorded frozen blocks; GRPO's group scorer, kept batch and passes; the
sampling stages' scorer."""

from types import SimpleNamespace

import pytest
import torch

from tether.config import GenerationSettings, LoraSettings, RewardSourceSettings, reward_model_source
from tether.data.records import PromptRecord
from tether.models.loading import apply_lora, freeze_lower_layers, load_causal_lm, load_tokenizer
from tether.stages.rl_parts import (
    GroupScorer,
    KeptBatch,
    KeptPasses,
    LocalReference,
    PolicyHeadValue,
    PolicyPasses,
    PolicySampler,
    RewardModelScores,
    Scorer,
    SourceScorer,
    TextScores,
    VLLMEngineSampler,
    build_scorer,
)

PROMPTS = ["Name two primary colors.", "Write a haiku about autumn leaves."] * 2


def test_scorer_gives_an_unfinished_response_the_penalty_then_clips():
    raw = lambda prompts, rollout: (torch.tensor([3.0, -0.5, 0.2]), torch.ones(3, dtype=torch.bool))  # noqa: E731
    rollout = SimpleNamespace(finished=torch.tensor([True, False, True]))
    scores, keep = Scorer(raw, missing_eos_penalty=-1.0, clip=2.0)(["a", "b", "c"], rollout)
    # 3.0 finished -> clipped to 2.0; -0.5 unfinished -> the penalty -1.0; 0.2 finished and inside the clip -> 0.2
    torch.testing.assert_close(scores, torch.tensor([2.0, -1.0, 0.2]))
    assert keep.tolist() == [True, True, True]
    scores, _ = Scorer(raw, missing_eos_penalty=None, clip=0.1)(["a", "b", "c"], rollout)
    torch.testing.assert_close(scores, torch.tensor([0.1, -0.1, 0.1]))  # no penalty: every score only clipped


def test_text_scores_drop_the_episodes_the_function_returns_none_for(tmp_path):
    fn = tmp_path / "fn.py"  # scores only what it expects to see: chat prompts as their text
    fn.write_text(
        "def score(prompts, completions, metadata):\n"
        "    return [1.5, None] if (prompts, completions) == (['p1', 'p2'], ['yes', 'no']) else [9.0, 9.0]\n"
    )
    scorer = build_scorer([RewardSourceSettings(type="function", path=f"{fn}:score")], None, None, "fp32", None, 10.0)
    assert isinstance(scorer.raw, TextScores)
    rollout = SimpleNamespace(texts=["yes", "no"], sequences=torch.zeros(2, 3, dtype=torch.long), finished=torch.ones(2, dtype=torch.bool))
    scores, keep = scorer(["p1", [{"role": "user", "content": "p2"}]], rollout)
    assert scores.tolist() == [1.5, 0.0] and keep.tolist() == [True, False]


def test_one_reward_model_source_scores_the_token_ids():
    # a reward list that is one `type: model` source: the (loaded) model scores the rollout's own token ids, with the
    # source's std_coef (an ensemble's mean - k * std) and weight; every episode kept
    seen = {}

    class Model:
        def scores(self, ids, mask, std_coef):
            seen.update(ids=ids.tolist(), std_coef=std_coef)
            return torch.tensor([1.0, -2.0])

    rollout = SimpleNamespace(
        sequences=torch.zeros(2, 3, dtype=torch.long),
        finished=torch.ones(2, dtype=torch.bool),
        sequences_for_reward=lambda eos, pad: (torch.tensor([[5, eos], [6, pad]]), torch.ones(2, 2)),
    )
    sources = [RewardSourceSettings(type="model", path="rm", std_coef=1.5, weight=2.0)]
    assert reward_model_source(sources) is sources[0]
    scorer = build_scorer(sources, Model(), SimpleNamespace(eos_token_id=2, pad_token_id=0), "fp32", None, 3.0)
    scores, keep = scorer(["a", "b"], rollout)
    assert isinstance(scorer.raw, RewardModelScores) and seen == {"ids": [[5, 2], [6, 0]], "std_coef": 1.5}
    assert scores.tolist() == [2.0, -3.0] and keep.tolist() == [True, True]  # 2 * -2 clipped to -3
    # any other list reads the text: a model source beside a function, or a function alone
    assert reward_model_source(sources + [RewardSourceSettings(type="function", path="f.py:g")]) is None
    assert reward_model_source([RewardSourceSettings(type="function", path="f.py:g")]) is None


@pytest.mark.parametrize("sources", [[], [RewardSourceSettings(type="model", path="a"), RewardSourceSettings(type="model", path="b")]])
def test_a_scorer_from_a_loaded_model_takes_exactly_its_one_source(sources):
    with pytest.raises(ValueError):
        build_scorer(sources, object(), SimpleNamespace(eos_token_id=2, pad_token_id=0), "fp32", None, 3.0)


def test_passes_reference_and_sampler_agree_on_a_fresh_lora_policy(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    policy = apply_lora(load_causal_lm(str(tiny_model_dir)), LoraSettings(enabled=True, r=4, alpha=8)).eval()
    freeze_lower_layers(policy, 1)
    value = PolicyHeadValue(policy.config.hidden_size)
    generation = GenerationSettings(max_new_tokens=5)
    sampler = PolicySampler(policy, tok, generation, "fp32", value_head=value.head, with_entropy=True)
    rollout = sampler.sample(PROMPTS, seed=3)
    assert sampler.importance_weights(rollout.logprobs, rollout, rollout.response_mask.float()) == (None, {})
    seqs, attn, P = rollout.sequences, rollout.attention_mask, rollout.prompt_ids.shape[1]
    mask = rollout.response_mask.float()
    with torch.no_grad():
        fresh = PolicyPasses(policy, value, 1.0, chunk=3, frozen_blocks=0, reuse_sampling_pass=False).over(rollout)
        recorded = PolicyPasses(policy, value, 1.0, chunk=3, frozen_blocks=1, reuse_sampling_pass=False).over(rollout)
        reused = PolicyPasses(policy, value, 1.0, chunk=3, frozen_blocks=0, reuse_sampling_pass=True).over(rollout)
        full, replayed, sampled = fresh.old(), recorded.old(), reused.old()
        assert fresh.frozen is None and recorded.frozen is not None
        # LoRA starts as the identity (B = 0): the reference (adapter off) is the policy itself, with or without the
        # recorded lower blocks
        ref = LocalReference(policy, None, 1.0, chunk=2)
        torch.testing.assert_close(ref.logprobs(seqs, attn, P) * mask, full["logp"] * mask, rtol=0, atol=1e-5)
        torch.testing.assert_close(ref.start(seqs, attn, P, frozen=recorded.frozen).result() * mask, full["logp"] * mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(replayed["logp"] * mask, full["logp"] * mask, rtol=0, atol=1e-5)
    assert sampled["logp"] is rollout.logprobs and sampled["entropy"] is rollout.entropy  # no second pass
    torch.testing.assert_close(sampled["logp"] * mask, full["logp"] * mask, rtol=0, atol=1e-4)  # the sampling step's own numbers
    assert not full["values"].any() and not sampled["values"].any()  # the value head starts at zero
    rows = torch.tensor([2, 0])
    one = fresh(rows, with_entropy=True)
    torch.testing.assert_close(one["logp"], full["logp"][rows], rtol=0, atol=1e-5)
    assert one["logp"].requires_grad  # the update's pass keeps its graph


def source(name, weight, fn):
    return SimpleNamespace(name=name, weight=weight, score=fn)


def test_group_scorer_sums_the_sources_and_leaves_out_groups_of_equal_rewards():
    # 3 groups of 2: a spread (kept); one dropped by a source (one valid sample left: nothing to compare); all equal
    a = source("a", 1.0, lambda prompts, texts, meta: [1.0, 0.0, 2.0, 5.0, 0.5, 0.5])
    b = source("b", 0.5, lambda prompts, texts, meta: [0.0, 2.0, None, 1.0, 1.0, 1.0])
    args = (["p"] * 6, ["t"] * 6, [{}] * 6)
    g = GroupScorer([a, b], group_size=2, dynamic_sampling=True)(*args)
    assert g.values == [1.0, 1.0, None, 5.5, 1.0, 1.0] and g.parts["b"][2] is None
    assert g.scores.tolist() == [[1.0, 1.0], [0.0, 5.5], [1.0, 1.0]] and g.valid.tolist() == [[True, True], [False, True], [True, True]]
    assert g.equal_groups.tolist() == [True, True, True]  # group 0's two samples tie at 1.0 too
    assert g.keep.sum() == 0 and len(g.rows) == 0
    a2 = source("a", 1.0, lambda prompts, texts, meta: [1.0, 3.0, 2.0, 5.0, 0.5, 0.5])
    g = GroupScorer([a2, b], group_size=2, dynamic_sampling=True)(*args)
    assert g.equal_groups.tolist() == [False, True, True] and g.rows.tolist() == [0, 1]
    g = GroupScorer([a2, b], group_size=2, dynamic_sampling=False)(*args)
    assert g.rows.tolist() == [0, 1, 3, 4, 5]  # every valid sample


def test_source_scorer_gives_functions_the_records_meta():
    seen = []
    scorer = SourceScorer([source("f", 2.0, lambda prompts, texts, meta: seen.append((prompts, meta)) or [len(t) for t in texts])])
    records = [PromptRecord(prompt="x", meta={"k": 1}), PromptRecord(prompt="y")]
    assert scorer.records(records, ["ab", "c"]) == [4.0, 2.0]
    assert seen == [(["x", "y"], [{"k": 1}, {}])]


def test_kept_batch_cuts_the_columns_every_kept_row_pads():
    # prompts left-padded (P = 3), responses right-padded (R = 3); rows 0 and 2 kept: one prompt column and one
    # response column are padding in both
    rollout = SimpleNamespace(
        prompt_ids=torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 4]]),
        prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]]),
        response_ids=torch.tensor([[11, 12, 0], [13, 14, 15], [16, 0, 0]]),
        response_mask=torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]]),
        logprobs=torch.tensor([[-1.0, -2.0, 0.0], [-3.0, -4.0, -5.0], [-6.0, 0.0, 0.0]]),
    )
    batch = KeptBatch.of(rollout, torch.tensor([0, 2]))
    assert len(batch) == 2 and batch.P == 2
    assert batch.seqs.tolist() == [[5, 6, 11, 12], [0, 4, 16, 0]] and batch.attn.tolist() == [[1, 1, 1, 1], [0, 1, 1, 0]]
    assert batch.mask.tolist() == [[1.0, 1.0], [1.0, 0.0]] and batch.sampled_logp.tolist() == [[-1.0, -2.0], [-6.0, 0.0]]
    assert len(KeptBatch.of(rollout, torch.tensor([], dtype=torch.long))) == 0


def test_kept_passes_take_pi_old_from_a_scoring_pass_or_from_the_update(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    policy = load_causal_lm(str(tiny_model_dir)).eval()
    rollout = PolicySampler(policy, tok, GenerationSettings(max_new_tokens=5), "fp32").sample(PROMPTS, seed=3)
    batch = KeptBatch.of(rollout, torch.tensor([3, 1, 2]))

    def passes(on_policy, old_first=False, trust_sampler=True):
        return KeptPasses(
            policy, 1.0, chunk=2, precision="fp32", on_policy=on_policy, old_first=old_first, trust_sampler=trust_sampler, sharded=False
        )

    with torch.no_grad():
        scored = passes(False).old(batch)  # a scoring pass, in chunks of 2
        on = passes(True).old(batch)
        first = passes(True, old_first=True).old(batch)
        first_untrusted = passes(True, old_first=True, trust_sampler=False).old(batch)
    mask = batch.mask
    assert not on["logp"].any() and not on["entropy"].any()  # the update fills them in
    assert first["logp"] is batch.sampled_logp  # the sampler's own numbers, no pass
    torch.testing.assert_close(first_untrusted["logp"] * mask, scored["logp"] * mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.sampled_logp, scored["logp"] * mask, rtol=0, atol=1e-4)
    on_policy = passes(True)
    micros = list(on_policy.micro_batches(torch.tensor([2, 0, 1]), rollout))
    assert [m.tolist() for m in micros] == [[2, 0], [1]]
    for micro in micros:
        new = on_policy(batch, micro, on)
        assert new["logp"].requires_grad
    torch.testing.assert_close(on["logp"] * mask, scored["logp"] * mask, rtol=0, atol=1e-5)  # written by the update's passes
    torch.testing.assert_close(on["entropy"] * mask, scored["entropy"] * mask, rtol=0, atol=1e-5)
    empty = passes(False).old(KeptBatch.of(rollout, torch.tensor([], dtype=torch.long)))
    assert empty["logp"].shape[0] == 0 and empty["entropy"] is None


def test_vllm_sampler_weighs_any_rows_as_it_weighs_a_rollout():
    old, sampled = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    sampler = VLLMEngineSampler(engine=None, tokenizer=None, is_cap=1.2)
    weights, stats = sampler.weigh(old, sampled, mask)
    whole, whole_stats = sampler.importance_weights(old, SimpleNamespace(logprobs=sampled), mask)
    assert torch.equal(weights, whole) and stats == whole_stats
    torch.testing.assert_close(weights, torch.tensor([[1.2, torch.exp(torch.tensor(-1.0)).item(), 0.0]]))  # capped, exp(-1), padding
    assert PolicySampler(None, None, None, "fp32").weigh(old, sampled, mask) == (None, {})
