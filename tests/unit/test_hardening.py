"""Bad input of every kind is a named DecodeKitError before any model call; accepted input
never ends in a raw exception, a hang or garbage. Regressions for each class of repro, then
property-based fuzzing of every config field and argument (hypothesis, derandomised)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tiny_models as tm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decodekit
from decodekit.constraints import Catalog, Grammar, JsonSchema, Regex
from decodekit.errors import ConfigError, DecodeKitError, InputError
from decodekit.model.scripted import ScriptedModel
from decodekit.speculative import PromptLookupConfig, RecyclingConfig, Speculative, SuffixConfig

VOCAB = 6


def counting_decoder():
    """A text decoder whose model counts its forwards."""
    model = tm.text_model()
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    return decodekit.load(model, tm.byte_tokenizer()), calls


@pytest.fixture(scope="module")
def decoder():
    return counting_decoder()


BAD_STRATEGIES = [
    (lambda: decodekit.Sampling(temperature=""), "temperature"),
    (lambda: decodekit.Sampling(temperature=1e-45), "temperature"),
    (lambda: decodekit.Sampling(seed="x"), "seed"),
    (lambda: decodekit.Sampling(seed=2**63), "seed"),
    (lambda: decodekit.Sampling(seed=math.inf), "seed"),
    (lambda: decodekit.Sampling(top_k=math.inf), "top_k"),
    (lambda: decodekit.Sampling(top_k=10**30), "top_k"),  # past int64: never a tensor entry
    (lambda: decodekit.Sampling(n=True), "n"),
    (lambda: decodekit.Sampling(n=10**7), "n"),
    (lambda: decodekit.BeamSearch(num_beams=True), "num_beams"),
    (lambda: decodekit.BeamSearch(num_beams=10**8), "num_beams"),
    (lambda: decodekit.BeamSearch(sampler=5), "sampler"),
    (lambda: decodekit.BeamSearch(length_penalty=1e300), "length_penalty"),
    (lambda: decodekit.BeamSearch(length_penalty=2**70), "length_penalty"),
    (lambda: decodekit.BeamSearch(length_penalty=math.inf), "length_penalty"),
    (lambda: decodekit.BeamSearch(length_penalty=-math.inf), "length_penalty"),
    (lambda: decodekit.Greedy(speculative=Speculative(["suffix"])), "speculative.proposer"),
    (lambda: decodekit.Greedy(speculative=Speculative("suffix", SuffixConfig(max_spec_factor=math.inf))), "speculative.config.max_spec_factor"),
    (lambda: decodekit.Greedy(speculative=Speculative("ngram", PromptLookupConfig(max_ngram=2**63))), "speculative.config.max_ngram"),
    (lambda: decodekit.Greedy(speculative=Speculative("recycling", RecyclingConfig(branching=(8, 8, 8, 8)))), "speculative.config.branching"),
    (lambda: decodekit.Greedy(speculative=Speculative("recycling", RecyclingConfig(top_k=6145))), "speculative.config.top_k"),
]


@pytest.mark.parametrize(("make", "field"), BAD_STRATEGIES, ids=[f for _, f in BAD_STRATEGIES])
def test_bad_strategy_settings_name_the_field_before_any_forward(decoder, make, field):
    dec, calls = decoder
    before = len(calls)
    with pytest.raises(ConfigError) as error:
        dec.generate("ab", make(), max_new_tokens=3)
    assert error.value.field == field
    assert len(calls) == before


BAD_OPTIONS = [
    ({"eos_token_ids": 2}, "eos_token_ids"),
    ({"stop": None}, "stop"),
    ({"bad_words": (1,)}, "bad_words"),
    ({"suppress_tokens": [True]}, "suppress_tokens"),
    ({"force_eos_at_max_length": "no"}, "force_eos_at_max_length"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"repetition_penalty": 1e-45}, "repetition_penalty"),
    ({"repetition_penalty": math.nan}, "repetition_penalty"),
    ({"stop": ["\ud800"]}, "stop"),
]


@pytest.mark.parametrize(("settings_", "field"), BAD_OPTIONS, ids=[f + str(i) for i, (_, f) in enumerate(BAD_OPTIONS)])
def test_bad_options_name_the_field_before_any_forward(decoder, settings_, field):
    dec, calls = decoder
    before = len(calls)
    with pytest.raises(ConfigError) as error:
        dec.generate("ab", **settings_)
    assert error.value.field == field
    assert len(calls) == before


BAD_PROMPTS = ["\ud800", 5, [1.5], [5, "a"], {"a": 1}, b"abc", [], "", [[]], np.zeros((2, 2, 2), dtype=np.int64), None]


@pytest.mark.parametrize("prompt", BAD_PROMPTS, ids=[repr(p)[:20] for p in BAD_PROMPTS])
def test_bad_prompts_are_input_errors(decoder, prompt):
    dec, calls = decoder
    before = len(calls)
    with pytest.raises(InputError):
        dec.generate(prompt, max_new_tokens=2)
    assert len(calls) == before


def test_one_dimensional_arrays_are_one_prompt(decoder):
    dec, _ = decoder
    ids = [100, 101, 102]
    want = dec.generate(ids, max_new_tokens=3).best.token_ids
    assert dec.generate(torch.tensor(ids), max_new_tokens=3).best.token_ids == want
    assert dec.generate(np.array(ids), max_new_tokens=3).best.token_ids == want
    batch = dec.generate(torch.tensor([ids, ids]), max_new_tokens=3)
    assert [r.best.token_ids for r in batch] == [want, want]


def test_wrong_strategy_and_options_objects(decoder):
    dec, _ = decoder
    for call, field in ((lambda: dec.generate("ab", 5), "strategy"), (lambda: dec.generate("ab", options=5), "options")):
        with pytest.raises(ConfigError) as error:
            call()
        assert error.value.field == field


def test_a_stop_string_is_one_stop_string(decoder):
    dec, _ = decoder
    plain = dec.generate("ab", max_new_tokens=12).best.text
    stop = plain[3:5]
    assert dec.generate("ab", max_new_tokens=12, stop=stop).best.text == plain[: plain.find(stop)]


BAD_CONSTRAINTS = [lambda: Catalog(5), lambda: Catalog([["a"]]), lambda: JsonSchema({"enum": [{1, 2}]}), lambda: JsonSchema(False), lambda: JsonSchema(3), lambda: 7]


@pytest.mark.parametrize("make", BAD_CONSTRAINTS)
def test_bad_constraints_are_config_errors(decoder, make):
    dec, calls = decoder
    before = len(calls)
    with pytest.raises(ConfigError):
        dec.generate("ab", constraint=make(), max_new_tokens=3)
    assert len(calls) == before


def test_a_grammar_llguidance_cannot_follow_ends_with_finish_reason_constraint(decoder):
    dec, _ = decoder
    for constraint in (Regex("a{99999999}"), Grammar('start: a\na: "x" a')):
        result = dec.generate("ab", constraint=constraint, max_new_tokens=4)
        assert result.best.finish_reason == "constraint"
        assert result.best.constraint["valid"] is False


def test_the_boolean_schema_true_allows_any_json(decoder):
    import json

    dec, _ = decoder
    result = dec.generate("ab", constraint=JsonSchema(True), max_new_tokens=24)
    if result.best.finish_reason == "eos":
        json.loads(result.best.text)
    assert result.best.finish_reason in ("eos", "constraint", "length")


def test_compiled_grammars_share_one_bounded_thread_pool(decoder):
    import os

    dec, _ = decoder
    for i in range(12):
        dec.generate("ab", constraint=JsonSchema({"type": "object", "properties": {f"k{i}": {"type": "integer"}}}), max_new_tokens=2)
    before = len(os.listdir(f"/proc/{os.getpid()}/task"))
    for i in range(12, 40):
        dec.generate("ab", constraint=JsonSchema({"type": "object", "properties": {f"k{i}": {"type": "integer"}}}), max_new_tokens=2)
    assert len(os.listdir(f"/proc/{os.getpid()}/task")) <= before + 1


def test_rows_with_no_possible_token_end_with_finish_reason_constraint():
    decoder = decodekit.load(ScriptedModel(VOCAB, lambda seq: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], eos_token_ids=(0,)))
    everything = tuple(range(VOCAB))
    for strategy in (decodekit.Greedy(), decodekit.Sampling(seed=1)):
        best = decoder.generate([1], strategy, max_new_tokens=3, suppress_tokens=everything).best
        assert best.finish_reason == "constraint" and best.token_ids == []
        assert all(math.isfinite(x) for x in best.token_logprobs)


def test_beam_n_best_holds_only_real_hypotheses():
    # only token 1 then EOS is possible: one hypothesis exists, three are asked for
    def next_logprobs(seq):
        return [0.0, -math.inf, -math.inf, -math.inf] if len(seq) > 1 else [-math.inf, 0.0, -math.inf, -math.inf]

    decoder = decodekit.load(ScriptedModel(4, next_logprobs, eos_token_ids=(0,)))
    result = decoder.generate([2], decodekit.BeamSearch(num_beams=3, num_return_sequences=3), max_new_tokens=4)
    assert [s.token_ids for s in result.sequences] == [[1, 0]]
    assert all(s.score > -1e8 for s in result.sequences)


def test_many_eos_ids_with_beams_decode(decoder):
    dec, _ = decoder
    vocab = dec.model.vocab_size
    result = dec.generate("ab", decodekit.BeamSearch(num_beams=2, num_return_sequences=2), max_new_tokens=3, eos_token_ids=tuple(range(vocab)))
    assert 1 <= len(result.sequences) <= 2 and all(s.finish_reason == "eos" for s in result.sequences)


def test_json_schema_keeps_the_property_order():
    schema = {"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "integer"}}, "required": ["zeta", "alpha"]}
    assert JsonSchema(schema).text().index("zeta") < JsonSchema(schema).text().index("alpha")


# -- property-based fuzzing ------------------------------------------------------------------

ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10), st.integers(2**62, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3), st.lists(st.integers(-1, 8), max_size=3), st.tuples(st.integers(0, 5)), st.binary(max_size=2),
)
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "n", "seed")
BEAM_FIELDS = ("num_beams", "num_return_sequences", "length_penalty", "length_penalty_form", "early_stopping")
DIVERSE_FIELDS = ("num_beams", "num_groups", "diversity_strength", "diversity", "diversity_temperature", "ngram_size", "num_return_sequences", "per_group")
OPTION_FIELDS = ("max_new_tokens", "min_new_tokens", "eos_token_ids", "stop", "repetition_penalty", "no_repeat_ngram_size", "suppress_tokens", "bad_words", "force_eos_at_max_length")
FUZZ = settings(max_examples=200, deadline=5000, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def sane(results) -> None:
    results = results if isinstance(results, list) else [results]
    for result in results:
        assert result.sequences, "a result with no sequence"
        for s in result.sequences:
            assert s.finish_reason in ("eos", "length", "stop", "constraint")
            assert all(math.isfinite(x) for x in s.token_logprobs)
            assert math.isfinite(s.logprob)


def run_or_named_error(dec, calls, call) -> None:
    before = len(calls)
    try:
        sane(call())
    except DecodeKitError as error:
        if isinstance(error, ConfigError):
            assert error.field and error.allowed
        assert len(calls) == before, "a refusal came after a model call"


def overrides(fields):
    return st.dictionaries(st.sampled_from(fields), ANY, max_size=3)


@FUZZ
@given(config=overrides(SAMPLING_FIELDS), options=overrides(OPTION_FIELDS))
def test_fuzz_sampling(decoder, config, options):
    dec, calls = decoder
    options.setdefault("max_new_tokens", 3)
    run_or_named_error(dec, calls, lambda: dec.generate("ab", decodekit.Sampling(**config), **options))


@FUZZ
@given(config=overrides(BEAM_FIELDS), options=overrides(OPTION_FIELDS))
def test_fuzz_beam_search(decoder, config, options):
    dec, calls = decoder
    options.setdefault("max_new_tokens", 3)
    options.pop("stop", None)  # stop strings are refused with beams, tested elsewhere
    run_or_named_error(dec, calls, lambda: dec.generate("ab", decodekit.BeamSearch(**config), **options))


@FUZZ
@given(config=overrides(DIVERSE_FIELDS))
def test_fuzz_diverse_beam_search(decoder, config):
    dec, calls = decoder
    run_or_named_error(dec, calls, lambda: dec.generate("ab", decodekit.DiverseBeamSearch(**config), max_new_tokens=3))


@FUZZ
@given(prompt=st.one_of(ANY, st.lists(ANY, max_size=3), st.text(max_size=5)), options=overrides(OPTION_FIELDS))
def test_fuzz_prompts_and_greedy_options(decoder, prompt, options):
    dec, calls = decoder
    options.setdefault("max_new_tokens", 3)
    run_or_named_error(dec, calls, lambda: dec.generate(prompt, **options))


@FUZZ
@given(config=st.dictionaries(st.sampled_from(("num_tokens", "min_ngram", "max_ngram")), ANY, max_size=2), options=overrides(OPTION_FIELDS))
def test_fuzz_speculative(decoder, config, options):
    dec, calls = decoder
    options.setdefault("max_new_tokens", 3)
    strategy = decodekit.Greedy(speculative=Speculative("ngram", PromptLookupConfig(**config)))
    run_or_named_error(dec, calls, lambda: dec.generate("abab", strategy, **options))


def test_a_constraint_that_ends_before_min_new_tokens_is_not_a_valid_eos(decoder):
    dec, _ = decoder
    for strategy in (decodekit.Greedy(), decodekit.Sampling(seed=1, n=3)):
        result = dec.generate("ab", strategy, constraint=Regex("[0-9]{1,2}"), max_new_tokens=10, min_new_tokens=5)
        for sequence in result.sequences:
            if len(sequence.token_ids) <= 5:
                assert sequence.finish_reason == "constraint"


def test_unsupported_schema_keywords_are_named_with_their_path(decoder):
    dec, _ = decoder
    schema = {"type": "object", "properties": {"x": {"type": "object", "dependentSchemas": {"a": {}}}}}
    with pytest.raises(ConfigError) as error:
        dec.generate("ab", constraint=JsonSchema(schema), max_new_tokens=2)
    assert error.value.field == "json_schema"
    assert "'dependentSchemas' at $.properties.x" in str(error.value)
    assert "llguidance does not implement" in error.value.allowed
