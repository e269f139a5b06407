"""The engine: continuous batching, per-request randomness, threads, abort, isolation.

Every check compares a request decoded together with others (submitted at other times, from
other threads, in other positions of a batch) with the same request decoded alone."""

from __future__ import annotations

import dataclasses
import math
import random
import threading

import pytest
import tiny_models as tm
import torch

import decodekit
from decodekit.constraints import JsonSchema
from decodekit.engine import AbortedError, Engine, Request
from decodekit.errors import NumericalError
from decodekit.model.hf import HFLanguageModel
from decodekit.model.scripted import ScriptedModel
from decodekit.speculative import Speculative


@pytest.fixture(scope="module")
def embedded():
    return decodekit.load()


def fresh(decoder):
    """A decoder over the same model with an engine of its own (nothing else in flight)."""
    return decodekit.Decoder(decoder.model, decoder.tokenizer)


def same(a, b) -> None:
    assert [s.token_ids for s in a.sequences] == [s.token_ids for s in b.sequences]
    assert [s.finish_reason for s in a.sequences] == [s.finish_reason for s in b.sequences]
    assert [s.score for s in a.sequences] == pytest.approx([s.score for s in b.sequences], abs=1e-4)


SEEDED = {
    "sampling": decodekit.Sampling(seed=5, top_k=20),
    "n-samples": decodekit.Sampling(n=3, seed=7, temperature=0.9, top_p=0.9),
    "beam-sampling": decodekit.BeamSearch(num_beams=3, num_return_sequences=2, sampler=decodekit.Sampling(seed=2, temperature=0.8)),
    "speculative-suffix": decodekit.Sampling(seed=4, top_k=30, speculative=Speculative("suffix")),
    "speculative-ngram": decodekit.Sampling(seed=4, top_p=0.9, speculative=Speculative("ngram")),
    "speculative-draft": decodekit.Sampling(seed=9, speculative=Speculative("draft")),
}


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seeded_request_is_the_same_alone_in_a_batch_and_at_any_position(embedded, name):
    strategy, P, Q = SEEDED[name], "def parse(line):", "import sys\n"
    alone = fresh(embedded).generate(P, strategy, max_new_tokens=16)
    after_other = embedded.generate([Q, P], strategy, max_new_tokens=16)[1]
    twice = embedded.generate([P, P], strategy, max_new_tokens=16)
    for together in (after_other, *twice):
        same(alone, together)
    # the seed decides: another seed gives other draws
    other = dataclass_replace_seed(strategy, 1234)
    assert fresh(embedded).generate(P, other, max_new_tokens=16).sequences != alone.sequences


def dataclass_replace_seed(strategy, seed):
    if getattr(strategy, "sampler", None) is not None:
        return dataclasses.replace(strategy, sampler=dataclasses.replace(strategy.sampler, seed=seed))
    return dataclasses.replace(strategy, seed=seed)


