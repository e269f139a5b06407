"""Speculative requests in the engine: later requests join the running speculative state
(one verification forward for all of them), and each still gets what it gets alone."""

from __future__ import annotations

import math

import pytest

import decodekit
from decodekit.engine import Engine, Request
from decodekit.errors import NumericalError
from decodekit.model.scripted import ScriptedModel
from decodekit.speculative import DraftModelConfig, Speculative
from decodekit.speculative.config import PromptLookupConfig


@pytest.fixture(scope="module")
def embedded():
    return decodekit.load()


class Counting:
    """Wraps a model's ``verify`` to record the rows of every verification forward."""

    def __init__(self, model):
        self.model, self.rows = model, []
        self._verify = model.verify
        model.verify = self

    def __call__(self, state, tokens, parents):
        self.rows.append(tokens.shape[0])
        return self._verify(state, tokens, parents)

    def close(self):
        del self.model.verify


def alone(model, prompt, strategy, options, seed=None):
    (handle,) = Engine(model).submit([Request(prompt, strategy, options, seed=seed)])
    return handle.result()


def same(a, b) -> None:
    assert [h.token_ids for h in a.hypotheses] == [h.token_ids for h in b.hypotheses]
    assert [h.finish_reason for h in a.hypotheses] == [h.finish_reason for h in b.hypotheses]
    assert [h.score for h in a.hypotheses] == pytest.approx([h.score for h in b.hypotheses], abs=1e-4)


@pytest.mark.parametrize("proposer", ["suffix", "ngram", "recycling", "draft"])
@pytest.mark.parametrize("kind", ["greedy", "sampling"])
def test_later_speculative_requests_join_the_running_state_and_match_alone(embedded, proposer, kind):
    model = embedded.model
    speculative = Speculative(proposer)
    if kind == "greedy":
        strategies = [decodekit.Greedy(speculative=speculative)] * 3
    else:  # the same sampler; seeds and n are each request's own
        strategies = [decodekit.Sampling(seed=s, n=n, top_k=40, speculative=speculative) for s, n in ((1, 1), (2, 2), (3, 1))]
    prompts = [embedded.encode(p) for p in ("x = 1\nx = 1\nx = 1\n", "def f(a, b):\n    return a", "import os\nimport sys\n")]
    lengths = [40, 12, 24]
    engine = Engine(model)
    counter = Counting(model)
    try:
        handles = []
        for prompt, strategy, length in zip(prompts, strategies, lengths):
            handles += engine.submit([Request(prompt, strategy, decodekit.DecodeOptions(max_new_tokens=length))])
            for _ in range(3):
                engine.step()
            assert len(engine._speculative) == 1 and not engine._pending  # joined, not queued
        joined = max(counter.rows)
        together = [h.result() for h in handles]
    finally:
        counter.close()
    assert joined >= 3  # one verification forward served rows of several requests
    for prompt, strategy, length, result in zip(prompts, strategies, lengths, together):
        same(alone(model, prompt, strategy, decodekit.DecodeOptions(max_new_tokens=length)), result)
        assert result.stats.generated == sum(len(h.token_ids) for h in result.hypotheses)
    if kind == "greedy":
        for prompt, length, result in zip(prompts, lengths, together):
            same(alone(model, prompt, decodekit.Greedy(), decodekit.DecodeOptions(max_new_tokens=length)), result)


def test_requests_with_processors_join_with_their_own_and_equal_plain_decoding(embedded):
    """Penalties and a minimum length apply per row, with the row's own prompt length, so
    requests with processors join the running run too and get plain decoding's tokens."""
    model = embedded.model
    strategy = decodekit.Greedy(speculative=Speculative("suffix"))
    prompts = [embedded.encode(p) for p in ("x = 1\nx = 1\nx = 1\n", "def f(a, b):\n    return a", "import os\n")]
    settings = dict(repetition_penalty=1.2, no_repeat_ngram_size=4, min_new_tokens=8)
    options = [decodekit.DecodeOptions(max_new_tokens=n, **settings) for n in (30, 12, 20)]
    engine = Engine(model)
    counter = Counting(model)
    try:
        handles = []
        for prompt, option in zip(prompts, options):
            handles += engine.submit([Request(prompt, strategy, option)])
            for _ in range(2):
                engine.step()
            assert len(engine._speculative) == 1 and not engine._pending  # joined, not queued
        results = [h.result() for h in handles]
    finally:
        counter.close()
    assert max(counter.rows) >= 2  # rows of several requests in one verification forward
    for prompt, option, result in zip(prompts, options, results):
        same(alone(model, prompt, decodekit.Greedy(), option), result)


