"""Stochastic beam search against enumeration: distinct samples, exact inclusion probabilities."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from decodekit.engine.decoding import decode
from decodekit.errors import ConfigError
from decodekit.model.scripted import ScriptedModel
from decodekit.options import DecodeOptions
from decodekit.search.stochastic_beam import StochasticBeamSearch, conditional_gumbel, estimate

EOS, PROMPT = 0, 3
# next-token probabilities after each generated prefix; vocab {0: EOS, 1, 2}
TABLE = {(): [0.2, 0.5, 0.3], (1,): [0.5, 0.3, 0.2], (2,): [0.1, 0.1, 0.8]}
MAX_NEW = 2


def model() -> ScriptedModel:
    def next_logprobs(sequence):
        probs = TABLE.get(tuple(sequence[1:]), [1.0, 0.0, 0.0])
        return [math.log(p) if p > 0 else -math.inf for p in probs] + [-math.inf]

    return ScriptedModel(4, next_logprobs, eos_token_ids=(EOS,), pad_token_id=EOS)


def distribution() -> dict[tuple[int, ...], float]:
    """Every sequence of at most MAX_NEW tokens (cut at the limit) and its probability."""
    out = {(0,): TABLE[()][0]}
    for first in (1, 2):
        for second in (0, 1, 2):
            out[(first, second)] = TABLE[()][first] * TABLE[(first,)][second]
    return out


def inclusion_by_enumeration(k: int) -> dict[tuple[int, ...], float]:
    """P(S among the first k draws without replacement), summed over ordered draws."""
    dist = distribution()
    out = dict.fromkeys(dist, 0.0)
    for order in itertools.permutations(dist, k):
        p, left = 1.0, 1.0
        for s in order:
            p *= dist[s] / left
            left -= dist[s]
        for s in order:
            out[s] += p
    return out


def test_samples_are_distinct_and_ordered_by_their_perturbed_value():
    results = decode(model(), [[PROMPT]] * 50, StochasticBeamSearch(num_beams=4), DecodeOptions(max_new_tokens=MAX_NEW), seeds=list(range(50)))
    dist = distribution()
    for hyps in results:
        seqs = [tuple(h.token_ids) for h in hyps]
        assert len(seqs) == 4 and len(set(seqs)) == 4 and all(s in dist for s in seqs)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert math.isclose(h.logprob, math.log(dist[tuple(h.token_ids)]), abs_tol=1e-5)
            assert math.isclose(sum(h.token_logprobs), h.logprob, abs_tol=1e-5)


def test_inclusion_frequencies_match_enumeration():
    k, runs = 3, 3000
    results = decode(model(), [[PROMPT]] * runs, StochasticBeamSearch(num_beams=k), DecodeOptions(max_new_tokens=MAX_NEW), seeds=list(range(runs)))
    counts: dict[tuple[int, ...], int] = {}
    for hyps in results:
        for h in hyps:
            counts[tuple(h.token_ids)] = counts.get(tuple(h.token_ids), 0) + 1
    exact = inclusion_by_enumeration(k)
    for seq, p in exact.items():
        # binomial standard error; 4.5 sigma keeps a correct implementation from ever failing
        sigma = math.sqrt(p * (1 - p) / runs)
        assert abs(counts.get(seq, 0) / runs - p) <= 4.5 * sigma + 1e-9, (seq, counts.get(seq, 0) / runs, p)
    # the first draw alone is an ordinary sample from the model
    first: dict[tuple[int, ...], int] = {}
    for hyps in results:
        first[tuple(hyps[0].token_ids)] = first.get(tuple(hyps[0].token_ids), 0) + 1
    for seq, p in distribution().items():
        assert abs(first.get(seq, 0) / runs - p) <= 4.5 * math.sqrt(p * (1 - p) / runs)


def test_the_estimator_is_unbiased():
    runs, k = 2000, 3
    results = decode(model(), [[PROMPT]] * runs, StochasticBeamSearch(num_beams=k), DecodeOptions(max_new_tokens=MAX_NEW), seeds=list(range(runs)))
    f = lambda s: float(len(s)) + 3.0 * (s[-1] == 2)  # noqa: E731
    exact = sum(f(s) * p for s, p in distribution().items())
    estimates = [estimate([f(tuple(h.token_ids)) for h in hyps], [h.logprob for h in hyps], [h.inclusion for h in hyps], normalise=False) for hyps in results]
    mean = sum(estimates) / runs
    spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / (runs - 1) / runs)
    assert abs(mean - exact) <= 4.5 * spread
    # with every sequence in the sample, the inclusion probabilities are 1 and the estimate exact
    whole = decode(model(), [[PROMPT]], StochasticBeamSearch(num_beams=7), DecodeOptions(max_new_tokens=MAX_NEW), seeds=[1])[0]
    assert len(whole) == 7 and all(h.inclusion == 1.0 for h in whole)
    value = estimate([f(tuple(h.token_ids)) for h in whole], [h.logprob for h in whole], [h.inclusion for h in whole], normalise=False)
    assert math.isclose(value, exact, rel_tol=1e-5)


def test_more_beams_than_sequences_return_each_sequence_once():
    hyps = decode(model(), [[PROMPT]], StochasticBeamSearch(num_beams=10), DecodeOptions(max_new_tokens=MAX_NEW), seeds=[3])[0]
    assert sorted(tuple(h.token_ids) for h in hyps) == sorted(distribution())


def test_same_seed_same_sample_and_the_conditional_gumbel_keeps_the_parent_maximum():
    options = DecodeOptions(max_new_tokens=MAX_NEW)
    a = decode(model(), [[PROMPT]], StochasticBeamSearch(num_beams=3, seed=9), options)[0]
    b = decode(model(), [[PROMPT]], StochasticBeamSearch(num_beams=3, seed=9), options)[0]
    assert [h.token_ids for h in a] == [h.token_ids for h in b]
    perturbed = torch.tensor([[0.3, -1.0, 2.0, -math.inf]])
    out = conditional_gumbel(torch.tensor([[1.5]]), perturbed, perturbed.amax(-1, keepdim=True))
    assert math.isclose(out.max().item(), 1.5, abs_tol=1e-6) and out[0, 3] == -math.inf
    assert (out[0, :3] <= 1.5 + 1e-6).all() and out[0, 2] == out.max()


def test_bad_settings_name_the_field():
    for config, field in ((StochasticBeamSearch(num_beams=0), "num_beams"), (StochasticBeamSearch(seed=-1), "seed")):
        with pytest.raises(ConfigError) as caught:
            config.validate()
        assert caught.value.field == field
