"""Re-ranking a finished n-best list with an external scorer.

A scorer judges candidates the decoder's own score cannot: a learned ranker, a classifier, a
similarity between the prompt and the continuation (RankGen: Krishna et al. 2022, "RankGen:
Improving Text Generation with Large Ranking Models", which scores a continuation by the dot
product of prefix and suffix embeddings). :func:`rerank` mixes it with the decoder's score:
``(1 - weight) * score + weight * scorer``, and sorts by the mix (ties keep the decoder's
order). Every scorer has ``score(prompt, texts) -> list[float]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError, InputError
from decodekit.results import GenerationResult


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompt: str, texts: Sequence[str]) -> list[float]: ...


class FunctionScorer:
    """``fn(prompt, text) -> float`` as a scorer."""

    def __init__(self, fn: Callable[[str, str], float]):
        self.fn = fn

    def score(self, prompt: str, texts: Sequence[str]) -> list[float]:
        return [float(self.fn(prompt, t)) for t in texts]


class EmbeddingScorer:
    """RankGen's form with any transformers encoder: the score of a continuation is the cosine
    similarity of the mean-pooled last hidden states of the prompt and of the continuation
    (each text one row of one batched forward, padded, padding masked out of the mean)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32):
        if tokenizer.pad_token_id is None:
            raise InputError("EmbeddingScorer: the tokenizer has no pad token; set tokenizer.pad_token")
        v.integer("batch_size", batch_size, 1, 1 << 16)
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True).to(device)
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1].float()
            mask = batch["attention_mask"][:, :, None].float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        return torch.cat(out)

    def score(self, prompt: str, texts: Sequence[str]) -> list[float]:
        vectors = self._embed([prompt, *[t if t else " " for t in texts]])
        return torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:], dim=-1).tolist()


def as_scorer(scorer) -> Scorer:
    if isinstance(scorer, Scorer):
        return scorer
    if callable(scorer):
        return FunctionScorer(scorer)
    raise ConfigError("scorer", scorer, "an object with score(prompt, texts) -> list[float] (e.g. EmbeddingScorer, decodekit.testtime.ClassifierPRM) or a callable (prompt, text) -> float")


def rerank(results: GenerationResult | Sequence[GenerationResult], scorer, weight: float = 1.0) -> GenerationResult | list[GenerationResult]:
    """The n-best lists re-sorted by ``(1 - weight) * score + weight * scorer(prompt, text)``;
    each sequence's ``score`` becomes that mix (the decoder's is kept in ``logprob`` and the
    original order for ties). One result in, one out; a list in, a list out."""
    weight = v.number("weight", weight, 0.0, 1.0)
    scorer = as_scorer(scorer)
    single = isinstance(results, GenerationResult)
    out = []
    for result in [results] if single else list(results):
        if not isinstance(result, GenerationResult):
            raise InputError(f"rerank: a GenerationResult, not {type(result).__name__}")
        texts = [s.text for s in result.sequences]
        if any(t is None for t in texts):
            raise InputError("rerank: the sequences have no text (decode with a tokenizer)")
        values = scorer.score(result.prompt or "", texts) if texts else []
        if len(values) != len(texts):
            raise InputError(f"scorer returned {len(values)} scores for {len(texts)} texts")
        mixed = [(1.0 - weight) * s.score + weight * float(value) for s, value in zip(result.sequences, values)]
        order = sorted(range(len(mixed)), key=lambda i: (-mixed[i], i))
        sequences = [dataclasses.replace(result.sequences[i], score=mixed[i]) for i in order]
        out.append(dataclasses.replace(result, sequences=sequences))
    return out[0] if single else out


@dataclass(frozen=True)
class Rescoring:
    """In-beam re-scoring (:class:`~decodekit.BeamSearch`'s ``rescore``): every ``every``
    steps, the step's candidates are scored by ``scorer`` and the beams that keep running are
    the best by ``(1 - weight) * logprob + weight * scorer``; between re-scorings a beam keeps
    its prefix's last scorer value. A finished hypothesis is scored when it finishes:
    ``(1 - weight) * logprob / lp + weight * scorer``. The scorer sees texts (the decoder's
    tokenizer), or token-id lists when there is none."""

    scorer: object
    every: int = 4
    weight: float = 0.5

    def validate(self) -> None:
        as_scorer(self.scorer)
        v.integer("rescore.every", self.every, 1, 1 << 20, "steps between re-scorings")
        v.number("rescore.weight", self.weight, 0.0, 1.0)
