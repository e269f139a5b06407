"""One sampled token per row under per-row warper settings: ``race(warp_rows(...), u)``, with
a shortcut for the rows that truncate by top-p alone (the common temperature + top-p request)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from decodekit.logits.warpers import warp_rows
from decodekit.search.base import race

_ROUNDING = 2.0**-24
"""float32's unit roundoff: the margin below is a multiple of it per vocabulary entry."""


def draw_rows(scores: torch.Tensor, settings: Sequence[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    """``(rows, vocab)`` logits, :func:`warp_rows`' per-row settings (its arguments after the
    scores, in its order) and ``(rows,)`` U[0, 1) -> ``(rows,)`` tokens, exactly
    ``race(warp_rows(scores, *settings), u)``.

    Subtle: top-p keeps the most likely tokens and the race draws the highest perturbed score;
    so when the race over the whole (temperature-scaled) row already picks a token that top-p
    keeps, the race over the kept tokens picks the same one (the same scores and noise, the
    same first maximum), and the row needs no nucleus at all. A winner is certainly kept when
    the mass of every other token at least as likely stays below ``p`` by a margin larger
    than any float32 summation error over the vocabulary (the nucleus's own sums round
    differently from this one); only the other rows (about ``1 - p`` of them) go on to the
    full nucleus, each from its own scores and ``u``, so every row's token is the one the
    full warp gives."""
    temperature, top_k, top_p, min_p, typical_p = settings
    nucleus_rows = top_p < 1.0
    others = (top_k > 0) | (min_p > 0.0) | (typical_p < 1.0)
    any_nucleus, any_other, any_scaled = torch.stack([nucleus_rows.any(), others.any(), (temperature != 1.0).any()]).tolist()
    if not any_nucleus or any_other:
        return race(warp_rows(scores, *settings), u)
    scaled = scores / temperature[:, None] if any_scaled else scores
    tokens = race(scaled, u)
    probs = scaled.softmax(-1)
    chosen = probs.gather(1, tokens[:, None])
    ahead = (probs * (probs >= chosen)).sum(-1) - chosen[:, 0]  # mass before it, in any tie order
    margin = 1e-4 + 4 * scores.shape[-1] * _ROUNDING
    sure = ~nucleus_rows | (ahead < top_p - margin)  # False for NaN rows: they take the full warp
    if bool(sure.all()):
        return tokens
    redo = (~sure).nonzero().squeeze(1)
    part = warp_rows(scores.index_select(0, redo), *(s.index_select(0, redo) for s in settings))
    return tokens.index_copy(0, redo, race(part, u.index_select(0, redo)))
