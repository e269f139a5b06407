"""Processors and warpers against transformers' implementations (the oracle) on random scores."""

from __future__ import annotations

import pytest
import torch
from transformers.generation import logits_process as tp

from decodekit.logits import penalties, warpers

VOCAB = 50


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (4, 9), generator=generator)
    scores = torch.randn(4, VOCAB, generator=generator) * 3
    return ids, scores


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(
        a.masked_fill(torch.isinf(a), 0), b.masked_fill(torch.isinf(b), 0), atol=1e-6
    )


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty(inputs, penalty):
    ids, scores = inputs
    ours = penalties.RepetitionPenalty(penalty)(ids, scores.clone())
    assert same(ours, tp.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))


def test_repetition_penalty_ignores_padding(inputs):
    ids, scores = inputs
    padded = torch.cat([torch.full((4, 3), -1), ids], dim=1)
    assert same(penalties.RepetitionPenalty(1.5)(padded, scores.clone()), penalties.RepetitionPenalty(1.5)(ids, scores.clone()))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram(size):
    generator = torch.Generator().manual_seed(size)
    ids = torch.randint(0, 4, (5, 12), generator=generator)  # small alphabet: many repeats
    scores = torch.randn(5, VOCAB, generator=generator)
    ours = penalties.NoRepeatNGram(size)(ids, scores.clone())
    assert same(ours, tp.NoRepeatNGramLogitsProcessor(size)(ids, scores.clone()))


def test_bad_words(inputs):
    ids, scores = inputs
    words = [[3], [ids[0, -1].item(), 7], [ids[1, -2].item(), ids[1, -1].item(), 9]]
    ours = penalties.BadWords(words, VOCAB)(ids, scores.clone())
    assert same(ours, tp.NoBadWordsLogitsProcessor(words, eos_token_id=None)(ids, scores.clone()))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (warpers.Temperature(0.6), tp.TemperatureLogitsWarper(0.6)),
        (warpers.TopK(5), tp.TopKLogitsWarper(5)),
        (warpers.TopP(0.7), tp.TopPLogitsWarper(0.7)),
        (warpers.MinP(0.1), tp.MinPLogitsWarper(0.1)),
        (warpers.TypicalP(0.8), tp.TypicalLogitsWarper(0.8)),
    ],
)
def test_warpers(inputs, ours, theirs):
    ids, scores = inputs
    assert same(ours(ids, scores.clone()), theirs(ids, scores.clone()))


def test_min_new_tokens_and_forced_eos():
    ids = torch.zeros((2, 5), dtype=torch.long)
    scores = torch.zeros(2, 8)
    out = penalties.MinNewTokens(3, prompt_length=3, eos_token_ids=[1, 2])(ids, scores.clone())
    assert torch.isinf(out[:, [1, 2]]).all() and not torch.isinf(out[:, 0]).any()
    forced = penalties.ForceEOSAtLimit(3, prompt_length=3, eos_token_id=2)(ids, scores.clone())
    assert (forced[:, 2] == 0).all() and torch.isinf(forced[:, [0, 1, 3]]).all()
