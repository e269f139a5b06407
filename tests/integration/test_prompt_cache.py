"""The prompt cache: a prompt prefilled before is not computed again, and what its rows give
(logits now and at every later step, the tokens decoded) stays what a model without the cache
gives; a changed model, the byte bound and bad settings are handled."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
from architectures import ARCHITECTURES

import decodekit
from decodekit.engine import Engine, Request
from decodekit.errors import ConfigError
from decodekit.model.hf import HFLanguageModel
from decodekit.model.prompt_cache import PREFIX_BLOCK, PromptCache

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [9, 10], [3], [12, 13, 14, 15]]


def _pair(builder: str) -> tuple[HFLanguageModel, HFLanguageModel]:
    """The same weights twice: with a prompt cache and without."""
    model = tm.BUILDERS[builder]()
    cached, plain = HFLanguageModel(model), HFLanguageModel(model)
    cached.prompt_cache = PromptCache(1 << 20)
    return cached, plain


def _steps(model: HFLanguageModel, state, count: int) -> list[torch.Tensor]:
    out = [state.logits.clone()]
    for _ in range(count):
        model.advance(state, None, state.logits.argmax(-1))
        out.append(state.logits.clone())
    return out


def _engine_tokens(decoder, prompts: list[list[int]], strategy, new_tokens) -> list[list[int]]:
    """Each request's tokens, submitted one a step (each joins running rows) through an engine;
    ``strategy(i)`` and ``new_tokens(i)`` give request ``i``'s."""
    engine = Engine(decoder.model)
    handles = []
    for i, prompt in enumerate(prompts):
        handles += engine.submit([Request(prompt, strategy(i), decodekit.DecodeOptions(max_new_tokens=new_tokens(i)))])
        engine.step()
    while any(not h.done for h in handles):
        engine.step()
    return [h.result().hypotheses[0].token_ids for h in handles]


def _assert_decodes_alike(cached: HFLanguageModel, state, plain: HFLanguageModel, batch: list[list[int]], count: int, max_new: int = 6) -> None:
    """``state``'s logits now and at ``count`` greedy steps equal a fresh prefill of ``batch``
    by ``plain`` (a model without the cache), to float rounding."""
    for got, want in zip(_steps(cached, state, count), _steps(plain, plain.start(batch, max_new), count)):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("builder", ["gpt2", "llama", "qwen2"])
def test_a_cached_prompt_is_not_computed_and_decodes_as_without_the_cache(builder):
    cached, plain = _pair(builder)
    cached.start(PROMPTS[:2], 6)  # two prompts cached
    assert len(cached.prompt_cache) == 2
    # a batch of hits and misses, of other lengths than the first (other padding)
    batch = [PROMPTS[1], PROMPTS[2], PROMPTS[0], PROMPTS[3]]
    forwards = cached.forward_count
    state = cached.start(batch, 6)
    assert cached.forward_count == forwards + 1  # the two misses, in one forward
    assert (cached.prompt_cache.hits, len(cached.prompt_cache)) == (2, 4)
    _assert_decodes_alike(cached, state, plain, batch, 4)
    # every prompt cached: no forward at all, the same logits and steps
    forwards = cached.forward_count
    state = cached.start([PROMPTS[3], PROMPTS[0]], 6)
    assert cached.forward_count == forwards
    _assert_decodes_alike(cached, state, plain, [PROMPTS[3], PROMPTS[0]], 4)


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_a_fused_step_takes_cached_newcomers_from_the_cache(builder):
    cached, plain = _pair(builder)
    cached.start([PROMPTS[0], PROMPTS[2]], 8)
    running = [[4, 4, 4], [7, 8]]
    a, b = cached.start(running, 8), plain.start(running, 8)
    tokens = a.logits.argmax(-1)
    for every in (False, True):
        newcomers = [PROMPTS[2], PROMPTS[0]] if every else [PROMPTS[0], PROMPTS[1], PROMPTS[2]]
        new_a = cached.advance_and_start(a, None, tokens, newcomers, 8)
        new_b = plain.advance_and_start(b, None, tokens, newcomers, 8)
        torch.testing.assert_close(a.logits, b.logits, atol=2e-5, rtol=1e-5)
        for got, want in zip(_steps(cached, new_a, 3), _steps(plain, new_b, 3)):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        tokens = a.logits.argmax(-1)
    assert cached.prompt_cache.hits == 4


def test_changed_weights_empty_the_cache():
    cached, plain = _pair("llama")
    cached.start(PROMPTS, 4)
    with torch.no_grad():
        for parameter in cached.model.parameters():
            parameter.mul_(1.25)
    got = cached.start(PROMPTS, 4)
    assert cached.prompt_cache.hits == 0
    torch.testing.assert_close(got.logits, plain.start(PROMPTS, 4).logits, atol=2e-5, rtol=1e-5)