def mixed_requests():
    schema = JsonSchema({"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]})
    prompts = ["def f(x):", "class A:", "import os\n", "for i in range(3):", "x = [", "def g():\n    return"]
    kinds = [
        ("greedy", decodekit.Greedy(), None),
        ("sample-a", decodekit.Sampling(seed=1, temperature=0.7), None),
        ("sample-b", decodekit.Sampling(seed=2, top_p=0.8, n=2), None),
        ("beam", decodekit.BeamSearch(num_beams=3, num_return_sequences=2), None),
        ("diverse", decodekit.DiverseBeamSearch(num_beams=4, num_groups=2, num_return_sequences=2), None),
        ("suffix", decodekit.Greedy(speculative=Speculative("suffix")), None),
        ("json", decodekit.Greedy(), schema),
        ("penalised", decodekit.Greedy(), None),
    ]
    out = []
    for i in range(56):
        name, strategy, constraint = kinds[i % len(kinds)]
        settings = {"max_new_tokens": 8 + i % 7}
        if name == "penalised":
            settings["repetition_penalty"] = 1.3
        out.append((prompts[i % len(prompts)], strategy, constraint, settings))
    return out


def test_56_mixed_requests_from_8_threads_equal_each_request_alone(embedded):
    requests = mixed_requests()
    decoder = fresh(embedded)
    results: dict[int, object] = {}
    errors = []
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.2) for _ in requests]

    def worker(indices):
        import time

        for i in indices:
            time.sleep(delays[i])
            prompt, strategy, constraint, settings = requests[i]
            try:
                results[i] = decoder.generate(prompt, strategy, constraint=constraint, **settings)
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(list(range(k, len(requests), 8)),)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(results) == len(requests)
    alone_decoder = fresh(embedded)
    for i, (prompt, strategy, constraint, settings) in enumerate(requests):
        same(alone_decoder.generate(prompt, strategy, constraint=constraint, **settings), results[i])


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_requests_admitted_mid_flight_share_one_forward_and_match_alone(builder):
    model = HFLanguageModel(tm.BUILDERS[builder]())
    options = decodekit.DecodeOptions(max_new_tokens=10)
    specs = [
        ([5, 6, 7, 8, 9, 10, 11], decodekit.BeamSearch(num_beams=3, num_return_sequences=2)),
        ([3, 4], decodekit.Greedy()),
        ([12, 13, 14, 15], decodekit.Sampling(seed=3, top_k=10)),
        ([7] * 11, decodekit.DiverseBeamSearch(num_beams=4, num_groups=2)),
    ]
    engine = Engine(model)
    handles = []
    for prompt, strategy in specs:
        handles += engine.submit([Request(prompt, strategy, options)])
        for _ in range(3):
            engine.step()
        assert len(engine._partitions) == 1  # every running row is in one state: one forward per step
    outputs = [h.result().hypotheses for h in handles]
    for (prompt, strategy), together in zip(specs, outputs):
        (alone,) = Engine(model).submit([Request(prompt, strategy, options)])
        hyps = alone.result().hypotheses
        assert [h.token_ids for h in hyps] == [h.token_ids for h in together]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in together], abs=1e-4)


def test_encoder_decoder_requests_run_together_and_match_alone():
    model = HFLanguageModel(tm.BUILDERS["bart"]())
    options = decodekit.DecodeOptions(max_new_tokens=6)
    specs = [([5, 6, 7], decodekit.Greedy()), ([8, 9, 10, 11, 12], decodekit.BeamSearch(num_beams=2))]
    engine = Engine(model)
    handles = [h for prompt, strategy in specs for h in engine.submit([Request(prompt, strategy, options)])]
    for (prompt, strategy), handle in zip(specs, handles):
        (alone,) = Engine(model).submit([Request(prompt, strategy, options)])
        assert [h.token_ids for h in alone.result().hypotheses] == [h.token_ids for h in handle.result().hypotheses]


def test_abort_frees_the_rows_and_fails_the_request():
    model = HFLanguageModel(tm.BUILDERS["gpt2"]())
    engine = Engine(model)
    options = decodekit.DecodeOptions(max_new_tokens=40, min_new_tokens=40)
    long, short = engine.submit([Request([3, 4, 5], decodekit.Greedy(), options)])[0], None
    engine.step()
    (short,) = engine.submit([Request([6, 7], decodekit.BeamSearch(num_beams=2), decodekit.DecodeOptions(max_new_tokens=4))])
    engine.step()
    assert engine.running_rows == 3
    long.abort()
    with pytest.raises(AbortedError):
        long.result()
    engine.step()
    assert engine.running_rows == 2
    assert len(short.result().hypotheses) == 1
    assert engine.running_rows == 0


def test_an_aborted_request_leaves_at_once_when_nobody_steps():
    """Regression: rows of an aborted request waited for some later request to step them out
    (a server whose client disconnected kept its rows until the next request arrived)."""
    model = HFLanguageModel(tm.BUILDERS["llama"]())
    engine = Engine(model)
    options = decodekit.DecodeOptions(max_new_tokens=30, min_new_tokens=30)
    greedy = engine.submit([Request([3, 4, 5], decodekit.Greedy(), options), Request([8, 9], decodekit.Greedy(), options)])
    (beam,) = engine.submit([Request([6, 7], decodekit.BeamSearch(num_beams=2), options)])
    for _ in range(3):
        engine.step()
    assert engine.running_rows == 4
    greedy[0].abort()  # one member of the greedy pool
    assert engine.running_rows == 3
    beam.abort()  # a whole plain group
    assert engine.running_rows == 1
    alone = Engine(model).submit([Request([8, 9], decodekit.Greedy(), options)])[0].result()
    assert greedy[1].result().hypotheses[0].token_ids == alone.hypotheses[0].token_ids
    assert engine.running_rows == 0


