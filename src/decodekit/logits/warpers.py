"""Sampling warpers: reshape the distribution a sampler draws from. Applied in the order
temperature, top-k, top-p, min-p, typical-p (transformers' order). Removed tokens get -inf."""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


class Temperature:
    """Divide scores by ``temperature`` (> 0). Never changes the argmax."""

    changes_argmax = False

    def __init__(self, temperature: float):
        self.temperature = float(temperature)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopK:
    """Keep the ``k`` highest-scoring tokens (Fan et al., 2018)."""

    changes_argmax = False

    def __init__(self, k: int):
        self.k = int(k)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.k, scores.shape[-1])
        threshold = torch.topk(scores, k, dim=-1).values[:, -1:]
        return scores.masked_fill(scores < threshold, NEG_INF)


class TopP:
    """Nucleus sampling (Holtzman et al., 2020): keep the smallest set of most likely tokens
    whose probability mass reaches ``p``; the most likely token is always kept."""

    changes_argmax = False

    def __init__(self, p: float):
        self.p = float(p)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        probs = ordered.softmax(-1)
        # mass strictly before each token: a token is kept while that mass is below p
        before = probs.cumsum(-1) - probs
        drop_sorted = before >= self.p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, NEG_INF)


class MinP:
    """Keep tokens whose probability is at least ``min_p`` times the top token's
    (Nguyen et al., 2024)."""

    changes_argmax = False

    def __init__(self, min_p: float):
        self.min_p = float(min_p)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(-1)
        threshold = probs.max(-1, keepdim=True).values * self.min_p
        return scores.masked_fill(probs < threshold, NEG_INF)


class TypicalP:
    """Locally typical sampling (Meister et al., 2023): keep the tokens whose surprisal is
    closest to the distribution's entropy until their mass reaches ``p``."""

    changes_argmax = True  # the most likely token may be atypical

    def __init__(self, p: float):
        self.p = float(p)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        log_probs = scores.log_softmax(-1)
        probs = log_probs.exp()
        entropy = -(torch.nan_to_num(probs * log_probs)).sum(-1, keepdim=True)
        distance = (entropy + log_probs).abs()  # |H - surprisal|
        ordered, order = torch.sort(distance, dim=-1)
        mass = probs.gather(-1, order)
        before = mass.cumsum(-1) - mass
        drop_sorted = before >= self.p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, NEG_INF)


def warp_rows(
    scores: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    typical_p: torch.Tensor,
) -> torch.Tensor:
    """The warpers above with one setting per row (all ``(rows,)``; a disabled warper's
    neutral value: temperature 1, top-k 0, top-p 1, min-p 0, typical-p 1), in the same order and
    with the same arithmetic as the chain a :class:`~decodekit.Sampling` config builds, so a
    row's result is the one its own config gives. ``scores``: ``(rows, vocab)``, not mutated.
    A warper no row uses costs nothing."""
    vocab = scores.shape[-1]
    if bool((temperature != 1.0).any()):
        scores = scores / temperature[:, None]
    if bool((top_k > 0).any()):
        k = top_k.clamp(max=vocab)
        values = torch.topk(scores, int(k.max()), dim=-1).values
        threshold = values.gather(1, (k - 1).clamp(min=0)[:, None])
        threshold = threshold.masked_fill((top_k <= 0)[:, None], NEG_INF)
        scores = scores.masked_fill(scores < threshold, NEG_INF)
    if bool((top_p < 1.0).any()):
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs
        drop_sorted = (before >= top_p[:, None]) & (top_p < 1.0)[:, None]
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, NEG_INF)
    if bool((min_p > 0.0).any()):
        probs = scores.softmax(-1)
        threshold = probs.max(-1, keepdim=True).values * min_p[:, None]
        scores = scores.masked_fill((probs < threshold) & (min_p > 0.0)[:, None], NEG_INF)
    if bool((typical_p < 1.0).any()):
        log_probs = scores.log_softmax(-1)
        probs = log_probs.exp()
        entropy = -(torch.nan_to_num(probs * log_probs)).sum(-1, keepdim=True)
        distance = (entropy + log_probs).abs()
        ordered, order = torch.sort(distance, dim=-1)
        mass = probs.gather(-1, order)
        before = mass.cumsum(-1) - mass
        drop_sorted = (before >= typical_p[:, None]) & (typical_p < 1.0)[:, None]
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, NEG_INF)
    return scores
