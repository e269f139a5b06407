"""n-best metrics on hand-computed lists, and self-BLEU against sacrebleu called directly."""

from __future__ import annotations

import pytest
import sacrebleu

from decodekit.metrics import (
    average_reports,
    best_logprob,
    distinct_n,
    mean_logprob,
    nbest_report,
    oracle_at_k,
    self_bleu,
)


def test_distinct_n_on_hand_counted_strings():
    hyps = ["the cat sat", "the cat ran", "a dog sat"]
    # unigrams: the cat sat the cat ran a dog sat -> 9 total, distinct {the cat sat ran a dog} = 6
    assert distinct_n(hyps, 1) == pytest.approx(6 / 9)
    # bigrams: (the cat) x2, (cat sat), (cat ran), (a dog), (dog sat) -> 6 total, 5 distinct
    assert distinct_n(hyps, 2) == pytest.approx(5 / 6)
    # trigrams: all 3 distinct
    assert distinct_n(hyps, 3) == 1.0
    assert distinct_n(hyps, 4) == 0.0  # no 4-grams at all


def test_distinct_n_on_token_ids_and_duplicates():
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(2 / 4)
    assert distinct_n([[5, 5, 5, 5]], 1) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="n=0"):
        distinct_n(["a"], 0)


def test_self_bleu_matches_sacrebleu_directly():
    hyps = ["the cat sat on the mat", "the cat lay on the mat", "a dog barked at the postman"]
    expected = sum(
        sacrebleu.sentence_bleu(h, [r for j, r in enumerate(hyps) if j != i], use_effective_order=True).score
        for i, h in enumerate(hyps)
    ) / 3
    assert self_bleu(hyps) == pytest.approx(expected)


def test_self_bleu_extremes():
    assert self_bleu(["x y z w", "x y z w"]) == pytest.approx(100.0)
    assert self_bleu(["a b c d", "e f g h"]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 2"):
        self_bleu(["alone"])


def test_oracle_at_k_takes_the_best_of_the_first_k():
    hyps = ["completely wrong words here", "the cat sat on the mat"]
    ref = "the cat sat on the mat"
    assert oracle_at_k(hyps, ref, "bleu") == pytest.approx(100.0)
    assert oracle_at_k(hyps, ref, "bleu", k=1) < 10
    assert oracle_at_k(hyps, [ref], "chrf") == pytest.approx(100.0)
    assert oracle_at_k(hyps, ref, lambda h, refs: float(h == refs[0]), k=2) == 1.0
    with pytest.raises(ValueError, match="metric"):
        oracle_at_k(hyps, ref, "rouge")


def test_logprob_summaries_and_report():
    assert mean_logprob([-1.0, -3.0]) == -2.0 and best_logprob([-1.0, -3.0]) == -1.0
    report = nbest_report(["a b c", "a b d"], [-1.0, -2.0], reference="a b c")
    assert report.distinct_2 == pytest.approx(3 / 4) and report.oracle_bleu == pytest.approx(100.0)
    averaged = average_reports([report, nbest_report(["x y", "x y"], [-4.0, -4.0])])
    assert averaged["mean_logprob"] == pytest.approx((-1.5 - 4.0) / 2)
    assert averaged["oracle_bleu"] == pytest.approx(100.0)  # only the first list has a reference
