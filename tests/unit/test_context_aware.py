"""Context-aware decoding (Shi et al. 2024) on a scripted model: the defining case by hand."""

from __future__ import annotations

import math

import pytest

from decodekit.api import Decoder
from decodekit.errors import ConfigError
from decodekit.model.scripted import ScriptedModel
from decodekit.search.context_aware import ContextAwareDecoding
from decodekit.search.sampling import Sampling

EOS, A, B, CONTEXT, QUERY = 0, 1, 2, 3, 4


def model() -> ScriptedModel:
    """With the context token in the prompt the model leans only slightly to B (its prior);
    without it, B is nearly certain. After one token: EOS."""

    def next_logprobs(sequence):
        if sequence[-1] in (A, B):
            return [0.0] + [-math.inf] * 4
        probs = [0.0, 0.45, 0.55] if CONTEXT in sequence else [0.0, 0.1, 0.9]
        return [math.log(p) if p > 0 else -math.inf for p in probs] + [-math.inf, -math.inf]

    return ScriptedModel(5, next_logprobs, eos_token_ids=(EOS,))


def test_cad_flips_the_token_the_context_supports():
    decoder = Decoder(model())
    plain = decoder.generate([CONTEXT, QUERY], max_new_tokens=3)
    assert plain.sequences[0].token_ids[0] == B  # greedy with the context still follows the prior
    cad = decoder.generate([QUERY], ContextAwareDecoding(context=(CONTEXT,), alpha=1.0), max_new_tokens=3)
    assert cad.sequences[0].token_ids == [A, EOS]
    # by hand: (1 + 1) log .45 - log .1 = 0.706 > (1 + 1) log .55 - log .9 = -1.090
    contrast = [2 * math.log(0.45) - math.log(0.1), 2 * math.log(0.55) - math.log(0.9)]
    expected = contrast[0] - math.log(sum(math.exp(c) for c in contrast))
    assert math.isclose(cad.sequences[0].token_logprobs[0], expected, abs_tol=1e-5)
    # alpha 0 is plain decoding with the context
    same = decoder.generate([QUERY], ContextAwareDecoding(context=(CONTEXT,), alpha=0.0), max_new_tokens=3)
    assert same.sequences[0].token_ids == plain.sequences[0].token_ids


def test_both_rows_share_each_forward_and_batches_equal_singles():
    m = model()
    decoder = Decoder(m)
    config = ContextAwareDecoding(context=(CONTEXT,), alpha=1.0, sampler=Sampling(temperature=1.0))
    together = decoder.generate([[QUERY], [QUERY, QUERY]], config, max_new_tokens=3, seed=7)
    before = m.forward_count
    alone = decoder.generate([QUERY, QUERY], config, max_new_tokens=3, seed=7)
    assert m.forward_count - before <= 3  # one prefill of both rows, then one forward per step
    assert alone.sequences[0].token_ids == together[1].sequences[0].token_ids


def test_bad_settings_are_named():
    decoder = Decoder(model())
    for config, field in (
        (ContextAwareDecoding(), "context"),
        (ContextAwareDecoding(context=(CONTEXT,), alpha=-1.0), "alpha"),
        (ContextAwareDecoding(context=(CONTEXT,), sampler=Sampling(n=2)), "sampler.n"),
        (ContextAwareDecoding(context="text"), "context"),  # text context, token-id prompt
    ):
        with pytest.raises(ConfigError) as caught:
            decoder.generate([QUERY], config, max_new_tokens=2)
        assert caught.value.field == field
    with pytest.raises(ConfigError) as caught:
        list(decoder.stream([QUERY], ContextAwareDecoding(context=(CONTEXT,))))
    assert caught.value.field == "stream"