def test_a_request_with_other_options_waits_for_the_proposer_and_matches_alone(embedded):
    model = embedded.model
    strategy = decodekit.Greedy(speculative=Speculative("suffix"))
    prompt = embedded.encode("x = 1\nx = 1\n")
    first = decodekit.DecodeOptions(max_new_tokens=16)
    penalised = decodekit.DecodeOptions(max_new_tokens=16, repetition_penalty=1.3)
    engine = Engine(model)
    (a,) = engine.submit([Request(prompt, strategy, first)])
    engine.step()
    (b,) = engine.submit([Request(prompt, strategy, penalised)])
    engine.step()
    assert len(engine._pending) == 1  # processors: not joinable, so it waits its turn
    same(alone(model, prompt, strategy, first), a.result())
    same(alone(model, prompt, decodekit.Greedy(), penalised), b.result())


def test_aborting_a_joined_request_frees_its_rows_and_the_others_go_on(embedded):
    model = embedded.model
    strategy = decodekit.Greedy(speculative=Speculative("ngram"))
    options = decodekit.DecodeOptions(max_new_tokens=30)
    prompts = [embedded.encode("a = [1, 2, 3]\n"), embedded.encode("for i in range(3):\n")]
    engine = Engine(model)
    (a,) = engine.submit([Request(prompts[0], strategy, options)])
    engine.step()
    (b,) = engine.submit([Request(prompts[1], strategy, options, id="b")])
    engine.step()
    group = engine._speculative[0]
    assert len(group.run.live) == 2
    engine.abort("b")
    assert len(group.run.live) == 1 and b.done
    same(alone(model, prompts[0], strategy, options), a.result())
    assert engine.running_rows == 0 and not group.run.out  # delivered rows are forgotten


def _good_then_bad(next_logprobs):
    """A 60-token speculative request runs a step, then one whose prompt starts with 2 joins
    it and a step runs: the engine and both handles."""
    model = ScriptedModel(6, next_logprobs, eos_token_ids=(0,), can_merge=True)
    strategy = decodekit.Greedy(speculative=Speculative("ngram"))
    engine = Engine(model)
    (good,) = engine.submit([Request([1, 3, 3], strategy, decodekit.DecodeOptions(max_new_tokens=60))])
    engine.step()
    (bad,) = engine.submit([Request([2, 3, 3], strategy, decodekit.DecodeOptions(max_new_tokens=12))])
    engine.step()
    return engine, good, bad


def test_non_finite_logits_fail_only_the_joined_request_they_belong_to():
    def next_logprobs(seq):
        values = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
        if seq[0] == 2 and len(seq) >= 6:
            values[1] = math.nan
        return values

    engine, good, bad = _good_then_bad(next_logprobs)
    assert len(engine._speculative) == 1 and not engine._pending
    with pytest.raises(NumericalError, match="row 0"):
        bad.result()
    assert good.result().hypotheses[0].token_ids == [3] * 60


def test_a_joining_request_whose_prompt_gives_non_finite_logits_fails_alone():
    def next_logprobs(seq):
        values = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
        if seq[0] == 2:
            values[3] = math.inf
        return values

    _, good, bad = _good_then_bad(next_logprobs)
    with pytest.raises(NumericalError, match="step 0"):
        bad.result()
    assert good.result().hypotheses[0].token_ids == [3] * 60


