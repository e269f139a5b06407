"""Parity with transformers ``generate`` (the oracle): same tokens, scores within 1e-4.

Each test decodes a batch of prompts of different lengths (left-padded for decoder-only
models) with decodekit and with ``generate`` using the same settings.
"""

from __future__ import annotations

import functools

import pytest
import tiny_models as tm
import torch

from decodekit.engine import decode
from decodekit.model.hf import HFLanguageModel
from decodekit.options import DecodeOptions
from decodekit.search.beam import BeamSearch
from decodekit.search.sampling import Greedy

MODELS = ["gpt2", "llama", "qwen2", "bart", "t5"]
MAX_NEW = 10


@functools.cache
def model(name: str):
    return tm.BUILDERS[name]()


@functools.cache
def batch(seed: int = 7) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(p) for p in tm.prompts(seed, 3, low=2, high=9))


def _prompts():
    return [list(p) for p in batch()]


@pytest.mark.parametrize("name", MODELS)
def test_greedy_matches_generate(name):
    hf = model(name)
    ours = decode(HFLanguageModel(hf), _prompts(), Greedy(), DecodeOptions(max_new_tokens=MAX_NEW))
    out = tm.hf_generate(hf, _prompts(), max_new_tokens=MAX_NEW, do_sample=False)
    theirs = tm.generated_part(hf, out, _prompts())
    assert [h[0].token_ids for h in ours] == theirs
    # per-token log-probs equal the log-softmax of generate's processed scores
    for row, hyps in enumerate(ours):
        expected = [
            torch.log_softmax(out.scores[t][row], -1)[token].item()
            for t, token in enumerate(hyps[0].token_ids)
        ]
        assert hyps[0].token_logprobs == pytest.approx(expected, abs=1e-4)


def _check_beams(name: str, config: BeamSearch, options: DecodeOptions, **hf_kwargs) -> None:
    hf = model(name)
    prompts = _prompts()
    ours = decode(HFLanguageModel(hf), prompts, config, options)
    out = tm.hf_generate(
        hf, prompts, max_new_tokens=options.max_new_tokens, do_sample=False,
        num_beams=config.num_beams, num_return_sequences=config.num_return_sequences,
        length_penalty=config.length_penalty, early_stopping=config.early_stopping, **hf_kwargs,
    )
    theirs = tm.generated_part(hf, out, prompts)
    n = config.num_return_sequences
    for i, hyps in enumerate(ours):
        assert [h.token_ids for h in hyps] == theirs[i * n : (i + 1) * n], f"prompt {i}"
        if config.num_beams > 1:
            expected = out.sequences_scores[i * n : (i + 1) * n].tolist()
            assert [h.score for h in hyps] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_beams", [2, 4, 8])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_matches_generate(name, num_beams, early_stopping, length_penalty):
    config = BeamSearch(
        num_beams=num_beams,
        num_return_sequences=min(num_beams, 3),
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    _check_beams(name, config, DecodeOptions(max_new_tokens=MAX_NEW))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("early_stopping", [True, False])
def test_one_beam_is_greedy(name, early_stopping):
    # transformers runs greedy search for num_beams=1; decodekit's one-beam search must agree
    hf = model(name)
    ours = decode(HFLanguageModel(hf), _prompts(), BeamSearch(num_beams=1, early_stopping=early_stopping), DecodeOptions(max_new_tokens=MAX_NEW))
    out = tm.hf_generate(hf, _prompts(), max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)
    assert [h[0].token_ids for h in ours] == tm.generated_part(hf, out, _prompts())


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart"])
def test_beam_search_with_processors_matches_generate(name):
    config = BeamSearch(num_beams=4, num_return_sequences=2)
    options = DecodeOptions(
        max_new_tokens=MAX_NEW, min_new_tokens=3, repetition_penalty=1.3, no_repeat_ngram_size=2,
        suppress_tokens=(5, 6),
    )
    _check_beams(
        name, config, options, min_new_tokens=3, repetition_penalty=1.3, no_repeat_ngram_size=2,
        suppress_tokens=[5, 6],
    )


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_greedy_with_processors_matches_generate(name):
    hf = model(name)
    options = DecodeOptions(max_new_tokens=MAX_NEW, repetition_penalty=1.5, no_repeat_ngram_size=3, bad_words=((7,), (9, 11)))
    ours = decode(HFLanguageModel(hf), _prompts(), Greedy(), options)
    out = tm.hf_generate(
        hf, _prompts(), max_new_tokens=MAX_NEW, do_sample=False, repetition_penalty=1.5,
        no_repeat_ngram_size=3, bad_words_ids=[[7], [9, 11]],
    )
    assert [h[0].token_ids for h in ours] == tm.generated_part(hf, out, _prompts())


def test_gnmt_length_penalty_scores():
    # transformers has no GNMT penalty: check the definition on decodekit's own hypotheses
    hf = model("llama")
    config = BeamSearch(num_beams=4, num_return_sequences=4, length_penalty=0.8, length_penalty_form="gnmt")
    results = decode(HFLanguageModel(hf), _prompts(), config, DecodeOptions(max_new_tokens=MAX_NEW))
    for hyps in results:
        for h in hyps:
            assert h.logprob == pytest.approx(sum(h.token_logprobs), abs=1e-4)
            assert h.score == pytest.approx(h.logprob / ((5 + len(h.token_ids)) / 6) ** 0.8, abs=1e-5)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
