"""``draw_rows``: the engine's per-row sampling decision, which skips the nucleus for rows
whose race winner top-p keeps anyway, draws exactly what warping every row fully draws."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decodekit.logits.draw import draw_rows
from decodekit.logits.warpers import warp_rows
from decodekit.search.base import race


def _full(scores, settings_, u):
    return race(warp_rows(scores, *settings_), u)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 12),
    vocab=st.sampled_from([2, 7, 64, 300, 2000]),
    spread=st.sampled_from([0.0, 0.3, 1.0, 4.0, 15.0]),
    peak=st.integers(0, 40),
    other=st.sampled_from(["none", "top_k", "min_p", "typical_p"]),
    ties=st.booleans(),
)
def test_draw_rows_equals_the_full_warp_and_race(seed, rows, vocab, spread, peak, other, ties):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn((rows, vocab), generator=g) * spread
    if peak:
        scores[:, : min(peak, vocab)] += 5.0
    if ties:  # many equal scores: tie order must not matter
        scores = (scores * 2).round() / 2
    temperature = torch.tensor([0.5, 0.7, 1.0, 1.3])[torch.randint(0, 4, (rows,), generator=g)]
    top_p = torch.tensor([0.3, 0.9, 0.95, 0.999, 1.0])[torch.randint(0, 5, (rows,), generator=g)]
    top_k = torch.zeros(rows, dtype=torch.long)
    min_p, typical_p = torch.zeros(rows), torch.ones(rows)
    if other == "top_k":
        top_k[0] = 3
    elif other == "min_p":
        min_p[0] = 0.1
    elif other == "typical_p":
        typical_p[0] = 0.9
    u = torch.rand(rows, generator=g)
    settings_ = (temperature, top_k, top_p, min_p, typical_p)
    assert torch.equal(draw_rows(scores, settings_, u), _full(scores, settings_, u))


def test_rows_that_are_not_finite_take_the_full_warp():
    scores = torch.randn(4, 50)
    scores[1, 3] = float("nan")
    scores[2] = float("-inf")
    scores[3, 7] = float("inf")
    settings_ = (torch.ones(4), torch.zeros(4, dtype=torch.long), torch.full((4,), 0.9), torch.zeros(4), torch.ones(4))
    u = torch.rand(4)
    assert torch.equal(draw_rows(scores, settings_, u), _full(scores, settings_, u))


def test_a_winner_outside_the_nucleus_is_redrawn_inside_it():
    """One likely token and many unlikely ones: at p = 0.5 top-p keeps only the likely one,
    so every draw is it, though the race over the whole row often picks another."""
    scores = torch.zeros(64, 100)
    scores[:, 0] = 5.0  # about 60%: the nucleus of p = 0.5 is token 0 alone
    settings_ = (torch.ones(64), torch.zeros(64, dtype=torch.long), torch.full((64,), 0.5), torch.zeros(64), torch.ones(64))
    u = torch.rand(64, generator=torch.Generator().manual_seed(1))
    unrestricted = race(scores, u)
    assert (unrestricted != 0).any()  # the shortcut alone would be wrong here
    assert draw_rows(scores, settings_, u).tolist() == [0] * 64
