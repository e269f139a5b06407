"""Parity of contrastive search with transformers 4.55's ``generate(penalty_alpha, top_k)``.

transformers 5 moved contrastive search to remote hub code, so the oracle is a fixture recorded
under 4.55 by ``tests/fixtures/record_contrastive_search.py`` (see its docstring); this test
needs only the installed transformers 5. Every prompt must match token for token, with each
token's log-prob within 1e-4.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest

import decodekit
from decodekit.errors import ConfigError
from decodekit.testtime.contrastive import ContrastiveSearch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@functools.cache
def recorder():
    spec = importlib.util.spec_from_file_location("record_contrastive_search", FIXTURES / "record_contrastive_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def fixture() -> dict:
    return json.loads((FIXTURES / "contrastive_search_4_55.json").read_text())


def test_fixture_was_recorded_with_transformers_4_55_and_differs_from_greedy():
    assert fixture()["transformers"].startswith("4.55.")
    assert sum(case["differs_from_greedy"] for case in fixture()["cases"]) >= 10  # not greedy in disguise
    assert sum(case["sequences_with_eos"] for case in fixture()["cases"]) >= 8


@pytest.mark.parametrize("case", fixture()["cases"], ids=lambda case: case["name"])
def test_contrastive_search_matches_transformers_4_55(case, one_thread):
    rec = recorder()
    hf = rec.build(case["model"], case["seed"])
    assert rec.base.weights_sha256(hf) == case["weights_sha256"], "the seeded random model changed: re-record the fixture"
    decoder = decodekit.load(hf, use_generation_config=False)
    config = ContrastiveSearch(top_k=case["top_k"], penalty_alpha=case["penalty_alpha"])
    results = decoder.generate(case["prompts"], config, max_new_tokens=case["max_new_tokens"], **case["extra"])
    for result, expected in zip(results, case["results"]):
        sequence = result.sequences[0]
        assert sequence.token_ids == expected["tokens"]
        assert sequence.token_logprobs == pytest.approx(expected["logprobs"], abs=1e-4)
        assert sequence.finish_reason == ("eos" if expected["tokens"][-1] == rec.EOS else "length")


def test_alpha_zero_is_greedy_and_settings_are_checked():
    rec = recorder()
    decoder = decodekit.load(rec.build("gpt2", 0), use_generation_config=False)
    prompt = rec.base.prompts(7)[0]
    greedy = decoder.generate(prompt, max_new_tokens=10).sequences[0]
    same = decoder.generate(prompt, ContrastiveSearch(top_k=5, penalty_alpha=0.0), max_new_tokens=10).sequences[0]
    assert same.token_ids == greedy.token_ids
    assert same.token_logprobs == pytest.approx(greedy.token_logprobs, abs=1e-4)
    for bad, field in ((ContrastiveSearch(top_k=0), "top_k"), (ContrastiveSearch(penalty_alpha=1.5), "penalty_alpha")):
        with pytest.raises(ConfigError) as error:
            decoder.generate(prompt, bad, max_new_tokens=4)
        assert error.value.field == field
    with pytest.raises(ConfigError) as error:
        decoder.generate(prompt, "contrastive", max_new_tokens=4, top_logprobs=2)
    assert error.value.field == "top_logprobs"
