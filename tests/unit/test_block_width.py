"""The width a batched verification step scores (speculative/budget.py): from the fitted
cost of block tokens and the run's acceptance rate."""

from __future__ import annotations

import pytest

from decodekit.speculative.budget import BlockWidth


def fed(fixed: float, per_token: float, p: float) -> BlockWidth:
    width = BlockWidth()
    for tokens in (20, 40, 80, 160, 320, 640, 100, 200, 60, 30):
        width.record(tokens, fixed + per_token * tokens, drafted=100, accepted=int(100 * p))
    return width


def test_one_row_or_no_history_keeps_the_whole_draft():
    assert BlockWidth().width([3, 20, 1]) == 20
    assert fed(0.001, 0.0005, 0.5).width([20]) == 20


def test_expensive_tokens_and_poor_acceptance_cut_the_long_draft():
    # 32 rows, one with a long draft: each extra position costs every row
    lengths = [20] + [2] * 31
    assert fed(0.002, 0.0002, 0.4).width(lengths) == 2


def test_cheap_tokens_or_good_acceptance_keep_it():
    lengths = [20] + [2] * 31
    assert fed(0.5, 1e-7, 0.4).width(lengths) == 20  # the forward's fixed cost dominates
    assert fed(0.002, 0.00001, 0.99).width([20] * 16 + [2] * 16) == 20  # most rows draft far, and are right


def test_a_cost_that_does_not_grow_with_tokens_keeps_the_whole_draft():
    width = BlockWidth()
    for tokens in (20, 40, 80, 160, 320, 640, 100, 200):
        width.record(tokens, 0.01, drafted=100, accepted=10)  # asynchronous: launch time only
    assert width.width([20] + [2] * 31) == 20


def test_rows_without_a_draft_never_cut_the_block_to_nothing():
    assert fed(0.002, 0.0002, 0.01).width([0, 0, 0, 7]) >= 1


@pytest.mark.parametrize("proposer", ["suffix", "draft"])
def test_cutting_every_draft_to_one_token_changes_no_seeded_sample(monkeypatch, proposer):
    """The cut at its most aggressive (one draft position per step whenever rows decode
    together): a seeded sample in a batch is still what it is alone, for deterministic drafts
    (cut) and a draft model's (never cut: its tokens take part in the draws)."""
    import decodekit
    from decodekit.speculative import Speculative

    decoder = decodekit.load()
    strategy = decodekit.Sampling(seed=5, top_k=30, speculative=Speculative(proposer))
    prompts = ["x = 1\nx = 1\nx = 1\n", "def f(a, b):\n    return a + b\n"]
    alone = [decoder.generate(p, strategy, max_new_tokens=24).best.token_ids for p in prompts]
    monkeypatch.setattr(BlockWidth, "width", lambda self, lengths: min(max(lengths), 1))
    together = decoder.generate(prompts, strategy, max_new_tokens=24)
    assert [r.best.token_ids for r in together] == alone