def test_leaving_a_stream_early_aborts_its_request(embedded):
    decoder = fresh(embedded)
    events = decoder.stream("def f(x):", max_new_tokens=50, min_new_tokens=50)
    next(events)
    events.close()
    assert decoder.engine.running_rows == 0 or all(
        h.done for p in decoder.engine._partitions for g in p.groups for h in g.handles
    )
    decoder.engine.step()
    assert decoder.engine.running_rows == 0


def test_non_finite_logits_fail_only_their_own_request():
    def next_logprobs(seq):
        values = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        if len(seq) == 4 and seq[0] == 2:
            values[1] = math.nan
        return values

    decoder = decodekit.load(ScriptedModel(6, next_logprobs, eos_token_ids=(0,)))
    engine = decoder.engine
    sampled = Request([1, 3], decodekit.Sampling(seed=1), decodekit.DecodeOptions(max_new_tokens=5))
    bad, good = engine.submit([Request([2, 3], decodekit.Greedy(), decodekit.DecodeOptions(max_new_tokens=5)), sampled])
    with pytest.raises(NumericalError, match="step 2"):
        bad.result()
    (alone,) = engine.submit([dataclasses.replace(sampled)])
    assert good.result().hypotheses[0].token_ids == alone.result().hypotheses[0].token_ids


def test_speculative_calls_from_threads_are_lossless(embedded):
    decoder = fresh(embedded)
    prompts = ["def f(x):\n    return x", "class A:\n    pass", "import os\nimport sys", "x = 1\nx = 1\n"]
    plain = {p: fresh(embedded).generate(p, max_new_tokens=20).best.token_ids for p in prompts}
    outputs, errors = [], []

    def worker(k):
        try:
            for j in range(3):
                proposer = ("suffix", "ngram", "recycling")[(k + j) % 3]
                p = prompts[(k + j) % len(prompts)]
                got = decoder.generate(p, decodekit.Greedy(speculative=Speculative(proposer)), max_new_tokens=20)
                outputs.append((p, got.best.token_ids))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(outputs) == 12
    assert all(tokens == plain[p] for p, tokens in outputs)


def test_proposers_are_kept_in_a_bounded_cache(embedded):
    decoder = fresh(embedded)
    from decodekit.speculative.config import PromptLookupConfig

    for n in range(1, 8):
        strategy = decodekit.Greedy(speculative=Speculative("ngram", PromptLookupConfig(max_ngram=n + 1, min_ngram=1)))
        decoder.generate([1, 2, 3, 1, 2], strategy, max_new_tokens=3)
    assert len(decoder.engine._proposers) <= decoder.engine.max_proposers


def test_diverse_beam_stream_ends_with_the_n_best_of_generate(embedded):
    decoder = fresh(embedded)
    config = decodekit.DiverseBeamSearch(num_beams=4, num_groups=2, num_return_sequences=4)
    events = list(decoder.stream("def f(x):", config, max_new_tokens=6))
    final = decoder.generate("def f(x):", config, max_new_tokens=6)
    assert len(events) >= 2 and all(e.hypothesis for e in events)
    assert events[-1].result.sequences == final.sequences


def test_unseeded_sampling_stays_random(embedded):
    decoder = fresh(embedded)
    outs = {tuple(decoder.generate("x = ", decodekit.Sampling(), max_new_tokens=12).best.token_ids) for _ in range(4)}
    assert len(outs) > 1


def test_submit_checks_settings_before_any_model_call():
    model = HFLanguageModel(tm.BUILDERS["gpt2"]())
    calls = []
    model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    engine = Engine(model)
    with pytest.raises(decodekit.ConfigError):
        engine.submit([Request([1, 2], decodekit.Sampling(temperature=0))])
    with pytest.raises(decodekit.ConfigError):
        engine.submit([Request([1, 2], decodekit.Greedy(), decodekit.DecodeOptions(max_new_tokens=0))])
    with pytest.raises(decodekit.InputError):
        engine.submit([Request([10**6], decodekit.Greedy())])
    assert not calls and engine.queued == 0
    torch.manual_seed(0)


