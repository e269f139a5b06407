"""Scores of finished hypotheses: length penalties, and re-ranking with external scorers."""

from decodekit.scoring.length import LengthPenalty
from decodekit.scoring.rerank import EmbeddingScorer, FunctionScorer, Scorer, rerank

__all__ = ["EmbeddingScorer", "FunctionScorer", "LengthPenalty", "Scorer", "rerank"]
