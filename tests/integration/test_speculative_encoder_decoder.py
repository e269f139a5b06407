"""Speculative decoding of encoder-decoder targets (BART, T5): chain drafts verified by the
decoder in one forward, every row keeping as many tokens per step. Lossless: greedy equals
transformers' greedy; processors apply as in plain decoding; a seeded request's tokens do not
depend on the batch."""

from __future__ import annotations

import pytest
import tiny_models as tm

import decodekit
from decodekit.errors import ConfigError
from decodekit.model.hf import HFLanguageModel
from decodekit.speculative import RecyclingConfig, Speculative, SuffixConfig


@pytest.fixture(scope="module", params=["bart", "t5"])
def target(request):
    hf = tm.BUILDERS[request.param]()
    return hf, decodekit.Decoder(HFLanguageModel(hf))


def repetitive_prompts() -> list[list[int]]:
    return [p + p for p in tm.prompts(3, 4)]  # something to copy, for the n-gram drafts


@pytest.mark.parametrize("proposer", ["ngram", "suffix", "recycling"])
def test_speculative_greedy_equals_transformers_greedy(target, proposer):
    hf, decoder = target
    prompts = repetitive_prompts()
    settings = dict(max_new_tokens=24, min_new_tokens=24)  # these tiny models favour EOS
    results = decoder.generate(prompts, decodekit.Greedy(speculative=Speculative(proposer)), **settings)
    expected = tm.generated_part(hf, tm.hf_generate(hf, prompts, do_sample=False, **settings), prompts)
    assert [r.best.token_ids for r in results] == expected
    # alone, a row keeps every token its block got accepted (in a batch, as many as the row
    # that kept the fewest): several tokens per forward
    alone = [decoder.generate(p, decodekit.Greedy(speculative=Speculative(proposer)), **settings) for p in prompts]
    assert [r.best.token_ids for r in alone] == expected
    assert sum(r.stats.accepted for r in alone) > 0
    assert all(r.stats.target_forwards < len(r.best.token_ids) for r in alone if r.stats.accepted)


def test_processors_apply_under_speculation_as_in_plain_decoding(target):
    _, decoder = target
    prompts = repetitive_prompts()
    settings = dict(max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=6)
    plain = decoder.generate(prompts, decodekit.Greedy(), **settings)
    fast = decoder.generate(prompts, decodekit.Greedy(speculative=Speculative("ngram")), **settings)
    assert [r.best.token_ids for r in fast] == [r.best.token_ids for r in plain]
    assert [r.best.score for r in fast] == pytest.approx([r.best.score for r in plain], abs=1e-4)


def test_a_seeded_speculative_sample_does_not_depend_on_the_batch(target):
    _, decoder = target
    prompts = repetitive_prompts()
    accepted = 0
    for seed in (11, 12, 13, 14):  # some seeds' samples leave the prompts' n-grams at once
        strategy = decodekit.Sampling(seed=seed, top_k=20, speculative=Speculative("ngram"))
        alone = decoder.generate(prompts[1], strategy, max_new_tokens=20, min_new_tokens=20)
        batch = decoder.generate([prompts[0], prompts[1], prompts[2]], strategy, max_new_tokens=20, min_new_tokens=20)
        accepted += alone.stats.accepted
        assert batch[1].best.token_ids == alone.best.token_ids
        assert batch[1].best.token_logprobs == pytest.approx(alone.best.token_logprobs, abs=1e-4)
    assert accepted > 0  # drafts were kept: the speculative path decided


@pytest.mark.parametrize(
    "strategy, settings, field",
    [
        (decodekit.Greedy(speculative=Speculative("suffix", SuffixConfig(tree=True))), {}, "speculative"),
        (decodekit.Greedy(speculative=Speculative("recycling", RecyclingConfig(branching=(2, 1)))), {}, "speculative"),
        (decodekit.Greedy(speculative=Speculative("draft")), {}, "speculative.proposer"),
        (decodekit.Greedy(speculative=Speculative("ngram")), {"encoder_repetition_penalty": 1.2}, "encoder_repetition_penalty"),
    ],
)
def test_what_an_encoder_decoder_target_cannot_speculate_is_refused_by_name(target, strategy, settings, field):
    _, decoder = target
    calls = decoder.model.forward_count
    with pytest.raises(ConfigError) as error:
        decoder.generate([5, 6, 7], strategy, max_new_tokens=5, **settings)
    assert error.value.field == field
    assert decoder.model.forward_count == calls  # refused before any model call
