"""Parity of constrained beam search with transformers 4.55's ``generate(force_words_ids=...)``,
and its two deviations.

The oracle is a fixture recorded under 4.55 by ``tests/fixtures/record_constrained_beam_search.py``
(see its docstring). Where every sequence 4.55 returns meets the constraints, decodekit returns
the same n-best, token for token, scores within 1e-4. Where 4.55 fills its n-best with beams
that do not meet them (ranked together with, and often above, the ones that do), decodekit
returns the ones that meet them first and then those fillers, labelled ``constraint``; the
fillers are exactly 4.55's, in its order (the beams evolved identically). Where the prompt
already holds a phrase, 4.55 counts it as generated; decodekit generates it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest

import decodekit
from decodekit.errors import ConfigError
from decodekit.search.constrained_beam import ConstrainedBeamSearch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@functools.cache
def recorder():
    spec = importlib.util.spec_from_file_location("record_constrained_beam_search", FIXTURES / "record_constrained_beam_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def fixture() -> dict:
    return json.loads((FIXTURES / "constrained_beam_search_4_55.json").read_text())


def contains(tokens: list[int], phrase: list[int]) -> bool:
    return any(tokens[i : i + len(phrase)] == phrase for i in range(len(tokens) - len(phrase) + 1))


def meets(tokens: list[int], force_words_ids) -> bool:
    """Independent of either tracker: every entry's phrase (or one of its alternatives) occurs."""
    return all(any(contains(tokens, o) for o in (entry if isinstance(entry[0], list) else [entry])) for entry in force_words_ids)


def config(case) -> ConstrainedBeamSearch:
    return ConstrainedBeamSearch(
        force_words_ids=tuple(case["force_words_ids"]), num_beams=case["num_beams"], num_return_sequences=case["num_return_sequences"],
        length_penalty=case["length_penalty"], early_stopping=case["early_stopping"],
    )


def test_fixture_was_recorded_with_4_55_and_holds_both_kinds_of_result():
    assert fixture()["transformers"].startswith("4.55.")
    results = [r for case in fixture()["cases"] for r in case["results"]]
    assert sum(all(r["met"]) for r in results) >= 8  # plain parity cases
    assert sum(not all(r["met"]) for r in results) >= 8  # 4.55 returned beams that miss the constraints


@pytest.mark.parametrize("case", fixture()["cases"], ids=lambda case: case["name"])
def test_constrained_beam_search_matches_transformers_4_55(case, one_thread):
    rec = recorder()
    hf = rec.base.build(case["model"], case["seed"])
    assert rec.base.weights_sha256(hf) == case["weights_sha256"], "the seeded random model changed: re-record the fixture"
    decoder = decodekit.load(hf, use_generation_config=False)
    force = case["force_words_ids"]
    for index, (prompt, expected) in enumerate(zip(case["prompts"], case["results"])):
        got = decoder.generate(prompt, config(case), max_new_tokens=case["max_new_tokens"]).sequences
        ids = [s.token_ids for s in got]
        met = [s for s in got if s.finish_reason != "constraint"]
        unmet = [s for s in got if s.finish_reason == "constraint"]
        assert got == met + unmet  # those that meet the constraints come first
        for s in met:
            assert meets(s.token_ids, force)
            assert s.score == pytest.approx(sum(s.token_logprobs) / len(s.token_ids) ** case["length_penalty"], abs=1e-4)
        for s in unmet:
            assert not meets(s.token_ids, force) or s.token_ids in expected["sequences"]
        if case["prompt_holds_constraint"] and index == 0:  # 4.55 took the prompt's phrase as generated
            assert not any(meets(seq, force) for seq in expected["sequences"])
            assert met and all(meets(s.token_ids, force) for s in met)
            continue
        if all(expected["met"]):
            assert ids == expected["sequences"]
            if expected["scores"] is not None:
                assert [s.score for s in got] == pytest.approx(expected["scores"], abs=1e-4)
        else:
            theirs_met = [seq for seq, m in zip(expected["sequences"], expected["met"]) if m]
            theirs_unmet = [seq for seq, m in zip(expected["sequences"], expected["met"]) if not m]
            assert all(seq in [s.token_ids for s in met] for seq in theirs_met)
            assert [s.token_ids for s in unmet] == theirs_unmet[: len(unmet)]


def test_scores_are_the_models_log_probs(one_thread):
    rec = recorder()
    case = fixture()["cases"][0]
    decoder = decodekit.load(rec.base.build(case["model"], case["seed"]), use_generation_config=False)
    prompt = case["prompts"][0]
    result = decoder.generate(prompt, config(case), max_new_tokens=case["max_new_tokens"]).sequences[0]
    scored = decoder.score(prompt, result.token_ids)
    assert result.token_logprobs == pytest.approx(scored.token_logprobs, abs=1e-4)


def test_batch_equals_single_and_bad_settings_are_named(one_thread):
    rec = recorder()
    case = fixture()["cases"][4]
    decoder = decodekit.load(rec.base.build(case["model"], case["seed"]), use_generation_config=False)
    together = decoder.generate(case["prompts"], config(case), max_new_tokens=case["max_new_tokens"])
    for prompt, result in zip(case["prompts"], together):
        alone = decoder.generate(prompt, config(case), max_new_tokens=case["max_new_tokens"])
        assert [s.token_ids for s in alone.sequences] == [s.token_ids for s in result.sequences]
    bad = [
        (ConstrainedBeamSearch(force_words_ids=()), "force_words_ids"),
        (ConstrainedBeamSearch(force_words_ids=([5, "a"],)), "force_words_ids[0]"),
        (ConstrainedBeamSearch(force_words_ids=([[5], [5, 6]],)), "force_words_ids[0]"),
        (ConstrainedBeamSearch(force_words_ids=([5000],)), "force_words_ids"),
        (ConstrainedBeamSearch(force_words_ids=([5],), num_beams=1), "num_beams"),
    ]
    for strategy, field in bad:
        with pytest.raises(ConfigError) as error:
            decoder.generate([5, 6], strategy, max_new_tokens=3)
        assert error.value.field == field


def test_cli_force_words_ids_and_bad_words_take_json():
    import subprocess
    import sys

    def run(*flags):
        return subprocess.run([sys.executable, "-m", "decodekit", "generate", "def f(x):", "--max-new-tokens", "10", "--output-format", "jsonl", *flags], capture_output=True, text=True, timeout=300)

    done = run("--strategy", "constrained_beam", "--force-words-ids", "[[269, 381], [[10], [90, 308]]]", "--num-beams", "4")
    assert done.returncode == 0, done.stderr
    best = json.loads(done.stdout)["sequences"][0]
    assert best["finish_reason"] != "constraint" and meets(best["token_ids"], [[269, 381], [[10], [90, 308]]])
    banned = run("--bad-words", "[[10]]")
    assert banned.returncode == 0 and 10 not in json.loads(banned.stdout)["sequences"][0]["token_ids"]
    refused = run("--strategy", "constrained_beam", "--force-words-ids", '[5, "x"]')
    assert refused.returncode == 2 and "force_words_ids[0]" in refused.stderr and "Traceback" not in refused.stderr
