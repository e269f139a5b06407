"""Continuous batching for beam search and Diverse Beam Search: separately arrived searches of
one config share one pool (one vectorised decision per step), and each equals the same request decoded alone
(itself parity-tested against ``generate``), is delivered as soon as its n-best is final, and
fails or leaves alone."""

from __future__ import annotations

import math

import pytest
import tiny_models as tm

import decodekit
from decodekit.engine import AbortedError, Engine, Request
from decodekit.engine.beam_pool import BeamPool
from decodekit.errors import NumericalError
from decodekit.model.hf import HFLanguageModel
from decodekit.model.scripted import ScriptedModel

CONFIGS = {
    "default": decodekit.BeamSearch(num_beams=3, num_return_sequences=2),
    "long-never": decodekit.BeamSearch(num_beams=4, num_return_sequences=3, length_penalty=2.0, early_stopping="never"),
    "short-early": decodekit.BeamSearch(num_beams=2, length_penalty=-0.5, early_stopping=True),
    "gnmt": decodekit.BeamSearch(num_beams=3, length_penalty=0.6, length_penalty_form="gnmt"),
    "sampled": decodekit.BeamSearch(num_beams=3, num_return_sequences=2, sampler=decodekit.Sampling(seed=5, temperature=0.9, top_k=20)),
    "diverse": decodekit.DiverseBeamSearch(num_beams=4, num_groups=2, num_return_sequences=3),
    "diverse-never": decodekit.DiverseBeamSearch(num_beams=6, num_groups=3, diversity_strength=1.5, length_penalty=1.5, early_stopping="never"),
    "diverse-per-group": decodekit.DiverseBeamSearch(num_beams=6, num_groups=3, per_group=True, num_return_sequences=2, early_stopping=True),
}


def pools(engine: Engine) -> list[BeamPool]:
    return [g for p in engine._partitions for g in p.groups if isinstance(g, BeamPool)]


def hypotheses(output):
    return [(h.token_ids, h.finish_reason, h.top_logprobs and [ids for ids, _ in h.top_logprobs]) for h in output.hypotheses], [h.score for h in output.hypotheses]


def stop_check(generated):
    """A stop check as stop strings are: does a candidate's generated text hold the stop
    (here: a token id that is 1 modulo 4)?"""
    return (generated % 4 == 1).any(-1)


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
@pytest.mark.parametrize("name", sorted(CONFIGS) + ["top-logprobs", "stop", "processors", "diverse-processors"])
def test_beam_searches_arriving_at_different_steps_share_a_pool_and_equal_each_alone(builder, name):
    model = HFLanguageModel(tm.BUILDERS[builder]())
    strategy = CONFIGS.get(name, decodekit.BeamSearch(num_beams=3, num_return_sequences=3))
    prompts = tm.prompts(11, 6)
    top = 3 if name == "top-logprobs" else 0
    stop, check = (("<stop>",), stop_check) if name == "stop" else ((), None)
    penalties = {}
    if name.endswith("processors"):  # the processors that read only a row's tokens
        penalties = dict(repetition_penalty=1.5, no_repeat_ngram_size=2, suppress_tokens=(5,), bad_words=((9, 10),))
        strategy = CONFIGS["diverse"] if name.startswith("diverse") else CONFIGS["default"]
    options = [decodekit.DecodeOptions(max_new_tokens=8 + 2 * i, min_new_tokens=6 if i % 2 else 0, top_logprobs=top, stop=stop, **penalties)
               for i in range(6)]
    engine = Engine(model)
    handles, widest = [], 0
    for prompt, option in zip(prompts, options):
        handles += engine.submit([Request(prompt, strategy, option, stop_check=check)])
        for _ in range(1 + len(handles) % 2):
            engine.step()
            widest = max([widest] + [len(p.members) for p in pools(engine)])
    assert widest >= 3  # requests submitted steps apart were decided together
    reasons = set()
    for prompt, option, handle in zip(prompts, options, handles):
        (alone,) = Engine(model).submit([Request(prompt, strategy, option, stop_check=check)])
        expected, scores = hypotheses(alone.result())
        got, got_scores = hypotheses(handle.result())
        assert got == expected
        assert got_scores == pytest.approx(scores, abs=1e-4)
        reasons |= {h.finish_reason for h in handle.result().hypotheses}
    if name == "stop":
        assert "stop" in reasons  # the stop check ended candidates, so the test tests something


