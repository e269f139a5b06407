"""Bad Diverse Beam Search settings: a ConfigError naming the field and what is allowed,
raised before any model call."""

from __future__ import annotations

import pytest

from decodekit.api import STRATEGIES, make_strategy
from decodekit.cli import build_parser, make_cli_strategy
from decodekit.engine import decode
from decodekit.errors import ConfigError
from decodekit.model.scripted import ScriptedModel
from decodekit.options import DecodeOptions
from decodekit.search.diverse import DiverseBeamSearch

BAD = [
    ({"num_beams": 6, "num_groups": 4}, "num_groups", "divisor of num_beams=6"),
    ({"num_beams": 2, "num_groups": 4}, "num_groups", "at most num_beams=2"),
    ({"num_groups": 0}, "num_groups", "integer >= 1"),
    ({"diversity_strength": -0.5}, "diversity_strength", ">= 0"),
    ({"diversity_strength": (0.0, 1.0, -1.0, 1.0)}, "diversity_strength", ">= 0"),
    ({"num_groups": 4, "diversity_strength": (0.5, 1.0)}, "diversity_strength", "one per group"),
    ({"diversity_strength": float("nan")}, "diversity_strength", "finite"),
    ({"diversity": "cumulative", "diversity_temperature": 0.0}, "diversity_temperature", "> 0"),
    ({"diversity_temperature": -1.0}, "diversity_temperature", "> 0"),
    ({"diversity": "ngram", "ngram_size": 0}, "ngram_size", ">= 1"),
    ({"diversity": "jaccard"}, "diversity", "hamming, cumulative, ngram, embedding"),
    ({"num_return_sequences": 9}, "num_return_sequences", "[1, 8]"),
    ({"num_return_sequences": 3, "per_group": True}, "num_return_sequences", "beams per group"),
    ({"early_stopping": "sometimes"}, "early_stopping", "never"),
    ({"length_penalty_form": "linear"}, "length_penalty_form", "exponent"),
]


def never_called(sequence):
    raise AssertionError("the model must not be called for a bad setting")


@pytest.mark.parametrize(("settings", "field", "allowed"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_setting_raises_before_any_model_call(settings, field, allowed):
    model = ScriptedModel(5, never_called)
    with pytest.raises(ConfigError) as error:
        decode(model, [[1]], DiverseBeamSearch(**settings), DecodeOptions(max_new_tokens=3))
    assert error.value.field == field
    assert allowed in error.value.allowed
    assert model.forward_count == 0


def test_embedding_diversity_without_embeddings_is_a_config_error():
    model = ScriptedModel(5, never_called)  # exposes no input embeddings
    with pytest.raises(ConfigError, match="embeddings"):
        decode(model, [[1]], DiverseBeamSearch(diversity="embedding"), DecodeOptions(max_new_tokens=3))
    assert model.forward_count == 0


def test_strategy_is_registered_and_built_by_name():
    assert STRATEGIES["diverse_beam"] is DiverseBeamSearch
    config = make_strategy("diverse_beam", num_beams=6, num_groups=3, diversity_strength=(0.0, 0.5, 1.0))
    assert config.strengths == (0.0, 0.5, 1.0)
    assert DiverseBeamSearch(num_groups=2, diversity_strength=0.3).strengths == (0.3, 0.3)
    with pytest.raises(ConfigError, match="num_groups_typo"):
        make_strategy("diverse_beam", num_groups_typo=2)


def test_cli_flags_map_onto_the_config():
    args = build_parser().parse_args([
        "generate", "x", "--strategy", "diverse_beam", "--num-beams", "6", "--num-groups", "3",
        "--diversity", "ngram", "--ngram-size", "3", "--diversity-strength", "0.5",
        "--diversity-strength", "1", "--diversity-strength", "2", "--per-group", "--num-return-sequences", "2",
    ])
    config = make_cli_strategy(args)
    assert config == DiverseBeamSearch(
        num_beams=6, num_groups=3, diversity="ngram", ngram_size=3, diversity_strength=(0.5, 1.0, 2.0),
        per_group=True, num_return_sequences=2,
    )
    config.validate()
