"""OPERA's pieces by hand: the attention row, the window's column scores, the penalty and the
retrospection rule (the search itself runs on real models in tests/integration)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from decodekit.errors import ConfigError
from decodekit.testtime.opera import (
    OPERA,
    attention_row,
    column_scores,
    penalty_and_summary,
    rollback_target,
)


def test_the_attention_row_is_the_last_layers_max_over_heads_renormalised():
    weights = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.6, 0.4]]])  # (layers, heads, keys)
    assert attention_row(weights).tolist() == pytest.approx([0.6 / 1.4, 0.8 / 1.4])


def test_column_scores_are_the_products_down_each_column():
    # response of 2 tokens: rows r0 = [a], r1 = [b, c]; candidate row [d, e, f]
    a, b, c, d, e, f, scale = 0.9, 0.3, 0.7, 0.2, 0.5, 0.3, 2.0
    previous = torch.tensor([math.log(scale * a) + math.log(scale * b), math.log(scale * c), 0.0], dtype=torch.float64)
    got = column_scores(previous, torch.tensor([[d, e, f]], dtype=torch.float64), scale).exp()[0]
    expected = [1e-7 * (scale * a) * (scale * b) * (scale * d), 1e-7 * (scale * c) * (scale * e), 1e-7 * (scale * f)]
    assert got.tolist() == pytest.approx(expected, rel=1e-9)


def test_the_penalty_is_the_largest_column_and_the_window_limits_the_columns():
    scores = torch.tensor([[math.log(8.0), math.log(2.0), math.log(3.0)]], dtype=torch.float64)
    phi, column = penalty_and_summary(scores, None)
    assert (float(phi[0]), int(column[0])) == pytest.approx((8.0, 0))
    phi, column = penalty_and_summary(scores, 2)
    assert (float(phi[0]), int(column[0])) == pytest.approx((3.0, 2))
    huge, _ = penalty_and_summary(torch.tensor([[1e4]], dtype=torch.float64), None)
    assert math.isfinite(float(huge[0]))


def test_retrospection_needs_one_summary_position_repeated_in_every_lineage():
    retries = Counter()
    locs = [[12, 12, 12, 12], [3, 12, 12, 12]]
    assert rollback_target(locs, threshold=2, warmup=10, retries=retries, limit=5, steps=20) == 13
    assert rollback_target(locs, threshold=3, warmup=10, retries=retries, limit=5, steps=20) is None  # 3 > 3 fails
    assert rollback_target(locs, threshold=2, warmup=13, retries=retries, limit=5, steps=20) is None  # s below warmup
    retries[13] = 5
    assert rollback_target(locs, threshold=2, warmup=10, retries=retries, limit=5, steps=20) == 12  # s + 1 retried out
    retries[12] = 5
    assert rollback_target(locs, threshold=2, warmup=10, retries=retries, limit=5, steps=20) is None
    assert rollback_target([[12] * 4], threshold=2, warmup=10, retries=Counter(), limit=5, steps=13) == 12  # s + 1 not yet chosen


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"num_beams": 0}, "num_beams"), ({"candidates": 0}, "candidates"), ({"alpha": -1.0}, "alpha"), ({"scale": 0.0}, "scale"),
     ({"rollback_threshold": -1}, "rollback_threshold"), ({"window": 0}, "window"), ({"warmup": -1}, "warmup"), ({"length_penalty": float("inf")}, "length_penalty")],
)
def test_bad_settings_name_their_field(settings, field):
    with pytest.raises(ConfigError) as error:
        OPERA(**settings).validate()
    assert error.value.field == field
