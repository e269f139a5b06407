"""Sampling: exact reproducibility and the empirical distribution of the warped softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import decodekit
from decodekit.model.scripted import ScriptedModel
from decodekit.search.sampling import Sampling

LOGITS = [0.0, 2.0, 1.0, 0.5, -1.0, 1.5]  # token 0 is EOS
VOCAB = len(LOGITS)


def fixed_model():
    return ScriptedModel(VOCAB, lambda seq: LOGITS, eos_token_ids=(0,))


def expected_probs(temperature=1.0, top_k=None, top_p=1.0):
    """The processed softmax derived independently of decodekit's code."""
    scaled = np.array(LOGITS) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    keep = np.zeros(VOCAB, dtype=bool)
    mass = 0.0
    for rank, token in enumerate(order):
        if top_k is not None and rank >= top_k:
            break
        if rank > 0 and mass >= top_p:
            break
        keep[token] = True
        mass += probs[token]
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum()


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(temperature=0.7), dict(top_k=3), dict(top_p=0.8), dict(temperature=1.5, top_k=4, top_p=0.9)],
)
def test_empirical_distribution_matches_processed_softmax(settings):
    n = 4000
    decoder = decodekit.load(fixed_model())
    strategy = decodekit.Sampling(n=n, seed=123, **settings)
    result = decoder.generate([3], strategy, max_new_tokens=1)
    counts = np.bincount([s.token_ids[0] for s in result.sequences], minlength=VOCAB)
    probs = expected_probs(**settings)
    assert counts[probs == 0].sum() == 0
    kept = probs > 0
    # significance level 0.001: a correct sampler fails this 1 time in 1000
    assert chisquare(counts[kept], probs[kept] * n).pvalue > 1e-3


def test_same_seed_same_output_different_seed_different_output():
    decoder = decodekit.load(fixed_model())

    def run(seed):
        return [s.token_ids for s in decoder.generate([3], decodekit.Sampling(n=8, seed=seed), max_new_tokens=6).sequences]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_sample_logprobs_are_the_processed_distribution():
    decoder = decodekit.load(fixed_model())
    result = decoder.generate([3], decodekit.Sampling(n=4, seed=1, temperature=0.5), max_new_tokens=3)
    log_z = math.log(sum(math.exp(v) for v in LOGITS))
    for s in result.sequences:
        assert s.token_logprobs == pytest.approx([LOGITS[t] - log_z for t in s.token_ids], abs=1e-5)
        assert s.logprob == pytest.approx(sum(s.token_logprobs), abs=1e-5)


def test_beam_sampling_is_seeded():
    decoder = decodekit.load(fixed_model())
    strategy = decodekit.BeamSearch(num_beams=3, num_return_sequences=3, sampler=decodekit.Sampling(seed=9, temperature=1.2))
    first = decoder.generate([3], strategy, max_new_tokens=5)
    again = decoder.generate([3], strategy, max_new_tokens=5)
    assert [s.token_ids for s in first.sequences] == [s.token_ids for s in again.sequences]


def test_per_row_warpers_equal_each_rows_own_chain():
    """The engine's vectorised warpers (one setting per row) give every row exactly what its
    own Sampling config's warper chain gives."""
    from decodekit.logits.warpers import warp_rows

    configs = [
        Sampling(),
        Sampling(temperature=0.7),
        Sampling(top_k=3),
        Sampling(top_p=0.8, temperature=1.3),
        Sampling(min_p=0.1),
        Sampling(typical_p=0.9),
        Sampling(temperature=0.5, top_k=10, top_p=0.9, min_p=0.05, typical_p=0.95),
        Sampling(top_k=1000),
    ]
    scores = torch.randn((len(configs), 50), generator=torch.Generator().manual_seed(0)) * 3
    settings = [
        torch.tensor([c.temperature for c in configs]),
        torch.tensor([c.top_k or 0 for c in configs]),
        torch.tensor([c.top_p for c in configs]),
        torch.tensor([c.min_p for c in configs]),
        torch.tensor([c.typical_p for c in configs]),
    ]
    together = warp_rows(scores, *settings)
    for row, config in enumerate(configs):
        chain = config.warpers()
        alone = chain(None, scores[row : row + 1].clone()) if len(chain) else scores[row : row + 1]
        assert torch.equal(together[row : row + 1], alone), config


