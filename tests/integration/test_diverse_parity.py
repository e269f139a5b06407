"""Parity of Hamming Diverse Beam Search with transformers 4.55's group beam search.

transformers 5 has no group beam search, so the oracle is a fixture recorded under 4.55 by
``tests/fixtures/record_group_beam_search.py`` (see its docstring); this test needs only the
installed transformers 5. Every case must match token for token, with ``sequences_scores``
within 1e-4 and the sequences in the same (pooled, score-ranked) order.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest

from decodekit.engine import decode
from decodekit.model.hf import HFLanguageModel
from decodekit.options import DecodeOptions
from decodekit.search.diverse import DiverseBeamSearch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@functools.cache
def recorder():
    spec = importlib.util.spec_from_file_location("record_group_beam_search", FIXTURES / "record_group_beam_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def fixture() -> dict:
    return json.loads((FIXTURES / "group_beam_search_4_55.json").read_text())


@functools.cache
def model(kind: str, seed: int):
    return recorder().build(kind, seed)


def test_fixture_was_recorded_with_transformers_4_55():
    assert fixture()["transformers"].startswith("4.55.")
    assert sum(case["sequences_with_eos"] > 0 for case in fixture()["cases"]) >= 6


@pytest.mark.parametrize("case", fixture()["cases"], ids=lambda case: case["name"])
def test_hamming_diverse_beam_search_matches_transformers_4_55(case):
    rec = recorder()
    hf = model(case["model"], case["seed"])
    assert rec.weights_sha256(hf) == case["weights_sha256"], (
        "the seeded random model differs from the one the fixture was recorded with: "
        "transformers changed its random initialisation; re-record the fixture"
    )
    extra = dict(case["extra"])
    pad = extra.pop("pad_token_id", rec.PAD)
    hf.generation_config.pad_token_id = pad
    try:
        lm = HFLanguageModel(hf)
    finally:
        hf.generation_config.pad_token_id = rec.PAD
    config = DiverseBeamSearch(
        num_beams=case["num_beams"],
        num_groups=case["num_beam_groups"],
        diversity_strength=case["diversity_penalty"],
        diversity="hamming",
        num_return_sequences=case["num_return_sequences"],
        length_penalty=case["length_penalty"],
        early_stopping=case["early_stopping"],
    )
    options = DecodeOptions(max_new_tokens=case["max_new_tokens"], eos_token_ids=(rec.EOS,), **extra)
    ours = decode(lm, case["prompts"], config, options)
    for i, hyps in enumerate(ours):
        expected = case["sequences"][i]
        width = len(expected[0])
        got = [h.token_ids + [pad] * (width - len(h.token_ids)) for h in hyps]
        assert got == expected, f"prompt {i}"
        assert [h.score for h in hyps] == pytest.approx(case["scores"][i], abs=1e-4), f"prompt {i}"
