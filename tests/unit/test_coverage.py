"""GNMT's coverage penalty (Wu et al. 2016, eq. 14): the formula and a beam search by hand."""

from __future__ import annotations

import math

import pytest
import torch

from decodekit.api import Decoder
from decodekit.errors import ConfigError
from decodekit.model.scripted import ScriptedModel
from decodekit.scoring.coverage import TINY, coverage_penalty
from decodekit.search.base import SearchContext
from decodekit.search.beam import BeamSearch

EOS = 2


def test_the_formula_by_hand_ignores_padding_and_caps_at_one():
    coverage = torch.tensor([[0.5, 1.7, 0.0], [0.0, 0.25, 0.0]])
    valid = torch.tensor([[True, True, False], [True, True, False]])
    got = coverage_penalty(coverage, valid, 2.0)
    assert got.tolist() == pytest.approx([2 * math.log(0.5), 2 * (math.log(TINY) + math.log(0.25))], rel=1e-6)


def attention(*rows):
    """``(rows, layers=1, heads=2, source)``: both heads the given distribution."""
    return torch.tensor(rows, dtype=torch.float32)[:, None, None, :].expand(-1, 1, 2, -1).clone()


def test_coverage_reorders_finished_hypotheses_by_hand():
    """Two beams after one step: 0 (p .6) keeps attending to source token 0, 1 (p .3) moves to
    token 1; both then end (EOS .9). Without coverage 0 wins, with beta = 1 the one that left
    a source token unattended pays log(TINY). Source position 2 is padding and never counts."""
    context = SearchContext(batch_size=1, max_new_tokens=2, eos_token_ids=torch.tensor([EOS]), pad_token_id=0,
                            device=torch.device("cpu"), vocab_size=3, prompt_lengths=(2,))
    first = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]).log()
    second = torch.tensor([[0.05, 0.05, 0.9], [0.05, 0.05, 0.9]]).log()
    results = {}
    for beta in (0.0, 1.0):
        run = BeamSearch(num_beams=2, num_return_sequences=2, length_penalty=0.0, coverage_penalty=beta).begin(context)
        if beta:
            run.attend(attention([1.0, 0.0, 0.0], [1.0, 0.0, 0.0]), first)
        step = run.step(first, 0)
        assert step.tokens.tolist() == [0, 1] and step.parents.tolist() == [0, 0]
        if beta:
            run.attend(attention([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]), second)
        run.step(second, 1)
        results[beta] = [(h.token_ids, h.score) for h in run.finish()[0]]
    a, b = math.log(0.6) + math.log(0.9), math.log(0.3) + math.log(0.9)
    assert [ids for ids, _ in results[0.0]] == [[0, EOS], [1, EOS]]
    assert [score for _, score in results[0.0]] == pytest.approx([a, b], abs=1e-5)
    assert [ids for ids, _ in results[1.0]] == [[1, EOS], [0, EOS]]
    assert [score for _, score in results[1.0]] == pytest.approx([b, a + math.log(TINY)], abs=1e-4)


def test_a_model_without_attention_weights_is_refused_naming_the_field():
    model = ScriptedModel(4, lambda s: [0.0, -1.0, -2.0, -3.0], eos_token_ids=(0,))
    with pytest.raises(ConfigError) as error:
        Decoder(model).generate([1], BeamSearch(num_beams=2, coverage_penalty=0.2), max_new_tokens=2)
    assert error.value.field == "coverage_penalty"
    assert model.forward_count == 0


@pytest.mark.parametrize(("settings", "field"), [({"coverage_penalty": -0.1}, "coverage_penalty"), ({"coverage_penalty": float("inf")}, "coverage_penalty"), ({"coverage_layer": 1.5}, "coverage_layer"), ({"coverage_head": "0"}, "coverage_head")])
def test_bad_coverage_settings_name_their_field(settings, field):
    with pytest.raises(ConfigError) as error:
        BeamSearch(**settings).validate()
    assert error.value.field == field
