"""Sampling warpers: reshape the distribution a sampler draws from. Applied in the order
temperature, top-k, top-p, min-p, typical-p, epsilon, eta (transformers' order), then top-nσ.
Removed tokens get -inf. ``min_keep`` (transformers' ``min_tokens_to_keep``): a truncating
warper never keeps fewer than that many tokens."""

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

    def __init__(self, k: int, min_keep: int = 1):
        self.k = max(int(k), int(min_keep))

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.k, scores.shape[-1])
        threshold = torch.topk(scores, k, dim=-1).values[:, -1:]
        return scores.masked_fill(scores < threshold, NEG_INF)


class TopP:
    """Nucleus sampling (Holtzman et al., 2020): keep the smallest set of most likely tokens
    whose probability mass reaches ``p``; the most likely token is always kept."""

    changes_argmax = False

    def __init__(self, p: float, min_keep: int = 1):
        self.p, self.min_keep = float(p), int(min_keep)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        p = torch.full((scores.shape[0], 1), self.p, device=scores.device)
        return scores.masked_fill(~nucleus(scores, p, self.min_keep), NEG_INF)


NUCLEUS_RANKED = 64
"""Candidates :func:`nucleus` ranks first (a partial sort); rows whose mass they do not cover
go on to :func:`_binned`."""
NUCLEUS_BINS, NUCLEUS_SPAN = 1024, 32.0
""":func:`_binned`'s histogram: bins of ``SPAN / BINS`` nats below each row's top score."""


def nucleus(scores: torch.Tensor, p: torch.Tensor, min_keep: int = 1) -> torch.Tensor:
    """``(rows, vocab)`` bool: the tokens top-p keeps (``p``: ``(rows, 1)``): the most likely
    tokens while the probability mass strictly before them is below ``p``, the most likely
    always (the ``min_keep`` most likely). Subtle: sorting the vocabulary is slow on the CPU,
    so the top 64 tokens are ranked first; a row whose mass they do not cover is decided by a
    histogram instead (:func:`_binned`). A row's result never depends on the other rows."""
    rows, vocab = scores.shape
    probs = scores.softmax(-1)
    m = min(max(NUCLEUS_RANKED, min_keep), vocab)
    top, index = probs.topk(m, dim=-1) if m < vocab else probs.sort(dim=-1, descending=True)
    before = top.cumsum(-1) - top  # mass strictly before each token
    kept = before < p
    kept[:, :min_keep] = True
    done = (before[:, -1] + top[:, -1] >= p[:, 0]) | (m == vocab)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    if bool(done.all()):
        return keep.scatter_(1, index, kept)
    finished, which = done.nonzero().squeeze(1), (~done).nonzero().squeeze(1)
    if len(finished):
        keep[finished] = keep[finished].scatter_(1, index[finished], kept[finished])
    sub = _binned(scores.index_select(0, which), probs.index_select(0, which), p.index_select(0, which))
    # the min_keep most likely are always kept (ties: as ranked); only NaN rows keep none here
    short = ~sub.any(-1) if min_keep == 1 else torch.count_nonzero(sub, -1) < min_keep
    if bool(short.any()):
        sub[short] = sub[short].scatter_(1, index[which][short][:, :min_keep], True)
    keep[which] = sub
    return keep


def _binned(scores: torch.Tensor, probs: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Top-p without a sort: each token falls in a bin by how far its score is below the row's
    top score (bins in probability order); the bins' cumulative mass gives the bin where the
    mass reaches ``p``. Tokens of the bins before it are kept, of the bins after it dropped,
    and only that bin's tokens are ranked (probability descending, then token id)."""
    rows, last = scores.shape[0], NUCLEUS_BINS - 1.0
    top = scores.max(-1, keepdim=True).values
    distance = ((top - scores) * (NUCLEUS_BINS / NUCLEUS_SPAN)).nan_to_num_(nan=last).clamp_(max=last).floor_()
    # Subtle: float -> int32 -> int64 is several times faster than float -> int64 on the CPU.
    bins = distance.to(torch.int32).long()
    cum = probs.new_zeros(rows, NUCLEUS_BINS).scatter_add_(1, bins, probs).cumsum(-1)
    crossing = (cum < p).sum(-1, keepdim=True).clamp_(max=NUCLEUS_BINS - 1)
    before_bin = cum.gather(1, (crossing - 1).clamp(min=0)).masked_fill(crossing == 0, 0.0)
    keep = distance < crossing  # bins compared as floats: no more integer copies
    in_bin = distance == crossing
    values, index = probs.masked_fill(~in_bin, -1.0).topk(int(torch.count_nonzero(in_bin, -1).max()), dim=-1)
    index, order = index.sort(-1)  # a canonical order: ties by token id, whatever topk returns
    values, order = values.gather(1, order).sort(dim=-1, descending=True, stable=True)
    index = index.gather(1, order)
    before = before_bin + (values.cumsum(-1) - values)
    kept = ((before < p) & (values >= 0)) | keep.gather(1, index)
    return keep.scatter_(1, index, kept)


class MinP:
    """Keep tokens whose probability is at least ``min_p`` times the top token's
    (Nguyen et al., 2024)."""

    changes_argmax = False

    def __init__(self, min_p: float, min_keep: int = 1):
        self.min_p, self.min_keep = float(min_p), int(min_keep)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(-1)
        threshold = probs.max(-1, keepdim=True).values * self.min_p
        return scores.masked_fill(_keep_top(scores, probs < threshold, self.min_keep), NEG_INF)


class TypicalP:
    """Locally typical sampling (Meister et al., 2023): keep the tokens whose surprisal is
    closest to the distribution's entropy until their mass reaches ``p``."""

    changes_argmax = True  # the most likely token may be atypical

    def __init__(self, p: float, min_keep: int = 1):
        self.p, self.min_keep = float(p), int(min_keep)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        log_probs = scores.log_softmax(-1)
        probs = log_probs.exp()
        entropy = -(torch.nan_to_num(probs * log_probs)).sum(-1, keepdim=True)
        distance = (entropy + log_probs).abs()  # |H - surprisal|
        ordered, order = torch.sort(distance, dim=-1)
        mass = probs.gather(-1, order)
        before = mass.cumsum(-1) - mass
        drop_sorted = before >= self.p
        drop_sorted[:, : self.min_keep] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, NEG_INF)


