"""Parity of DoLa with transformers 4.55's ``generate(dola_layers=...)``, and its one deviation.

The oracle is a fixture recorded under 4.55 by ``tests/fixtures/record_dola.py`` (see its
docstring). Each prompt decoded alone must match token for token. 4.55 picks one premature
layer per step for the whole batch (a divergence averaged over the rows), so its batched rows
can differ from the same prompts alone: the fixture shows it does; decodekit picks per row, so
its batched output equals 4.55's single-prompt output (batch = single).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest
import tiny_models as tm

import decodekit
from decodekit.errors import ConfigError
from decodekit.search.dola import DoLa

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@functools.cache
def recorder():
    spec = importlib.util.spec_from_file_location("record_dola", FIXTURES / "record_dola.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def fixture() -> dict:
    return json.loads((FIXTURES / "dola_4_55.json").read_text())


def test_fixture_was_recorded_with_4_55_differs_from_greedy_and_shows_the_batch_dependence():
    assert fixture()["transformers"].startswith("4.55.")
    assert sum(case["differs_from_greedy"] for case in fixture()["cases"]) >= 15
    assert sum(case["batch_differs"] for case in fixture()["cases"]) >= 3


def _decoder(case):
    rec = recorder()
    hf = rec.build(case["model"], case["seed"])
    assert rec.weights_sha256(hf) == case["weights_sha256"], "the seeded random model changed: re-record the fixture"
    return decodekit.load(hf, use_generation_config=False)


def _config(case) -> DoLa:
    layers = case["dola_layers"]
    return DoLa(layers=layers if isinstance(layers, str) else tuple(layers))


@pytest.mark.parametrize("case", fixture()["cases"], ids=lambda case: case["name"])
def test_dola_matches_transformers_4_55_alone_and_batched_equals_alone(case, one_thread):
    decoder = _decoder(case)
    settings = {"max_new_tokens": case["max_new_tokens"], **case["extra"]}
    alone = [decoder.generate(p, _config(case), **settings).sequences[0].token_ids for p in case["prompts"]]
    assert alone == case["alone"]
    together = [r.sequences[0].token_ids for r in decoder.generate(case["prompts"], _config(case), **settings)]
    assert together == case["alone"]  # per-row layer choice: batch = single (4.55's batch may differ)


def test_dola_is_refused_where_it_cannot_be_exact_and_names_bad_settings():
    with pytest.raises(ConfigError) as error:
        decodekit.load(tm.bart()).generate([5, 6, 7], DoLa(), max_new_tokens=3)
    assert "decoder-only" in str(error.value)
    decoder = decodekit.load(tm.llama())
    before = decoder.model.forward_count
    with pytest.raises(ConfigError) as error:
        decoder.generate([5, 6, 7], DoLa(layers=(7, 9)), max_new_tokens=3)  # the model has 2 layers
    assert error.value.field == "layers" and decoder.model.forward_count == before
    for bad, field in ((DoLa(layers="mid"), "layers"), (DoLa(layers=()), "layers"), (DoLa(relative_top=0.0), "relative_top"), (DoLa(layers=(1.5,)), "layers")):
        with pytest.raises(ConfigError) as error:
            decoder.generate([5, 6, 7], bad, max_new_tokens=3)
        assert error.value.field == field


def test_sampled_dola_is_reproducible_and_batch_equals_single(one_thread):
    decoder = decodekit.load(tm.llama(seed=3))
    config = DoLa(layers=(0, 1), sampler=decodekit.Sampling(temperature=0.9))
    prompts = tm.prompts(4, 3)
    together = decoder.generate(prompts, config, seed=7, max_new_tokens=8)
    for prompt, result in zip(prompts, together):
        assert decoder.generate(prompt, config, seed=7, max_new_tokens=8).sequences[0].token_ids == result.sequences[0].token_ids
