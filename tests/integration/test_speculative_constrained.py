"""Speculation under a constraint (chain drafts): speculative greedy returns exactly plain
constrained greedy's tokens and finish reasons, with drafts accepted; tree drafts with a
constraint are refused with a named error."""

from __future__ import annotations

import pytest

import decodekit
from decodekit.constraints import JsonSchema, Regex
from decodekit.errors import ConfigError
from decodekit.speculative import RecyclingConfig, Speculative, SuffixConfig

CASES = [
    (JsonSchema({"type": "array", "items": {"type": "integer"}}), "[1, 2, 3, 1, 2, 3, 1, 2, 3, "),
    (JsonSchema({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}}, "required": ["a", "b"]}), "x = "),
    (Regex("(x = [0-9]\n){1,8}"), "x = 1\nx = 1\nx = 1\n"),
    (Regex("[a-z_ ():\n]{1,60}"), "def f(x):\n    return f(x)\n\n" * 3),
]


@pytest.fixture(scope="module")
def decoder():
    return decodekit.load()


@pytest.mark.parametrize("proposer", ["ngram", "suffix", "draft", "recycling"])
def test_speculative_greedy_under_a_constraint_equals_plain_constrained_greedy(decoder, proposer):
    accepted = 0
    for constraint, prompt in CASES:
        plain = decoder.generate(prompt, constraint=constraint, max_new_tokens=30).best
        result = decoder.generate(prompt, decodekit.Greedy(speculative=Speculative(proposer)), constraint=constraint, max_new_tokens=30)
        assert result.best.token_ids == plain.token_ids
        assert result.best.finish_reason == plain.finish_reason
        assert result.best.constraint == plain.constraint
        assert result.best.token_logprobs == pytest.approx(plain.token_logprobs, abs=1e-4)
        accepted += result.stats.accepted
    assert accepted > 10  # the drafts were used, so the test tests something


def test_seeded_constrained_speculative_sampling_is_batch_invariant(decoder):
    constraint, prompt = CASES[0]
    strategy = decodekit.Sampling(seed=3, temperature=0.8, speculative=Speculative("ngram"))
    alone = decodekit.Decoder(decoder.model, decoder.tokenizer).generate(prompt, strategy, constraint=constraint, max_new_tokens=20)
    together = decoder.generate(["x = ", prompt], strategy, constraint=constraint, max_new_tokens=20)[1]
    assert alone.best.token_ids == together.best.token_ids
    if alone.best.finish_reason == "eos":
        assert alone.best.constraint["valid"]


def test_tree_drafts_with_a_constraint_are_refused(decoder):
    for speculative in (Speculative("recycling", RecyclingConfig(branching=(2, 1))), Speculative("suffix", SuffixConfig(tree=True))):
        with pytest.raises(ConfigError) as error:
            decoder.generate("x", decodekit.Greedy(speculative=speculative), constraint=CASES[0][0], max_new_tokens=4)
        assert error.value.field == "constraint"


@pytest.mark.parametrize("proposer", ["suffix", "ngram"])
def test_requests_with_their_own_constraints_join_a_running_run_and_equal_plain_constrained_greedy(decoder, proposer):
    """Requests submitted steps apart, each with its own constraint (or none), decode in one
    speculative run: each row follows its own request's constraint."""
    joined = decodekit.Decoder(decoder.model, decoder.tokenizer)
    engine = joined.engine
    strategy = decodekit.Greedy(speculative=Speculative(proposer))
    cases = [*CASES, (None, "def f(x):\n    return f(x)\n\n" * 2)]
    pending, widest = [], 0
    for constraint, prompt in cases:
        pending += joined.submit([prompt], strategy, constraint=constraint, max_new_tokens=30)
        engine.step()
        assert not engine._pending  # joined the running run (or started one), never queued
        widest = max([widest] + [len(g.members) for g in engine._speculative])
    assert widest >= 3
    for (constraint, prompt), p in zip(cases, pending):
        plain = decoder.generate(prompt, constraint=constraint, max_new_tokens=30).best
        result = p.result().best
        assert result.token_ids == plain.token_ids
        assert result.finish_reason == plain.finish_reason
        assert result.constraint == plain.constraint