def test_the_cache_stays_within_its_bytes_least_recently_used_out_first():
    cached, _ = _pair("llama")
    cached.start([PROMPTS[0]], 4)
    one = cached.prompt_cache.bytes  # a 7-token prompt's entry
    cache = cached.prompt_cache = PromptCache(2 * one + 1)
    cached.start([PROMPTS[0]], 4)
    cached.start([[20 + i for i in range(7)]], 4)
    cached.start([PROMPTS[0]], 4)  # a hit: now the most recently used
    cached.start([[40 + i for i in range(7)]], 4)  # evicts the other one
    assert cache.bytes <= cache.max_bytes and len(cache) == 2
    before = cache.hits
    cached.start([PROMPTS[0], [20 + i for i in range(7)]], 4)
    assert cache.hits == before + 1


def test_engine_requests_with_repeated_prompts_decode_as_without_the_cache():
    model = tm.llama()
    with_cache = decodekit.load(model, prompt_cache_mib=4)
    without = decodekit.load(model)
    prompts = [PROMPTS[i % 3] for i in range(9)]

    def run(decoder) -> list[list[int]]:
        return _engine_tokens(decoder, prompts, lambda i: decodekit.Greedy(), lambda i: 6 + i)

    assert run(with_cache) == run(without)
    assert with_cache.model.prompt_cache.hits >= 6


FORWARD_ONLY = ["phi3", "gemma2-window", "falcon-alibi", "mpt", "gpt_neox", "opt", "mixtral"]
"""Architectures without a lean step: their prefill is the model's own forward."""


@pytest.mark.parametrize("name", FORWARD_ONLY)
def test_without_a_lean_step_cached_prompts_leave_the_forward_and_decode_as_without_the_cache(name, one_thread):
    model = ARCHITECTURES[name][0]()
    cached, plain = HFLanguageModel(model), HFLanguageModel(model)
    assert cached._lean_step() is None
    cached.prompt_cache = PromptCache(1 << 22)
    cached.start(PROMPTS[:2], 6)
    batch = [PROMPTS[1], PROMPTS[2], PROMPTS[0], PROMPTS[3]]
    forwards = cached.forward_count
    state = cached.start(batch, 6)
    assert cached.forward_count == forwards + 1 and cached.prompt_cache.hits == 2
    _assert_decodes_alike(cached, state, plain, batch, 4)
    forwards = cached.forward_count
    state = cached.start([PROMPTS[3], PROMPTS[0]], 6)  # every prompt cached: no forward
    assert cached.forward_count == forwards
    _assert_decodes_alike(cached, state, plain, [PROMPTS[3], PROMPTS[0]], 4)


def test_without_a_lean_step_a_shared_prefix_is_computed_and_not_counted_as_taken(one_thread):
    model = ARCHITECTURES["phi3"][0]()
    cached, plain = HFLanguageModel(model), HFLanguageModel(model)
    cached.prompt_cache = PromptCache(1 << 22)
    cached.start([SHARED], 6)
    batch = [SHARED[:-2] + [60, 61], [7, 8]]
    forwards = cached.forward_count
    state = cached.start(batch, 6)
    assert cached.forward_count == forwards + 1
    assert (cached.prompt_cache.hits, cached.prompt_cache.prefix_hits, cached.prompt_cache.prefix_tokens) == (0, 0, 0)
    _assert_decodes_alike(cached, state, plain, batch, 3)


def test_a_model_whose_keys_and_values_differ_in_shape_keeps_nothing_and_decodes_the_same(one_thread):
    model = ARCHITECTURES["deepseek_v3"][0]()  # multi-head latent attention: keys wider than values
    cached, plain = HFLanguageModel(model), HFLanguageModel(model)
    cached.prompt_cache = PromptCache(1 << 22)
    cached.start(PROMPTS, 6)
    assert len(cached.prompt_cache) == 0
    _assert_decodes_alike(cached, cached.start(PROMPTS, 6), plain, PROMPTS, 3)


def test_engine_requests_of_a_merging_architecture_with_repeated_prompts_decode_as_without_the_cache(one_thread):
    model = ARCHITECTURES["phi3"][0]().double()
    with_cache = decodekit.load(model, prompt_cache_mib=4)
    without = decodekit.load(model)
    prompts = [PROMPTS[i % 3] for i in range(8)]

    def run(decoder) -> list[list[int]]:
        return _engine_tokens(decoder, prompts, lambda i: decodekit.Sampling(seed=i), lambda i: 5 + i)

    assert run(with_cache) == run(without)
    assert with_cache.model.prompt_cache.hits >= 5