@pytest.mark.parametrize("proposer", ["suffix", "draft"])
def test_speculative_and_plain_requests_share_one_forward_per_step(embedded, proposer):
    """With the lean step, a speculative run's verification is a part of the forward that steps
    the plain rows (one target forward per engine step for every request in flight), and
    every request still decodes what it decodes alone."""
    model = embedded.model
    prompts = [embedded.encode(p) for p in ("x = 1\nx = 1\nx = 1\n", "def f(a, b):\n    return a", "import os\nimport sys\n", "class A:\n")]
    short, long = decodekit.DecodeOptions(max_new_tokens=24), decodekit.DecodeOptions(max_new_tokens=64, min_new_tokens=64)
    specs = [
        (prompts[0], decodekit.Greedy(speculative=Speculative(proposer)), short),
        (prompts[1], decodekit.Greedy(), long),
        (prompts[2], decodekit.Sampling(seed=4, top_p=0.9, speculative=Speculative(proposer)), short),
        (prompts[3], decodekit.Sampling(seed=5, top_k=20), long),
        (prompts[1], decodekit.BeamSearch(num_beams=3), short),
    ]
    engine = Engine(model)
    counter = Counting(model)
    handles = [h for prompt, strategy, options in specs for h in engine.submit([Request(prompt, strategy, options)])]
    fused = 0
    try:
        while not all(h.done for h in handles):
            before, verified = model.forward_count, len(counter.rows)
            # every request admitted and prefilled (a speculative run's prefill is its own forward)
            settled = not engine._pending and all(not g._waiting for g in engine._speculative)
            both = settled and engine._partitions and engine._speculative
            engine.step()
            if both and engine._partitions:  # (plain rows that all finish this step need no forward)
                assert len(counter.rows) == verified  # no verification forward of its own
                assert model.forward_count - before == 1
                fused += 1
    finally:
        counter.close()
    assert fused >= 8
    for (prompt, strategy, options), handle in zip(specs, handles):
        same(alone(model, prompt, strategy, options), handle.result())


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_both_lean_steps_verify_in_the_plain_rows_forward(builder):
    """GPT-2's lean step and Llama's: a speculative request decoding beside plain ones needs no
    verification forward of its own, and every request equals itself decoded alone."""
    import tiny_models as tm

    from decodekit.model.hf import HFLanguageModel

    model = HFLanguageModel(tm.BUILDERS[builder]())
    options = decodekit.DecodeOptions(max_new_tokens=20, min_new_tokens=20)
    specs = [([5, 6, 5, 6, 5, 6, 5, 6], decodekit.Greedy(speculative=Speculative("suffix")), decodekit.DecodeOptions(max_new_tokens=20)),
             ([3, 4], decodekit.Greedy(), options), ([9, 9, 8], decodekit.Sampling(seed=2, top_k=5), options)]
    engine = Engine(model)
    handles = [h for prompt, strategy, o in specs for h in engine.submit([Request(prompt, strategy, o)])]
    counter = Counting(model)
    try:
        results = [h.result() for h in handles]
    finally:
        counter.close()
    assert counter.rows == []
    for (prompt, strategy, o), result in zip(specs, results):
        same(alone(model, prompt, strategy, o), result)


@pytest.mark.parametrize("proposer", ["suffix", "ngram", "recycling"])
def test_greedy_and_sampled_requests_with_their_own_settings_join_one_run(embedded, proposer):
    """With deterministic drafts, requests of one proposer join one run whatever their sampler
    (greedy, or sampling with its own temperature, top-k, top-p, seed and n): each row is
    verified with its own request's sampler, and each request decodes what it does alone."""
    model = embedded.model
    speculative = Speculative(proposer)
    specs = [
        ("x = 1\nx = 1\nx = 1\n", decodekit.Greedy(speculative=speculative)),
        ("def f(a, b):\n    return a", decodekit.Sampling(seed=1, top_k=40, speculative=speculative)),
        ("import os\nimport sys\n", decodekit.Sampling(seed=2, n=2, temperature=0.7, top_p=0.9, speculative=speculative)),
        ("class A:\n    pass\n", decodekit.Greedy(speculative=speculative)),
        ("for i in range(3):\n", decodekit.Sampling(seed=3, top_k=40, speculative=speculative)),
    ]
    options = decodekit.DecodeOptions(max_new_tokens=30)
    engine = Engine(model)
    handles = []
    for text, strategy in specs:
        handles += engine.submit([Request(embedded.encode(text), strategy, options)])
        engine.step()
        assert len(engine._speculative) == 1 and not engine._pending  # joined, not queued
    results = [h.result() for h in handles]
    for (text, strategy), result in zip(specs, results):
        same(alone(model, embedded.encode(text), strategy, options), result)


