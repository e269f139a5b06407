"""Constrained beam search's progress tracker by hand (transformers 4.x's semantics), and the
search's n-best on a scripted model."""

from __future__ import annotations

import math

import pytest

from decodekit.api import Decoder
from decodekit.model.scripted import ScriptedModel
from decodekit.search.beam import BeamSearch
from decodekit.search.constrained_beam import (
    ConstrainedBeamSearch,
    advance_tokens,
    bank,
    parse,
    replay,
)


def test_phrases_are_met_in_order_and_a_mismatch_resets_without_rereading_the_token():
    cs = parse([[5, 6]])
    assert replay(cs, [7, 5, 6]).done
    assert not replay(cs, [5, 5, 6]).done  # the second 5 resets the phrase and is not read again
    assert replay(cs, [5, 5, 5, 6]).done  # the third starts it anew


def test_alternatives_meet_a_disjunctive_constraint():
    cs = parse([[[3], [4, 5]]])
    assert replay(cs, [3]).done and replay(cs, [9, 4, 5]).done
    assert not replay(cs, [4, 9]).done
    assert advance_tokens(cs, replay(cs, [])) == [3, 4]
    assert advance_tokens(cs, replay(cs, [4])) == [5]


def test_banks_count_met_constraints_times_the_longest_plus_the_progress():
    cs = parse([[1], [5, 6]])  # longest: 2
    assert [bank(cs, replay(cs, seq), 2) for seq in ([], [5], [5, 6], [5, 6, 1], [1])] == [0, 1, 2, 4, 2]


def test_a_reset_constraint_goes_to_the_end_of_the_queue():
    cs = parse([[5, 6], [5, 7]])
    state = replay(cs, [5, 9])  # the first phrase started, then reset
    assert state.pending == (1, 0)
    assert advance_tokens(cs, state) == [5, 5]  # duplicates kept, as transformers


def model() -> ScriptedModel:
    """4 is likely everywhere; 5 then 6 is the phrase; EOS (0) after 6."""

    def next_logprobs(sequence):
        probs = {4: 0.6, 5: 0.2, 0: 0.2} if sequence[-1] != 6 else {0: 0.9, 4: 0.1}
        if sequence[-1] == 5:
            probs = {6: 0.3, 4: 0.7}
        return [math.log(probs[i]) if i in probs else -math.inf for i in range(8)]

    return ScriptedModel(8, next_logprobs, eos_token_ids=(0,))


def test_every_returned_hypothesis_contains_the_phrase_or_is_labelled():
    decoder = Decoder(model())
    plain = decoder.generate([1], BeamSearch(num_beams=3, num_return_sequences=3), max_new_tokens=4)
    assert not any(s.token_ids[i : i + 2] == [5, 6] for s in plain.sequences for i in range(len(s.token_ids)))
    got = decoder.generate([1], ConstrainedBeamSearch(force_words_ids=([5, 6],), num_beams=3, num_return_sequences=3), max_new_tokens=4).sequences
    met = [s for s in got if s.finish_reason != "constraint"]
    assert met and all(any(s.token_ids[i : i + 2] == [5, 6] for i in range(len(s.token_ids))) for s in met)
    assert got[: len(met)] == met
    for s in got:
        assert s.score == pytest.approx(sum(s.token_logprobs) / len(s.token_ids), abs=1e-6)


def test_top_logprobs_are_refused_where_they_are_not_recorded():
    from decodekit.errors import ConfigError
    from decodekit.search.context_aware import ContextAwareDecoding

    decoder = Decoder(model())
    for strategy in (ConstrainedBeamSearch(force_words_ids=([5, 6],), num_beams=2), ContextAwareDecoding(context=(3,))):
        with pytest.raises(ConfigError) as error:
            decoder.generate([1], strategy, max_new_tokens=3, top_logprobs=2)
        assert error.value.field == "top_logprobs"
    assert decoder.model.forward_count == 0