def test_a_pooled_request_leaves_with_its_rows_as_soon_as_its_n_best_is_final():
    model = HFLanguageModel(tm.BUILDERS["llama"]())
    strategy = decodekit.BeamSearch(num_beams=3)
    engine = Engine(model)
    (long,) = engine.submit([Request([5, 6, 7], strategy, decodekit.DecodeOptions(max_new_tokens=30, min_new_tokens=30))])
    engine.step()
    (short,) = engine.submit([Request([8, 9], strategy, decodekit.DecodeOptions(max_new_tokens=3, min_new_tokens=3))])
    for _ in range(5):
        engine.step()
    assert short.done and not long.done
    assert engine.running_rows == 3
    assert [len(h.token_ids) for h in short.result().hypotheses] == [3]
    (alone,) = Engine(model).submit([Request([8, 9], strategy, decodekit.DecodeOptions(max_new_tokens=3, min_new_tokens=3))])
    assert hypotheses(short.result())[0] == hypotheses(alone.result())[0]
    assert len(long.result().hypotheses[0].token_ids) == 30


def test_aborting_one_pooled_request_frees_only_its_rows():
    model = HFLanguageModel(tm.BUILDERS["gpt2"]())
    strategy = decodekit.BeamSearch(num_beams=2)
    options = decodekit.DecodeOptions(max_new_tokens=20, min_new_tokens=20)
    engine = Engine(model)
    (first,) = engine.submit([Request([3, 4, 5], strategy, options)])
    engine.step()
    (second,) = engine.submit([Request([6, 7], strategy, options)])
    engine.step()
    engine.step()
    assert engine.running_rows == 4 and len(pools(engine)[0].members) == 2
    first.abort()
    assert engine.running_rows == 2
    with pytest.raises(AbortedError):
        first.result()
    (alone,) = Engine(model).submit([Request([6, 7], strategy, options)])
    assert hypotheses(second.result())[0] == hypotheses(alone.result())[0]
    assert engine.running_rows == 0


def test_non_finite_logits_fail_only_their_own_pooled_request():
    def next_logprobs(seq):
        values = [0.0, 0.0, 0.5, 1.0, 0.25, 0.0]
        if len(seq) == 4 and seq[0] == 2:
            values[1] = math.nan
        return values

    model = ScriptedModel(6, next_logprobs, eos_token_ids=(0,))
    strategy = decodekit.BeamSearch(num_beams=2)
    options = decodekit.DecodeOptions(max_new_tokens=5)
    engine = Engine(model)
    (bad,) = engine.submit([Request([2, 3], strategy, options)])
    (good,) = engine.submit([Request([1, 3], strategy, options)])
    engine.step()
    assert len(pools(engine)[0].members) == 2
    with pytest.raises(NumericalError, match="step 2"):
        bad.result()
    (alone,) = Engine(model).submit([Request([1, 3], strategy, options)])
    assert hypotheses(good.result()) == hypotheses(alone.result())


def test_a_pooled_stream_counts_its_own_steps_from_zero():
    model = HFLanguageModel(tm.BUILDERS["llama"]())
    strategy = decodekit.BeamSearch(num_beams=2)
    options = decodekit.DecodeOptions(max_new_tokens=8, min_new_tokens=8)
    engine = Engine(model)
    (first,) = engine.submit([Request([3, 4, 5], strategy, options)])
    for _ in range(3):
        engine.step()
    (late,) = engine.submit([Request([6, 7], strategy, options, stream=True)])
    events = [e for e in late if e.kind == "best"]
    assert [e.step for e in events] == list(range(8))
    assert [len(e.tokens) for e in events] == list(range(1, 9))
    assert first.result() is not None
