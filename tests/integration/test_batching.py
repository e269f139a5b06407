"""Batch = single: a prompt's result does not depend on the rest of the batch or on padding;
and a prompt is prefilled once, whatever the number of beams or samples."""

from __future__ import annotations

import functools

import pytest
import tiny_models as tm
import torch

import decodekit
from decodekit.model.hf import HFLanguageModel

STRATEGIES = {
    "greedy": decodekit.Greedy(),
    "beam": decodekit.BeamSearch(num_beams=4, num_return_sequences=3, length_penalty=1.0),
    "beam-never": decodekit.BeamSearch(num_beams=3, num_return_sequences=2, early_stopping="never"),
}


@functools.cache
def decoder(name: str):
    return decodekit.load(tm.BUILDERS[name]())


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_batch_equals_single(name, strategy):
    prompts = tm.prompts(11, 5, low=1, high=14)
    dec = decoder(name)
    batched = dec.generate(prompts, STRATEGIES[strategy], max_new_tokens=8)
    for prompt, together in zip(prompts, batched):
        alone = dec.generate(prompt, STRATEGIES[strategy], max_new_tokens=8)
        assert [s.token_ids for s in together.sequences] == [s.token_ids for s in alone.sequences]
        assert [s.score for s in together.sequences] == pytest.approx([s.score for s in alone.sequences], abs=1e-4)


def test_sampling_rows_are_independent_of_batch_under_a_seed():
    # with n samples per prompt, the same seed gives the same draws for the same batch
    dec = decoder("llama")
    prompts = tm.prompts(3, 3)
    first = dec.generate(prompts, decodekit.Sampling(n=3, seed=4, top_k=20), max_new_tokens=6)
    second = dec.generate(prompts, decodekit.Sampling(n=3, seed=4, top_k=20), max_new_tokens=6)
    assert [[s.token_ids for s in r.sequences] for r in first] == [[s.token_ids for s in r.sequences] for r in second]


@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_prompt_is_prefilled_once(name):
    model = tm.BUILDERS[name]()
    shapes = []
    module = model.get_encoder() if model.config.is_encoder_decoder else model
    handle = module.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    prompts = tm.prompts(5, 2, low=6, high=10)
    decodekit.load(model).generate(prompts, decodekit.BeamSearch(num_beams=8), max_new_tokens=4)
    handle.remove()
    width = max(len(p) for p in prompts)
    assert shapes[0] == (2, width)  # two prompts, not 16 copies
    if not model.config.is_encoder_decoder:
        assert all(s == (16, 1) for s in shapes[1:])
    else:
        assert len(shapes) == 1  # the encoder ran once


def test_preallocated_cache_is_written_in_place():
    lm = HFLanguageModel(tm.llama())
    state = lm.start([[5, 6, 7]], max_new_tokens=4)
    layer = state.extra["cache"].layers[0]
    buffer = layer._key_buffer
    lm.select(state, torch.zeros(3, dtype=torch.long))
    lm.advance(state, torch.tensor([0, 0, 1]), torch.tensor([8, 9, 10]))
    lm.advance(state, None, torch.tensor([8, 9, 10]))
    assert layer.length == 5 and layer.keys.data_ptr() == layer._key_buffer.data_ptr()
    assert layer._key_buffer is not buffer  # fan-out made the rows, advancing did not reallocate