SHARED = list(range(5, 5 + 2 * PREFIX_BLOCK + 9))  # two whole blocks and some


def _computed_tokens(model: HFLanguageModel) -> list[int]:
    """Records how many tokens each lean pass of ``model`` computes."""
    counts, parts = [], model._step.parts

    def spy(given):
        counts.append(sum(p[0].numel() if len(p) < 6 else len(p[5]) for p in given))
        return parts(given)

    model._step.parts = spy
    return counts


@pytest.mark.parametrize("builder", ["gpt2", "llama", "qwen2"])
def test_a_prompt_sharing_a_cached_prefix_computes_only_the_rest(builder):
    cached, plain = _pair(builder)
    cached.start([SHARED + [60, 61]], 6)
    counts = _computed_tokens(cached)
    # a prefix hit (two blocks), a whole hit, a miss, a prefix hit of one block, other padding
    batch = [SHARED + [50, 51, 52], SHARED + [60, 61], [7, 8, 9], SHARED[: PREFIX_BLOCK + 3] + [70]]
    state = cached.start(batch, 6)
    cache = cached.prompt_cache
    assert (cache.hits, cache.prefix_hits, cache.prefix_tokens) == (1, 2, 3 * PREFIX_BLOCK)
    assert counts == [len(batch[0]) - 2 * PREFIX_BLOCK + len(batch[2]) + len(batch[3]) - PREFIX_BLOCK]
    _assert_decodes_alike(cached, state, plain, batch, 4)
    # a prompt that is exactly a cached prefix keeps at least its last token to compute
    exact = SHARED[: 2 * PREFIX_BLOCK]
    state = cached.start([exact], 6)
    assert cache.prefix_tokens == 4 * PREFIX_BLOCK
    _assert_decodes_alike(cached, state, plain, [exact], 3)
    # shorter than a block in common: nothing taken
    cached.start([SHARED[: PREFIX_BLOCK - 1] + [90, 91]], 6)
    assert cache.prefix_tokens == 4 * PREFIX_BLOCK


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_a_fused_step_takes_newcomers_cached_prefixes(builder):
    cached, plain = _pair(builder)
    cached.start([SHARED], 8)
    running = [[4, 4, 4], [7, 8]]
    a, b = cached.start(running, 8), plain.start(running, 8)
    tokens = a.logits.argmax(-1)
    newcomers = [SHARED[:-3] + [80], [9, 10], SHARED + [81, 82]]
    new_a = cached.advance_and_start(a, None, tokens, newcomers, 8)
    new_b = plain.advance_and_start(b, None, tokens, newcomers, 8)
    assert cached.prompt_cache.prefix_hits == 2
    torch.testing.assert_close(a.logits, b.logits, atol=2e-5, rtol=1e-5)
    for got, want in zip(_steps(cached, new_a, 3), _steps(plain, new_b, 3)):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_an_evicted_prompt_lends_no_prefix():
    cached, plain = _pair("llama")
    cached.start([SHARED], 4)
    cache = cached.prompt_cache = PromptCache(cached.prompt_cache.bytes + 1)  # room for one such entry
    cached.start([SHARED], 4)
    cached.start([[90 - i for i in range(len(SHARED))]], 4)  # evicts SHARED
    assert len(cache) == 1
    cached.start([[90 - i for i in range(PREFIX_BLOCK)] + [5]], 4)  # the one held lends its first block
    assert cache.prefix_hits == 1
    state = cached.start([SHARED[:-1] + [93]], 4)  # the evicted one lends nothing
    assert cache.prefix_hits == 1
    torch.testing.assert_close(state.logits, plain.start([SHARED[:-1] + [93]], 4).logits, atol=2e-5, rtol=1e-5)


def test_engine_requests_sharing_a_prefix_decode_as_without_the_cache():
    model = tm.llama()
    with_cache = decodekit.load(model, prompt_cache_mib=4)
    without = decodekit.load(model)
    prompts = [SHARED + [60 + i, 61 + i] for i in range(6)]

    def run(decoder) -> list[list[int]]:
        return _engine_tokens(decoder, prompts, lambda i: decodekit.Sampling(seed=i), lambda i: 8)

    assert run(with_cache) == run(without)
    assert with_cache.model.prompt_cache.prefix_hits >= 5


@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_a_bad_prompt_cache_size_is_refused(value):
    with pytest.raises(ConfigError, match="prompt_cache_mib"):
        decodekit.load("stdlib-code", prompt_cache_mib=value)
