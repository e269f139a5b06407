"""The processors and warpers transformers has in core, through ``generate`` (the oracle):
greedy and beam search give the same tokens and scores as ``generate`` with the same settings,
and the sampling chain (processors, then warpers) gives the same distribution at every step of
a sampled ``generate`` run.

Prompts are decoded one at a time: transformers counts lengths over a padded batch (and lets a
pad id count as a prompt token), decodekit per row (so that batch = single holds); the README's
parity section says so and ``test_padding_*`` pin decodekit's side.
"""

from __future__ import annotations

import functools

import pytest
import tiny_models as tm
import torch

from decodekit import BeamSearch, Greedy, Sampling
from decodekit.engine import decode
from decodekit.model.hf import HFLanguageModel
from decodekit.options import DecodeOptions

MAX_NEW = 12


@functools.cache
def model(name: str):
    return tm.BUILDERS[name]()


def _prompts():
    return tm.prompts(11, 3, low=3, high=9)


# (decodekit options, transformers generate kwargs), each set several processors together
SETS = {
    "bias-and-prompt": (
        dict(sequence_bias={(7,): 3.0, (5, 9): -2.0}, encoder_repetition_penalty=1.6, encoder_no_repeat_ngram_size=2, min_length=6),
        dict(sequence_bias=[[[7], 3.0], [[5, 9], -2.0]], encoder_repetition_penalty=1.6, encoder_no_repeat_ngram_size=2, min_length=6),
    ),
    "lengths": (
        dict(exponential_decay_length_penalty=(3, 1.5), begin_suppress_tokens=(2, 4), max_length=15, renormalize_logits=True),
        dict(exponential_decay_length_penalty=(3, 1.5), begin_suppress_tokens=[2, 4], max_length=15, renormalize_logits=True),
    ),
    "forced": (
        dict(forced_bos_token_id=8, forced_eos_token_id=(2,), suppress_tokens=(3,), repetition_penalty=1.2),
        dict(forced_bos_token_id=8, forced_eos_token_id=[2], suppress_tokens=[3], repetition_penalty=1.2),
    ),
}


def _hf_kwargs(hf, theirs: dict) -> dict:
    kwargs = dict(theirs)
    if "max_length" not in kwargs:
        kwargs["max_new_tokens"] = MAX_NEW
    return kwargs


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart"])
@pytest.mark.parametrize("which", sorted(SETS))
def test_greedy_with_core_processors_matches_generate(name, which):
    ours_kwargs, theirs = SETS[which]
    hf = model(name)
    for prompt in _prompts():
        options = DecodeOptions(max_new_tokens=MAX_NEW, **ours_kwargs)
        (hyps,) = decode(HFLanguageModel(hf), [prompt], Greedy(), options)
        out = tm.hf_generate(hf, [prompt], do_sample=False, **_hf_kwargs(hf, theirs))
        assert hyps[0].token_ids == tm.generated_part(hf, out, [prompt])[0]
        expected = [torch.log_softmax(out.scores[t][0], -1)[token].item() for t, token in enumerate(hyps[0].token_ids)]
        assert hyps[0].token_logprobs == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart"])
@pytest.mark.parametrize("which", sorted(SETS))
def test_beam_search_with_core_processors_matches_generate(name, which):
    ours_kwargs, theirs = SETS[which]
    hf = model(name)
    for prompt in _prompts():
        options = DecodeOptions(max_new_tokens=MAX_NEW, **ours_kwargs)
        (hyps,) = decode(HFLanguageModel(hf), [prompt], BeamSearch(num_beams=3, num_return_sequences=2), options)
        out = tm.hf_generate(hf, [prompt], do_sample=False, num_beams=3, num_return_sequences=2, **_hf_kwargs(hf, theirs))
        theirs_ids = tm.generated_part(hf, out, [prompt] * 2)
        assert [h.token_ids for h in hyps] == theirs_ids
        assert [h.score for h in hyps] == pytest.approx(out.sequences_scores.tolist(), abs=1e-4)


SAMPLERS = [
    (dict(temperature=0.8, top_k=20, epsilon_cutoff=0.01), dict(temperature=0.8, top_k=20, epsilon_cutoff=0.01)),
    (dict(top_p=0.8, eta_cutoff=0.02), dict(top_p=0.8, eta_cutoff=0.02, top_k=0)),
    (dict(min_p=0.05, typical_p=0.9), dict(min_p=0.05, typical_p=0.9, top_k=0)),
]
"""(generate takes no ``min_tokens_to_keep``; ``min_keep`` is compared with the warper classes
in tests/unit/test_processors.py.)"""


@pytest.mark.parametrize("name", ["gpt2", "bart"])
@pytest.mark.parametrize("index", range(len(SAMPLERS)))
def test_sampling_chain_matches_generate_step_by_step(name, index):
    """Along a sampled generate run, decodekit's processors and warpers turn generate's raw
    logits into exactly the scores generate sampled from."""
    ours_kwargs, theirs = SAMPLERS[index]
    hf = model(name)
    sampler = Sampling(**ours_kwargs)
    sampler.validate()
    options = DecodeOptions(max_new_tokens=MAX_NEW, repetition_penalty=1.3, encoder_repetition_penalty=1.2)
    prompt = _prompts()[0]
    torch.manual_seed(3)
    out = tm.hf_generate(
        hf, [prompt], do_sample=True, output_logits=True, max_new_tokens=MAX_NEW, repetition_penalty=1.3, encoder_repetition_penalty=1.2, **theirs
    )
    encoder = hf.config.is_encoder_decoder
    history = out.sequences[0].tolist()
    start = 1 if encoder else len(prompt)
    encoder_ids = torch.tensor([prompt]) if encoder else None
    processors = options.processors(start, (tm.EOS,), hf.config.vocab_size, encoder_ids=encoder_ids)
    warpers = sampler.warpers()
    for t, (raw, expected) in enumerate(zip(out.logits, out.scores)):
        ids = torch.tensor([history[: start + t]])
        got = warpers(ids, processors(ids, raw.clone()))
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        assert torch.allclose(got.masked_fill(torch.isinf(got), 0), expected.masked_fill(torch.isinf(expected), 0), atol=1e-5)


def test_padding_does_not_change_a_prompts_output():
    """decodekit's side of the documented difference: with lengths counted per row, a padded
    batch gives each prompt what it gets alone."""
    hf = model("llama")
    options = DecodeOptions(max_new_tokens=MAX_NEW, min_length=9, encoder_repetition_penalty=1.5, max_length=14, begin_suppress_tokens=(2,))
    prompts = _prompts()
    batch = decode(HFLanguageModel(hf), prompts, Greedy(), options)
    assert [h[0].token_ids for h in batch] == [decode(HFLanguageModel(hf), [p], Greedy(), options)[0][0].token_ids for p in prompts]
