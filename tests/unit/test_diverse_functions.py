"""The diversity functions on hand-built inputs: exact values, shapes, batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from decodekit.scoring.diversity import Cumulative, EarlierGroups, Embedding, Hamming, NGram

V = 6


def test_hamming_counts_tokens_of_earlier_groups_at_this_step():
    earlier = EarlierGroups(group=2, step=0, vocab_size=V, tokens=torch.tensor([[3, 3, 1, 5], [0, 0, 0, 0]]))
    out = Hamming()(earlier).dense(V)
    assert out.shape == (2, 1, V)
    assert out[0, 0].tolist() == [0, 1, 0, 2, 0, 1]
    assert out[1, 0].tolist() == [4, 0, 0, 0, 0, 0]


def test_cumulative_decays_with_mismatches_so_far():
    # one earlier group of two beams: histories [1 2] and [1 4], this step tokens 2 and 4
    history = torch.tensor([[[1, 2, 2], [1, 4, 4]]])
    own = torch.tensor([[[1, 2], [3, 3]]])  # the current group's two beams before this step
    earlier = EarlierGroups(1, 2, V, history[:, :, -1], history, own)
    out = Cumulative(temperature=2.0)(earlier)
    # mismatches before: beam 0: 0 + 1, beam 1: 2 + 2; now: v mismatches 2 - count(v) beams
    now = [2 - (v in (2, 4)) for v in range(V)]
    assert out.shape == (1, 2, V)
    assert out[0, 0].tolist() == pytest.approx([math.exp(-(1 + m) / 2.0) for m in now])
    assert out[0, 1].tolist() == pytest.approx([math.exp(-(4 + m) / 2.0) for m in now])


def test_cumulative_sums_one_delta_per_earlier_group():
    history = torch.tensor([[[5, 1], [5, 2]]])  # two earlier groups of one beam each
    own = torch.tensor([[[5]]])
    out = Cumulative(1.0)(EarlierGroups(2, 1, V, history[:, :, -1], history, own))
    # each group: 0 mismatches before; now 0 if v equals its token else 1
    assert out[0, 0, 1].item() == pytest.approx(1 + math.exp(-1))
    assert out[0, 0, 3].item() == pytest.approx(2 * math.exp(-1))


def test_ngram_counts_earlier_ngrams_anywhere():
    # earlier rows: [1 2 1 2] and [3 1 2 0]; bigrams (1,2) x3, (2,1), (3,1), (2,0)
    history = torch.tensor([[[1, 2, 1, 2], [3, 1, 2, 0]]])
    own = torch.tensor([[[4, 4, 1], [0, 0, 2]]])  # two beams ending in 1 and 2
    out = NGram(2)(EarlierGroups(1, 3, V, history[:, :, -1], history, own))
    assert out.shape == (1, 2, V)
    assert out[0, 0].tolist() == [0, 0, 3, 0, 0, 0]  # after 1: (1,2) three times
    assert out[0, 1].tolist() == [1, 1, 0, 0, 0, 0]  # after 2: (2,0) and (2,1)
    trigram = NGram(3)(EarlierGroups(1, 3, V, history[:, :, -1], history, own))
    assert trigram[0, 0].tolist() == [0, 0, 0, 0, 0, 0]  # (4, 1, v) never seen
    assert NGram(5)(EarlierGroups(1, 3, V, history[:, :, -1], history, own)).abs().sum() == 0  # too short


def test_embedding_unigram_is_a_sum_of_cosines():
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    out = Embedding(table, 1)(EarlierGroups(1, 0, V, torch.tensor([[0, 2]])))
    s = 1 / math.sqrt(2)
    # cos with e_0 plus cos with e_2, for every candidate; the zero vector has cosine 0
    expected = [1 + s, 0 + s, s + 1, -1 - s, 0.0, s + 1]
    assert out[0, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_embedding_ngram_uses_summed_vectors():
    eye = torch.eye(V)
    history = torch.tensor([[[1, 3]]])  # the only earlier bigram: (1, 3)
    own = torch.tensor([[[1]]])
    out = Embedding(eye, 2)(EarlierGroups(1, 1, V, history[:, :, -1], history, own))
    # candidate (1, v): cos(e1 + ev, e1 + e3) = 1 for v = 3, 1/2 for v != 1, 3 and
    # (2 e1).(e1 + e3) / (2 sqrt 2) = 1/sqrt 2 for v = 1
    expected = [0.5, 1 / math.sqrt(2), 0.5, 1.0, 0.5, 0.5]
    assert out[0, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_embedding_pads_a_short_table_with_zero_vectors():
    table = torch.eye(4)
    out = Embedding(table, 1)(EarlierGroups(1, 0, V, torch.tensor([[2]])))
    assert out[0, 0].tolist() == pytest.approx([0, 0, 1, 0, 0, 0])