def _keep_top(scores: torch.Tensor, drop: torch.Tensor, min_keep: int) -> torch.Tensor:
    """``drop`` with the ``min_keep`` highest-scoring tokens of each row never dropped (as
    transformers: a token scoring below the ``min_keep``-th highest may go)."""
    k = min(min_keep, scores.shape[-1])
    return drop & (scores < torch.topk(scores, k, dim=-1).values[:, -1:])


class Epsilon:
    """Epsilon sampling (Hewitt et al., 2022, "Truncation Sampling as Language Model
    Desmoothing", eq. 4): drop tokens whose probability is below ``epsilon``."""

    changes_argmax = False

    def __init__(self, epsilon: float, min_keep: int = 1):
        self.epsilon, self.min_keep = float(epsilon), int(min_keep)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        drop = scores.softmax(-1) < self.epsilon
        return scores.masked_fill(_keep_top(scores, drop, self.min_keep), NEG_INF)


class Eta:
    """Eta sampling (Hewitt et al., 2022, eq. 6): drop tokens whose probability is below
    ``min(epsilon, sqrt(epsilon) * exp(-entropy))``."""

    changes_argmax = False

    def __init__(self, epsilon: float, min_keep: int = 1):
        self.epsilon, self.min_keep = float(epsilon), int(min_keep)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(-1)
        entropy = torch.distributions.Categorical(logits=scores).entropy()
        eps = torch.tensor(self.epsilon, device=scores.device)
        eta = torch.min(eps, torch.sqrt(eps) * torch.exp(-entropy))[:, None]
        return scores.masked_fill(_keep_top(scores, probs < eta, self.min_keep), NEG_INF)


class TopNSigma:
    """Top-nσ (Tang et al., 2024, "Top-nσ: Not All Logits Are You Need", eq. 3): keep the
    tokens whose logit is within ``n`` standard deviations of the largest (the deviation over
    the finite logits). Invariant to temperature."""

    changes_argmax = False

    def __init__(self, n: float):
        self.n = float(n)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(scores)
        count = finite.sum(-1, keepdim=True).clamp(min=1)
        values = torch.where(finite, scores, 0.0)
        mean = values.sum(-1, keepdim=True) / count
        var = (torch.where(finite, scores - mean, 0.0) ** 2).sum(-1, keepdim=True) / count
        top = scores.max(-1, keepdim=True).values
        return scores.masked_fill(scores < top - self.n * var.sqrt(), NEG_INF)


def exclude_top_choices(scores: torch.Tensor, threshold: float, apply: torch.Tensor) -> torch.Tensor:
    """XTC, "Exclude Top Choices" (p-e-w, text-generation-webui and llama.cpp): in the rows
    where ``apply`` (``(rows,)`` bool, drawn with the configured probability) and at least two
    tokens have probability >= ``threshold``, drop all of those but the least likely."""
    probs = scores.softmax(-1)
    above = probs >= threshold
    several = above.sum(-1) >= 2
    least = torch.where(above, probs, 2.0).argmin(-1)  # the least likely token above threshold
    drop = above & (apply & several)[:, None]
    drop[torch.arange(scores.shape[0], device=scores.device), least] = False
    return scores.masked_fill(drop, NEG_INF)


def mirostat_truncate(scores: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Mirostat 2.0 (Basu et al., 2021, "Mirostat: A Neural Text Decoding Algorithm that
    Directly Controls Perplexity", Alg. 1 as revised in v2): drop the tokens whose surprisal
    ``-log2 p`` exceeds the row's target ``mu`` (``(rows,)``); the most likely always stays."""
    surprisal = -scores.log_softmax(-1) / torch.log(torch.tensor(2.0))
    drop = surprisal > mu[:, None]
    drop[torch.arange(scores.shape[0], device=scores.device), scores.argmax(-1)] = False
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
    nucleus_rows = (top_p < 1.0).nonzero().squeeze(1)
    if len(nucleus_rows) == len(top_p):
        scores = scores.masked_fill(~nucleus(scores, top_p[:, None]), NEG_INF)
    elif len(nucleus_rows):  # only the rows that use top-p pay for it
        part = scores.index_select(0, nucleus_rows)
        scores = scores.index_copy(0, nucleus_rows, part.masked_fill(~nucleus(part, top_p[nucleus_rows, None]), NEG_INF))
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
