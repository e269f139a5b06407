"""Diversity of an n-best list: distinct-n and self-BLEU.

A hypothesis is either text (split on whitespace into tokens) or a sequence of tokens (ids or
strings), so the same functions measure word-level diversity of text and token-level
diversity of token ids.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from sacrebleu.metrics import BLEU

Hypothesis = str | Sequence[Hashable]


def _tokens(hypothesis: Hypothesis) -> tuple:
    return tuple(hypothesis.split()) if isinstance(hypothesis, str) else tuple(hypothesis)


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    """Every n-gram of ``tokens`` in order (none when it is shorter than ``n``)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(hypotheses: Sequence[Hypothesis], n: int) -> float:
    """Distinct n-grams over all n-grams of the list (Li et al., 2016, "A Diversity-Promoting
    Objective Function for Neural Conversation Models", §4.3): 1.0 when no n-gram repeats
    anywhere in the list, small for near-duplicates; 0.0 for a list without n-grams."""
    if n < 1:
        raise ValueError(f"n={n!r} is not allowed: an integer >= 1")
    grams = [gram for h in hypotheses for gram in ngrams(_tokens(h), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(hypotheses: Sequence[str], tokenize: str = "13a") -> float:
    """Self-BLEU (Zhu et al., 2018, "Texygen: A Benchmarking Platform for Text Generation
    Models", §3.2): the mean sentence BLEU (sacrebleu, 0-100, effective order) of each
    hypothesis against all the others as references. 100 for identical hypotheses; lower
    means more diverse. Needs at least two hypotheses."""
    if len(hypotheses) < 2:
        raise ValueError(f"self-BLEU needs at least 2 hypotheses, got {len(hypotheses)}")
    bleu = BLEU(effective_order=True, tokenize=tokenize)
    scores = [
        bleu.sentence_score(h, [r for j, r in enumerate(hypotheses) if j != i]).score
        for i, h in enumerate(hypotheses)
    ]
    return sum(scores) / len(scores)
