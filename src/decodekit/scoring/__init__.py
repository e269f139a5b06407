"""Scores of finished hypotheses: length penalties (and, later, coverage, diversity, rewards)."""

from decodekit.scoring.length import LengthPenalty

__all__ = ["LengthPenalty"]