def test_nucleus_ranks_past_its_candidates_when_the_mass_needs_it():
    """Top-p over a flat distribution reaches past the 64 ranked candidates: the full sort
    decides those rows, a peaked row in the same batch keeps its partial-sort answer."""
    from decodekit.logits.warpers import nucleus

    flat = torch.zeros(1, 500)  # uniform: p=0.5 keeps 250 tokens
    peaked = torch.full((1, 500), -20.0)
    peaked[0, 7] = 5.0
    keep = nucleus(torch.cat([flat, peaked]), torch.tensor([[0.5], [0.5]]))
    assert int(keep[0].sum()) == 250
    assert keep[1].nonzero().flatten().tolist() == [7]
    alone = nucleus(peaked, torch.tensor([[0.5]]))
    assert torch.equal(alone[0], keep[1])


def test_nucleus_matches_a_full_sort_on_distributions_of_every_spread():
    """The histogram path (rows the 64 ranked candidates do not cover) keeps exactly the set
    the definition gives: tokens in descending order while the mass strictly before them is
    below p, computed here by a full sort."""
    from decodekit.logits.warpers import nucleus

    generator = torch.Generator().manual_seed(3)
    for scale in (0.1, 0.5, 1.0, 2.5, 6.0, 20.0):
        scores = torch.randn((24, 3000), generator=generator) * scale
        p = torch.rand((24, 1), generator=generator).clamp(min=0.02)
        probs = scores.softmax(-1)
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(-1) - ordered
        expected = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, (before < p) | (torch.arange(3000) == 0))
        assert torch.equal(nucleus(scores, p), expected), scale


def test_nucleus_breaks_ties_the_same_way_alone_and_in_a_batch():
    """Exactly tied probabilities across the p boundary: the kept tokens are the lowest ids of
    the tie, whatever the other rows of the batch are."""
    from decodekit.logits.warpers import nucleus

    tied = torch.zeros(1, 2000)  # uniform: p = 0.25 keeps 500 tokens, ids 0..499
    others = torch.randn(5, 2000, generator=torch.Generator().manual_seed(1))
    p = torch.full((6, 1), 0.25)
    alone = nucleus(tied, p[:1])
    together = nucleus(torch.cat([others, tied]), p)
    assert alone[0].nonzero().flatten().tolist() == list(range(500))
    assert torch.equal(together[5], alone[0])


def test_the_race_draws_the_distribution_and_ignores_rounding_drift():
    """``race`` samples softmax(scores) (chi-square), and a drift of the size a batch's rounding
    gives (1e-5) changes none of 20,000 draws, where inverting the CDF changes some: the reason
    sampling uses the race (a seeded request must decode the same alone and among others)."""
    from decodekit.search.base import inverse_cdf, race

    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(4, 1000, generator=generator) * 2.0
    n = 5000
    u = torch.rand(n * 4, generator=generator)
    rows = scores.repeat_interleave(n, 0)
    tokens = race(rows, u)
    for row in range(4):  # the distribution: the 8 likeliest tokens and the rest
        probs = scores[row].softmax(-1)
        top = probs.topk(8).indices
        drawn = tokens[row * n : (row + 1) * n]
        counts = [int((drawn == t).sum()) for t in top] + [int((~torch.isin(drawn, top)).sum())]
        mass = [float(probs[t]) for t in top] + [float(1 - probs[top].sum())]
        expected = [m * n / sum(mass) for m in mass]
        assert chisquare(counts, expected).pvalue > 1e-3
    drift = rows + torch.empty_like(rows).uniform_(-1e-5, 1e-5, generator=generator)
    assert torch.equal(race(drift, u), tokens)
    assert not torch.equal(inverse_cdf(drift.softmax(-1), u), inverse_cdf(rows.softmax(-1), u))