def test_a_decoding_with_shared_processors_is_one_group(embedded):
    """Prompts decoded together with extra processors (e.g. one constraint processor for all
    their rows) form one group: the processor is reset once for every row."""
    from decodekit.constraints import constraint_processor
    from decodekit.engine import Decoding

    tokenizer, model = embedded.tokenizer, embedded.model
    processor = constraint_processor(JsonSchema({"type": "array", "items": {"type": "integer"}}), "greedy", tokenizer, model.vocab_size, model.eos_token_ids, 16)
    prompts = [embedded.encode(p) for p in ("x = ", "values = ", "data = ")]
    decoding = Decoding(model, prompts, decodekit.Greedy(), decodekit.DecodeOptions(max_new_tokens=16), processors=[processor])
    engine = decoding.engine
    assert len(engine._pending) == 1  # one group
    hyps = decoding.results()
    for prompt, got in zip(prompts, hyps):
        alone_processor = constraint_processor(JsonSchema({"type": "array", "items": {"type": "integer"}}), "greedy", tokenizer, model.vocab_size, model.eos_token_ids, 16)
        (want,) = Decoding(model, [prompt], decodekit.Greedy(), decodekit.DecodeOptions(max_new_tokens=16), processors=[alone_processor]).results()
        assert got[0].token_ids == want[0].token_ids


def test_the_shared_state_stays_bounded_under_a_stream_of_requests():
    """Requests arriving and leaving for hundreds of steps: the holes they leave are
    compacted, so the state's length stays near what the running rows hold."""
    model = HFLanguageModel(tm.BUILDERS["gpt2"]())
    engine = Engine(model)
    options = decodekit.DecodeOptions(max_new_tokens=20, min_new_tokens=20)
    handles, longest = [], 0
    for step in range(400):
        if step % 5 == 0:
            handles += engine.submit([Request([3 + step % 40, 4, 5], decodekit.Greedy(), options)])
        engine.step()
        if engine._partitions:
            longest = max(longest, engine._partitions[0].state.extra["length"])
    assert all(h.result().hypotheses[0].token_ids for h in handles)
    assert longest < 200  # without compaction: about 400
    (alone,) = Engine(model).submit([Request([3 + 395 % 40, 4, 5], decodekit.Greedy(), options)])
    assert alone.result().hypotheses[0].token_ids == handles[-1].result().hypotheses[0].token_ids


def test_stop_strings_in_the_row_pool_equal_the_per_group_path(embedded):
    """Requests with stop strings share the vectorised pool; a never-firing stopping criterion
    keeps the same requests out of it (the per-group path): the outputs are the same."""
    decoder = fresh(embedded)
    prompts = ["def f(x):", "import os\n", "class A:", "for i in"]
    never = [lambda ids, scores: torch.zeros(ids.shape[0], dtype=torch.bool)]
    cases = [("greedy", {}), (decodekit.Sampling(seed=3, n=2, top_p=0.9), {})]
    for strategy, extra in cases:
        settings = dict(max_new_tokens=24, stop=["\n", "(", " = "], **extra)
        pending = decoder.submit(prompts, strategy, **settings) + decoder.submit(prompts, strategy, max_new_tokens=24)
        assert all(entry.poolable for entry in decoder.engine._pending)  # nothing stepped yet
        pooled = [p.result() for p in pending[: len(prompts)]]
        per_group = decoder.generate(prompts, strategy, stopping=never, **settings)
        for a, b in zip(pooled, per_group):
            assert [(s.token_ids, s.text, s.finish_reason) for s in a.sequences] == [(s.token_ids, s.text, s.finish_reason) for s in b.sequences]
        assert any(s.finish_reason == "stop" for r in pooled for s in r.sequences)
        [p.result() for p in pending[len(prompts):]]


def test_background_driving_gives_the_same_outputs_and_stops_cleanly(embedded):
    decoder = fresh(embedded)
    prompts = ["def f(x):", "import os\n", "class A:", "x = [", "for i in", "while True:"]
    expected = [decoder.generate(p, decodekit.Sampling(seed=i, top_p=0.9), max_new_tokens=12).best.token_ids for i, p in enumerate(prompts)]
    decoder.engine.run_in_background()
    try:
        out: dict[int, list[int]] = {}

        def worker(i: int) -> None:
            out[i] = decoder.generate(prompts[i], decodekit.Sampling(seed=i, top_p=0.9), max_new_tokens=12).best.token_ids

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert [out[i] for i in range(len(prompts))] == expected
        events = list(decoder.stream(prompts[0], max_new_tokens=5))
        assert events[-1].finish_reason is not None
    finally:
        decoder.engine.stop_background()
    assert not decoder.engine.in_background and decoder.engine.running_rows == 0
    assert decoder.generate(prompts[1], decodekit.Sampling(seed=1, top_p=0.9), max_new_tokens=12).best.token_ids == expected[1]
