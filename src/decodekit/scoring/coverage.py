"""GNMT's coverage penalty (Wu et al. 2016, "Google's Neural Machine Translation System",
eq. 14): ``cp(X; Y) = beta * sum_i log(min(sum_j p_ij, 1))``, where ``p_ij`` is the attention
the ``j``-th target token paid to the ``i``-th source token. A source token that no target
token attended to costs ``beta * log(tiny)``; one attended to in full (a total of 1 or more)
costs nothing. With the GNMT length norm, a hypothesis scores
``log P(Y | X) / lp(Y) + cp(X; Y)`` (eq. 14), which :class:`~decodekit.BeamSearch` uses for
finished hypotheses when ``coverage_penalty`` (beta) is set.

Which attention: a transformer decoder has one cross-attention per layer and head; GNMT had
one. decodekit takes the mean over the heads of one layer (``coverage_layer``, default the
last), each a distribution over the source, so the mean is one too; ``coverage_head`` picks
one head instead (OpenNMT-py and CTranslate2 read head 0 of the last layer). As in those
libraries, the penalty scores finished hypotheses (GNMT's final scoring function); which
beams keep running is decided by log-probability alone.
"""

from __future__ import annotations

import torch

TINY = 1.0e-20
"""Coverage below this counts as this, so a source token never attended to costs
``beta * log(1e-20)`` (about ``-46 beta``), a large finite penalty instead of ``-inf``."""


def source_attention(weights: torch.Tensor, layer: int, head: int | None = None) -> torch.Tensor:
    """``(rows, layers, heads, source)`` cross-attention -> ``(rows, source)``: layer
    ``layer``'s head ``head``, or its heads averaged (None)."""
    return weights[:, layer].mean(1) if head is None else weights[:, layer, head]


def coverage_penalty(coverage: torch.Tensor, valid: torch.Tensor, beta: float) -> torch.Tensor:
    """``coverage``: ``(..., source)`` attention summed over the target tokens; ``valid``:
    ``(..., source)`` bool, the real (unpadded) source positions. Returns ``(...)``, <= 0."""
    terms = coverage.clamp(min=TINY, max=1.0).log()
    return beta * torch.where(valid, terms, torch.zeros_like(terms)).sum(-1)
