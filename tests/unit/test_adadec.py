"""AdaDec (He et al. 2025) on scripted models: the pause-then-rerank decision by hand, the
entropy trigger, and the threshold's logistic fit."""

from __future__ import annotations

import math

import pytest
import torch

from decodekit.api import Decoder
from decodekit.errors import ConfigError, InputError
from decodekit.model.scripted import ScriptedModel
from decodekit.testtime.adadec import AdaDec, _fit, entropy
from decodekit.testtime.search import run_search

EOS = 0
TABLE = {
    1: {2: 0.5, 3: 0.45, 4: 0.05},  # uncertain: greedy takes 2, whose future is poor
    2: {5: 0.3, 4: 0.3, EOS: 0.4},
    3: {5: 0.95, EOS: 0.05},
    4: {EOS: 1.0},
    5: {EOS: 1.0},
}


def model() -> ScriptedModel:
    def next_logprobs(sequence):
        probs = TABLE[sequence[-1]]
        return [math.log(probs[i]) if i in probs else -math.inf for i in range(6)]

    return ScriptedModel(6, next_logprobs, eos_token_ids=(EOS,))


def search(config, prompt=(1,)):
    return run_search(Decoder(model()), list(prompt), config, max_new_tokens=8)


def test_the_entropy_is_in_nats_and_ignores_impossible_tokens():
    logits = torch.tensor([[0.0, -math.inf, 0.0], [5.0, -math.inf, -math.inf]])
    assert entropy(logits).tolist() == pytest.approx([math.log(2), 0.0])


def test_a_pause_reranks_the_candidates_by_their_lookaheads_mean_logprob():
    assert Decoder(model()).generate([1], max_new_tokens=8).sequences[0].token_ids == [2, EOS]
    result = search(AdaDec(threshold=0.5, candidates=2, lookahead=2))
    # H(after 1) = 0.86 >= 0.5: pause. By hand: S(2) = (log .5 + log .4) / 2 = -0.805 (its
    # lookahead ends at EOS); S(3) = (log .45 + log .95 + log 1) / 3 = -0.283 -> 3. Then
    # H(after 3) = 0.199 and H(after 5) = 0: greedy.
    assert result.best.token_ids == [3, 5, EOS]
    assert result.best.logprob == pytest.approx(math.log(0.45) + math.log(0.95), abs=1e-5)
    assert result.best.finish_reason == "eos"


def test_a_threshold_above_every_entropy_is_greedy_and_lookahead_zero_keeps_the_top_token():
    greedy = [2, EOS]
    assert search(AdaDec(threshold=5.0)).best.token_ids == greedy
    assert search(AdaDec(threshold=0.0, lookahead=0)).best.token_ids == greedy  # S(c) = log p(c)


def test_max_pauses_bounds_the_reranking():
    # threshold 0.1 pauses after 1 and after 3 (H = 0.199); one pause allowed: only the first
    assert search(AdaDec(threshold=0.1, candidates=2, lookahead=2, max_pauses=1)).best.token_ids == [3, 5, EOS]
    assert search(AdaDec(threshold=0.1, candidates=2, lookahead=2, max_pauses=0)).best.token_ids == [2, EOS]


def test_the_logistic_fit_is_at_the_objectives_minimum():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(400, generator=generator, dtype=torch.float64) * 3
    y = (torch.rand(400, generator=generator, dtype=torch.float64) < torch.sigmoid(2.0 - 1.5 * x)).double()
    w, b = _fit(x, y)
    params = torch.tensor([w, b], dtype=torch.float64, requires_grad=True)
    z = params[0] * x + params[1]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum") + 0.5 * params[0] ** 2
    loss.backward()
    assert params.grad.abs().max() < 1e-6
    assert -2.5 < w < -0.8 and 1.0 < b < 3.0  # near the generating -1.5, 2.0


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"threshold": -1.0}, "threshold"), ({"candidates": 0}, "candidates"), ({"lookahead": -1}, "lookahead"),
     ({"lookahead_stop": ""}, "lookahead_stop"), ({"max_pauses": -1}, "max_pauses"), ({"threshold": float("nan")}, "threshold")],
)
def test_bad_settings_name_their_field(settings, field):
    with pytest.raises(ConfigError) as error:
        AdaDec(**settings).validate()
    assert error.value.field == field


def test_learn_threshold_refuses_unusable_samples():
    from decodekit.testtime.adadec import learn_threshold

    with pytest.raises(InputError):
        learn_threshold(Decoder(model()), [5])
