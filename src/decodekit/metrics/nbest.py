"""One report per n-best list, and their average over prompts (what ``decodekit compare`` and
``bench/bench_diverse.py`` print)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from decodekit.metrics.diversity import distinct_n, self_bleu
from decodekit.metrics.quality import best_logprob, mean_logprob, oracle_at_k


@dataclass(frozen=True)
class NBestReport:
    """Metrics of one n-best list. ``distinct_n`` are over ``tokens`` (ids or words);
    ``self_bleu`` and the oracles over text; oracles are None without a reference."""

    distinct_1: float
    distinct_2: float
    distinct_3: float
    distinct_4: float
    self_bleu: float
    mean_logprob: float
    best_logprob: float
    oracle_bleu: float | None = None
    oracle_chrf: float | None = None


def nbest_report(
    texts: Sequence[str],
    logprobs: Sequence[float],
    tokens: Sequence[Sequence[int]] | None = None,
    reference: str | None = None,
) -> NBestReport:
    """The report of one list: ``texts`` and ``logprobs`` per hypothesis; ``tokens`` (default:
    the texts' words) for distinct-n; ``reference`` for oracle BLEU and chrF."""
    units = tokens if tokens is not None else texts
    return NBestReport(
        *(distinct_n(units, n) for n in (1, 2, 3, 4)),
        self_bleu=self_bleu(texts) if len(texts) > 1 else 100.0,
        mean_logprob=mean_logprob(logprobs),
        best_logprob=best_logprob(logprobs),
        oracle_bleu=oracle_at_k(texts, reference, "bleu") if reference is not None else None,
        oracle_chrf=oracle_at_k(texts, reference, "chrf") if reference is not None else None,
    )


def average_reports(reports: Sequence[NBestReport]) -> dict[str, float | None]:
    """Field-wise mean over prompts (None where no report has the field)."""
    out: dict[str, float | None] = {}
    for field in fields(NBestReport):
        values = [getattr(r, field.name) for r in reports if getattr(r, field.name) is not None]
        out[field.name] = sum(values) / len(values) if values else None
    return out
