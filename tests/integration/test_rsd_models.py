"""Recursive Speculative Decoding's draft tree on real transformers models: greedy with
branching equals plain greedy, sampling is reproducible and batch = single."""

from __future__ import annotations

import pytest
from speculative_models import motif_prompts, tiny_llama

import decodekit
from decodekit.search.sampling import Greedy, Sampling
from decodekit.speculative import DraftModelConfig, Speculative


@pytest.fixture(scope="module")
def llamas():
    """A tiny random Llama target (2 layers, hidden 32), a smaller draft and some prompts."""
    target = decodekit.load(tiny_llama(0))
    draft = tiny_llama(1, hidden=16, layers=1)
    prompts = motif_prompts(4, motif=(2, 5), length=(4, 14))
    return target, draft, prompts


def test_greedy_with_branching_equals_plain_greedy_on_llama(llamas, one_thread):
    target, draft, prompts = llamas
    plain = target.generate(prompts, "greedy", max_new_tokens=16)
    speculative = Speculative(
        "draft", DraftModelConfig(model=draft, num_tokens=3, branching=(3, 2))
    )
    accepted = 0
    for batch in (1, 4):
        for start in range(0, len(prompts), batch):
            results = target.generate(
                prompts[start : start + batch], Greedy(speculative=speculative), max_new_tokens=16
            )
            for got, want in zip(results, plain[start : start + batch]):
                assert got.best.token_ids == want.best.token_ids
                assert got.best.logprob == pytest.approx(want.best.logprob, abs=1e-3)
                accepted += got.stats.accepted
    assert accepted > 0


def test_sampling_same_seed_same_output_and_batch_equals_single(llamas, one_thread):
    target, draft, prompts = llamas
    speculative = Speculative(
        "draft", DraftModelConfig(model=draft, num_tokens=3, branching=(3, 2))
    )
    strategy = Sampling(seed=7, top_k=10, n=2, speculative=speculative)

    def sample(batch):
        return [
            [s.token_ids for s in r.sequences]
            for r in target.generate(batch, strategy, max_new_tokens=12)
        ]

    alone = sample(prompts[:1])
    assert sample(prompts[:1]) == alone
    assert sample(prompts[:3])[0] == alone[0]
    assert sample([prompts[2], prompts[0]])[1] == alone[0]
    assert all(len(s) > 0 for s in alone[0])