def test_a_draft_model_chain_run_takes_requests_with_samplers_of_their_own(embedded):
    """A draft model drafts each row's chain with the row's own sampler, so greedy and sampled
    requests with different settings join one run, and each decodes what it does alone."""
    model = embedded.model
    speculative = Speculative("draft")
    prompt = embedded.encode("x = 1\nx = 1\n")
    options = decodekit.DecodeOptions(max_new_tokens=16)
    strategies = [decodekit.Greedy(speculative=speculative), decodekit.Sampling(seed=1, speculative=speculative),
                  decodekit.Sampling(seed=2, temperature=0.7, top_p=0.9, speculative=speculative)]
    engine = Engine(model)
    handles, widest = [], 0
    for strategy in strategies:
        handles += engine.submit([Request(prompt, strategy, options)])
        engine.step()
        assert not engine._pending
        widest = max([widest] + [len(g.members) for g in engine._speculative])
    assert widest == 3
    for strategy, handle in zip(strategies, handles):
        same(alone(model, prompt, strategy, options), handle.result())


def test_a_draft_model_tree_run_takes_only_requests_of_its_own_sampler(embedded):
    """A draft model's trees are drawn with the run's sampler, so a request with another one
    waits for the proposer."""
    model = embedded.model
    speculative = Speculative("draft", DraftModelConfig(branching=(2, 2)))
    prompt = embedded.encode("x = 1\nx = 1\n")
    options = decodekit.DecodeOptions(max_new_tokens=16)
    engine = Engine(model)
    (a,) = engine.submit([Request(prompt, decodekit.Greedy(speculative=speculative), options)])
    engine.step()
    (b,) = engine.submit([Request(prompt, decodekit.Sampling(seed=1, speculative=speculative), options)])
    engine.step()
    assert len(engine._pending) == 1
    same(alone(model, prompt, decodekit.Sampling(seed=1, speculative=speculative), options), b.result())
    assert a.result().hypotheses


def test_two_speculative_runs_verify_in_one_forward(embedded):
    """Runs of two proposers with no plain rows beside them: their blocks are the parts of one
    forward per step, and each request decodes what it does alone."""
    model = embedded.model
    specs = [
        (embedded.encode("x = 1\nx = 1\nx = 1\n"), decodekit.Greedy(speculative=Speculative("suffix"))),
        (embedded.encode("def f(a, b):\n    return a"), decodekit.Sampling(seed=3, top_k=30, speculative=Speculative("ngram"))),
    ]
    options = decodekit.DecodeOptions(max_new_tokens=24)
    engine = Engine(model)
    handles = [h for prompt, strategy in specs for h in engine.submit([Request(prompt, strategy, options)])]
    counter = Counting(model)
    shared = 0
    try:
        while not all(h.done for h in handles):
            both = len(engine._speculative) == 2 and all(g.fusable for g in engine._speculative)
            before, verified = model.forward_count, len(counter.rows)
            engine.step()
            if both:
                assert model.forward_count - before == 1
                assert len(counter.rows) == verified  # no verification forward of either run's own
                shared += 1
    finally:
        counter.close()
    assert shared >= 3
    for (prompt, strategy), handle in zip(specs, handles):
        same(alone(model, prompt, strategy, options), handle.result())


def test_more_proposers_in_use_than_the_bound_all_decode(embedded):
    """Runs of more distinct proposer configs at once than ``proposers`` keeps: none is evicted
    while in use (the bound holds again once they are free), and each decodes as alone."""
    model = embedded.model
    prompt = embedded.encode("x = 1\nx = 1\nx = 1\n")
    strategies = [decodekit.Greedy(speculative=Speculative(kind)) for kind in ("suffix", "ngram", "recycling")]
    options = decodekit.DecodeOptions(max_new_tokens=12)
    engine = Engine(model, proposers=1)
    handles = [h for s in strategies for h in engine.submit([Request(prompt, s, options)])]
    results = [h.result() for h in handles]
    assert len(engine._proposers) <= 3
    for strategy, result in zip(strategies, results):
        same(alone(model, prompt, strategy, options), result)
    (handle,) = engine.submit([Request(prompt, decodekit.Greedy(speculative=Speculative("ngram", PromptLookupConfig(num_tokens=3))), options)])
    handle.result()
    assert len(engine._proposers) == 1  # the idle ones evicted by the next new one
