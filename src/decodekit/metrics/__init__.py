"""n-best metrics: diversity (distinct-n, self-BLEU) and quality (oracle@k, log-probability).

>>> from decodekit.metrics import distinct_n, self_bleu, oracle_at_k
>>> distinct_n(["a b c", "a b d"], 2)
0.75
"""

from decodekit.metrics.diversity import distinct_n, ngrams, self_bleu
from decodekit.metrics.nbest import NBestReport, average_reports, nbest_report
from decodekit.metrics.quality import (
    METRICS,
    best_logprob,
    mean_logprob,
    oracle_at_k,
    sentence_bleu,
    sentence_chrf,
)

__all__ = [
    "METRICS",
    "NBestReport",
    "average_reports",
    "best_logprob",
    "distinct_n",
    "mean_logprob",
    "nbest_report",
    "ngrams",
    "oracle_at_k",
    "self_bleu",
    "sentence_bleu",
    "sentence_chrf",
]
