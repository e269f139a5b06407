"""Strategies on scripted models: per-step probability tables, expected tokens and scores
derived by hand in each test."""

from __future__ import annotations

import math

import pytest

from decodekit.engine import decode
from decodekit.model.scripted import ScriptedModel, table_model
from decodekit.options import DecodeOptions
from decodekit.search.beam import BeamSearch
from decodekit.search.sampling import Greedy

EOS, A, B, C, D = 0, 1, 2, 3, 4
VOCAB = 5
PROMPT = [[D]]


def scripted(table, default=None):
    default = default or {EOS: 1.0}
    return ScriptedModel(VOCAB, table_model(VOCAB, table, default, prompt_length=1), eos_token_ids=(EOS,))


def test_greedy_takes_the_argmax_and_sums_logprobs():
    # step 0: A .6 > B .4 ; after A: C .7 ; after A C: EOS 1.0
    model = scripted({(): {A: 0.6, B: 0.4}, (A,): {C: 0.7, EOS: 0.3}, (A, C): {EOS: 1.0}})
    [[h]] = decode(model, PROMPT, Greedy(), DecodeOptions(max_new_tokens=5))
    assert h.token_ids == [A, C, EOS]
    assert h.finish_reason == "eos"
    assert h.token_logprobs == pytest.approx([math.log(0.6), math.log(0.7), 0.0])
    assert h.logprob == pytest.approx(math.log(0.6 * 0.7))


def test_greedy_stops_at_the_length_limit():
    model = scripted({}, default={A: 0.9, EOS: 0.1})
    [[h]] = decode(model, PROMPT, Greedy(), DecodeOptions(max_new_tokens=3))
    assert h.token_ids == [A, A, A] and h.finish_reason == "length"


def test_beam_search_finds_what_greedy_misses():
    # greedy: A (.6) then best .4 -> .24 ; beam: B (.4) then C (.9) -> .36
    table = {
        (): {A: 0.6, B: 0.4},
        (A,): {C: 0.4, D: 0.3, B: 0.3},
        (B,): {C: 0.9, D: 0.1},
    }
    model = scripted(table)
    [[g]] = decode(model, PROMPT, Greedy(), DecodeOptions(max_new_tokens=3))
    assert g.token_ids[:2] == [A, C]
    [hyps] = decode(model, PROMPT, BeamSearch(num_beams=2, num_return_sequences=2, length_penalty=0.0), DecodeOptions(max_new_tokens=3))
    assert [h.token_ids for h in hyps] == [[B, C, EOS], [A, C, EOS]]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.36), math.log(0.24)])


def test_length_penalty_exponent_and_gnmt():
    # one hypothesis of 2 tokens (A, EOS) with p = .5 * 1; another of 3 (B, C, EOS) with .4*.9
    table = {(): {A: 0.5, B: 0.4, C: 0.1}, (A,): {EOS: 1.0}, (B,): {C: 0.9, D: 0.1}, (C,): {EOS: 1.0}}
    model = scripted(table)
    options = DecodeOptions(max_new_tokens=4)
    short, long = math.log(0.5), math.log(0.36)
    for form, penalty in (("exponent", lambda n: n**2.0), ("gnmt", lambda n: ((5 + n) / 6) ** 2.0)):
        config = BeamSearch(num_beams=2, num_return_sequences=2, length_penalty=2.0, length_penalty_form=form, early_stopping="never")
        [hyps] = decode(model, PROMPT, config, options)
        expected = sorted([(short / penalty(2), [A, EOS]), (long / penalty(3), [B, C, EOS])], reverse=True)
        assert [h.token_ids for h in hyps] == [e[1] for e in expected]
        assert [h.score for h in hyps] == pytest.approx([e[0] for e in expected])
    # exponent 2 favours the long one: log .36 / 9 = -0.1135 > log .5 / 4 = -0.1733
    assert long / 9 > short / 4


def test_early_stopping_true_stops_at_the_first_full_pool():
    # K=2, no length penalty. Step 0: EOS .4 finishes; A .35, B .25 run.
    # Step 1: A C .28, B EOS .25 (finishes: pool full), A EOS .07 (rank 2, ignored).
    # True stops there; False continues because A C (.28) > worst finished (.25) and finds A C EOS.
    table = {(): {EOS: 0.4, A: 0.35, B: 0.25}, (A,): {EOS: 0.2, C: 0.8}, (B,): {EOS: 1.0}, (A, C): {EOS: 1.0}}
    model = scripted(table)
    options = DecodeOptions(max_new_tokens=5)
    [eager] = decode(model, PROMPT, BeamSearch(num_beams=2, num_return_sequences=2, length_penalty=0.0, early_stopping=True), options)
    assert [h.token_ids for h in eager] == [[EOS], [B, EOS]]
    [patient] = decode(model, PROMPT, BeamSearch(num_beams=2, num_return_sequences=2, length_penalty=0.0, early_stopping=False), options)
    assert [h.token_ids for h in patient] == [[EOS], [A, C, EOS]]
    assert [h.score for h in patient] == pytest.approx([math.log(0.4), math.log(0.28)])
    assert all(h.finish_reason == "eos" for h in patient)


def test_min_new_tokens_blocks_eos_and_eos_sets():
    table = {(): {EOS: 0.7, A: 0.3}, (A,): {B: 0.6, EOS: 0.4}}
    model = scripted(table, default={C: 1.0})
    [[h]] = decode(model, PROMPT, Greedy(), DecodeOptions(max_new_tokens=4, min_new_tokens=2))
    assert h.token_ids == [A, B, C, C]
    # B as an extra end-of-sequence token
    [[h]] = decode(model, PROMPT, Greedy(), DecodeOptions(max_new_tokens=4, min_new_tokens=1, eos_token_ids=(EOS, B)))
    assert h.token_ids == [A, B] and h.finish_reason == "eos"


def test_forced_eos_at_the_limit():
    model = scripted({}, default={A: 0.9, EOS: 0.1})
    [[h]] = decode(model, PROMPT, Greedy(), DecodeOptions(max_new_tokens=3, force_eos_at_max_length=True))
    assert h.token_ids == [A, A, EOS] and h.finish_reason == "eos"


def test_beams_share_one_prefill():
    model = scripted({}, default={A: 0.5, B: 0.3, EOS: 0.2})
    decode(model, [[D], [C, D]], BeamSearch(num_beams=4), DecodeOptions(max_new_tokens=3))
    assert model.calls[0] == 2  # the prefill saw each prompt once, not once per beam
    assert all(rows == 8 for rows in model.calls[1:])
