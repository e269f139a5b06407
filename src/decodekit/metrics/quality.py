"""Quality of an n-best list: oracle@k for any per-hypothesis metric, and log-probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sacrebleu.metrics import BLEU, CHRF

SentenceMetric = Callable[[str, Sequence[str]], float]
"""``(hypothesis, references) -> score``; higher is better."""


def sentence_bleu(hypothesis: str, references: Sequence[str]) -> float:
    """sacrebleu sentence BLEU (0-100, effective order)."""
    return BLEU(effective_order=True).sentence_score(hypothesis, list(references)).score


def sentence_chrf(hypothesis: str, references: Sequence[str]) -> float:
    """sacrebleu sentence chrF (0-100)."""
    return CHRF().sentence_score(hypothesis, list(references)).score


METRICS: dict[str, SentenceMetric] = {"bleu": sentence_bleu, "chrf": sentence_chrf}


def oracle_at_k(
    hypotheses: Sequence[str],
    references: str | Sequence[str],
    metric: str | SentenceMetric = "bleu",
    k: int | None = None,
) -> float:
    """The best score among the first ``k`` hypotheses (all when None) against the references:
    the "oracle accuracy" of Vijayakumar et al. (2018, §5), which rewards an n-best list that
    contains a good output anywhere, not only at rank 1. ``metric`` is ``"bleu"``, ``"chrf"``
    or a ``(hypothesis, references) -> float`` callable."""
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is not allowed: one of {', '.join(METRICS)} or a callable")
        metric = METRICS[metric]
    if k is not None and k < 1:
        raise ValueError(f"k={k!r} is not allowed: an integer >= 1, or None for all")
    refs = [references] if isinstance(references, str) else list(references)
    chosen = list(hypotheses)[:k]
    if not chosen:
        raise ValueError("hypotheses: oracle@k needs at least one hypothesis")
    return max(float(metric(h, refs)) for h in chosen)


def mean_logprob(logprobs: Sequence[float]) -> float:
    """Mean of the hypotheses' total log-probabilities."""
    return sum(logprobs) / len(logprobs)


def best_logprob(logprobs: Sequence[float]) -> float:
    """Highest total log-probability in the list."""
    return max(logprobs)
