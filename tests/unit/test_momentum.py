"""Momentum decoding (Lan et al. 2022) on scripted models: loop depths and decisions by hand."""

from __future__ import annotations

import math

import pytest
import torch

from decodekit.api import Decoder
from decodekit.errors import ConfigError
from decodekit.model.scripted import ScriptedModel
from decodekit.search.base import SearchContext
from decodekit.search.momentum import MomentumDecoding, MomentumRun

EOS = 0


def run_with(prefixes, config: MomentumDecoding | None = None) -> MomentumRun:
    context = SearchContext(
        batch_size=len(prefixes), max_new_tokens=4, eos_token_ids=torch.tensor([EOS]), pad_token_id=EOS,
        device=torch.device("cpu"), vocab_size=10, prefixes=tuple(map(tuple, prefixes)),
    )
    return (config or MomentumDecoding()).begin(context)


def test_loop_depth_is_the_longest_repeated_ngram_the_candidate_completes():
    # sequence 5 6 7 5 6: choosing 7 repeats "5 6 7" (3), 8 is new (0), 6 and 5 occurred but
    # "6 6" / "6 5" did not (1); the second row, 6 7, is shorter (left padding never matches):
    # 7 and 6 occurred but "7 7" / "7 6" did not (1), 8 and 5 are new
    run = run_with([[5, 6, 7, 5, 6], [6, 7]])
    depth = run.depth(torch.tensor([[7, 8, 6, 5], [7, 8, 6, 5]]))
    assert depth.tolist() == [[3, 0, 1, 1], [1, 0, 1, 0]]


def test_loop_depth_is_capped_by_the_resistance_table():
    run = run_with([[1, 2, 1, 2, 1, 2, 1, 2, 1]], MomentumDecoding(resistance=(0.0, 1.0, 2.0)))
    assert run.depth(torch.tensor([[2, 1, 3]])).tolist() == [[2, 1, 0]]


def loop_model() -> ScriptedModel:
    """Greedy loops 3 4 3 4 ...; 5 and 6 lead to EOS."""
    table = {1: {3: 0.7, 4: 0.2, 5: 0.1}, 3: {4: 0.6, 5: 0.3, EOS: 0.1}, 4: {3: 0.6, 6: 0.3, EOS: 0.1}, 5: {EOS: 0.9, 3: 0.1}, 6: {EOS: 0.9, 4: 0.1}}

    def next_logprobs(sequence):
        probs = table[sequence[-1]]
        return [math.log(probs[i]) if i in probs else -math.inf for i in range(7)]

    return ScriptedModel(7, next_logprobs, eos_token_ids=(EOS,))


def test_momentum_leaves_the_loop_greedy_falls_into():
    decoder = Decoder(loop_model())
    assert decoder.generate([1], max_new_tokens=8).sequences[0].token_ids == [3, 4, 3, 4, 3, 4, 3, 4]
    out = decoder.generate([1], MomentumDecoding(k=3, alpha=0.2), max_new_tokens=8).sequences[0]
    # by hand, p - 0.2 R(d): t0 3 (.7, new); t1 4 (.6, new); t2 3: d=1 -> .6 - .2 = .4 > 6's .3;
    # t3 4 would repeat "3 4" (d=2, R=3): .6 - .6 = 0 < 5's .3 -> 5; t4 EOS (.9, new)
    assert out.token_ids == [3, 4, 3, 5, EOS]
    assert out.finish_reason == "eos"
    expected = [math.log(p) for p in (0.7, 0.6, 0.6, 0.3, 0.9)]
    assert out.token_logprobs == pytest.approx(expected, abs=1e-5)


def test_the_prompt_counts_as_explored():
    decoder = Decoder(loop_model())
    # the prompt already holds "1 3": choosing 3 after 1 has depth 2 (R=3): .7 - .6 = .1 < 4's .2
    out = decoder.generate([1, 3, 5, 1], MomentumDecoding(k=3, alpha=0.2), max_new_tokens=1).sequences[0]
    assert out.token_ids == [4]


def test_alpha_zero_and_k_one_are_greedy():
    decoder = Decoder(loop_model())
    greedy = decoder.generate([1], max_new_tokens=6).sequences[0].token_ids
    for config in (MomentumDecoding(alpha=0.0), MomentumDecoding(k=1, alpha=5.0)):
        assert decoder.generate([1], config, max_new_tokens=6).sequences[0].token_ids == greedy


def test_a_ruled_out_token_is_never_chosen():
    # after 4 only 3 is possible (a repeated "4 3" would lose to a -inf token's 0 - 0 otherwise)
    def next_logprobs(sequence):
        nxt = {1: 4, 4: 3, 3: 4}[sequence[-1]]
        return [0.0 if i == nxt else -math.inf for i in range(7)]

    decoder = Decoder(ScriptedModel(7, next_logprobs, eos_token_ids=(EOS,)))
    out = decoder.generate([1], MomentumDecoding(k=4, alpha=10.0), max_new_tokens=6).sequences[0]
    assert out.token_ids == [4, 3, 4, 3, 4, 3]


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"k": 0}, "k"), ({"alpha": -1.0}, "alpha"), ({"resistance": ()}, "resistance"), ({"resistance": (1.0, 2.0)}, "resistance[0]"),
     ({"resistance": (0.0, float("nan"))}, "resistance[1]"), ({"resistance": "abc"}, "resistance"), ({"k": 2.5}, "k")],
)
def test_bad_settings_name_their_field(settings, field):
    with pytest.raises(ConfigError) as error:
        MomentumDecoding(**settings).validate()
    assert error.value.field == field
