"""The engine's CPU fast paths compute what the plain model computes.

- Shared-prefix attention (``decodekit.model.attention``): the rows of one prompt read the
  prompt's keys/values once. Checked against transformers' SDPA on random tensors, and end to
  end against ``generate`` with prompts long enough to take the path.
- The weight-first output projection (``decodekit.model.head``) for large vocabularies: checked
  end to end against ``generate``.

Each end-to-end test also asserts that its fast path was taken, so it cannot pass vacuously.
"""

from __future__ import annotations

import types

import pytest
import tiny_models as tm
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from decodekit.engine import decode
from decodekit.model import attention
from decodekit.model import head as output_head
from decodekit.model.hf import HFLanguageModel
from decodekit.options import DecodeOptions
from decodekit.search.beam import BeamSearch
from decodekit.search.sampling import Sampling

LONG = attention.MIN_PREFIX + 24


@pytest.fixture
def flash_calls(monkeypatch):
    calls = []
    real = attention._flash

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "_flash", counting)
    return calls


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("padded", [False, True])
def test_shared_prefix_attention_equals_sdpa(heads, kv_heads, padded):
    generator = torch.Generator().manual_seed(0)
    prompts, group, prefix, generated, dim = 2, 3, 40, 5, 16
    rows = prompts * group
    key = torch.randn(rows, kv_heads, prefix + generated, dim, generator=generator)
    value = torch.randn(rows, kv_heads, prefix + generated, dim, generator=generator)
    # the rows of one prompt share its prompt region; generated positions differ per row
    key[:, :, :prefix] = key[::group, :, :prefix].repeat_interleave(group, 0)
    value[:, :, :prefix] = value[::group, :, :prefix].repeat_interleave(group, 0)
    query = torch.randn(rows, 1, heads, dim, generator=generator).transpose(1, 2)  # as transformers lays it out
    mask = None
    if padded:  # left padding: prompt 0 has 7 padded slots
        mask = torch.ones(rows, 1, 1, prefix + generated, dtype=torch.bool)
        mask[:group, :, :, :7] = False
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    token = attention._plan.set((group, prefix))
    try:
        got, _ = attention._attention(module, query, key, value, mask, scaling=0.3)
    finally:
        attention._plan.reset(token)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_sliding_window_layers_keep_transformers_attention(flash_calls):
    # a window can mask a whole prompt prefix: such layers must not take the split path
    generator = torch.Generator().manual_seed(1)
    key, value = torch.randn(2, 2, 12, 8, generator=generator), torch.randn(2, 2, 12, 8, generator=generator)
    key[1, :, :10], value[1, :, :10] = key[0, :, :10], value[0, :, :10]
    query = torch.randn(2, 2, 1, 8, generator=generator)
    mask = torch.zeros(2, 1, 1, 12, dtype=torch.bool)
    mask[..., 9:] = True  # a window of 3: the prefix [0, 10) is almost all masked
    module = types.SimpleNamespace(num_key_value_groups=1, is_causal=True, training=False)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.5)
    token = attention._plan.set((2, 10))
    try:
        got, _ = attention._attention(module, query, key, value, mask, scaling=0.5, sliding_window=3)
    finally:
        attention._plan.reset(token)
    assert not flash_calls
    torch.testing.assert_close(got, expected)


def _assert_beams_match_generate(model, prompts: list[list[int]], max_new_tokens: int) -> None:
    """Beam search (4 beams, 2 returned) equals ``generate``: tokens, and scores within 1e-4."""
    config = BeamSearch(num_beams=4, num_return_sequences=2)
    ours = decode(HFLanguageModel(model), prompts, config, DecodeOptions(max_new_tokens=max_new_tokens))
    out = tm.hf_generate(model, prompts, max_new_tokens=max_new_tokens, do_sample=False, num_beams=4, num_return_sequences=2)
    theirs = tm.generated_part(model, out, prompts)
    for i, hyps in enumerate(ours):
        assert [h.token_ids for h in hyps] == theirs[2 * i : 2 * i + 2]
        assert [h.score for h in hyps] == pytest.approx(out.sequences_scores[2 * i : 2 * i + 2].tolist(), abs=1e-4)


def _long_prompts(seed: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (LONG, LONG - 9)]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_long_prompt_beam_search_matches_generate(name, flash_calls):
    model = tm.gpt2(positions=512) if name == "gpt2" else tm.llama(positions=512)
    _assert_beams_match_generate(model, _long_prompts(3, tm.VOCAB), 8)
    assert flash_calls, "the shared-prefix path was not taken"


def test_long_prompt_samples_same_with_and_without_sharing(monkeypatch, flash_calls):
    model = tm.llama(positions=512)
    prompts = _long_prompts(4, tm.VOCAB)
    config = Sampling(n=3, temperature=1.0)

    def run():
        generator = torch.Generator().manual_seed(11)
        hyps = decode(HFLanguageModel(model), prompts, config, DecodeOptions(max_new_tokens=12), generator=generator)
        return [[(h.token_ids, h.logprob) for h in row] for row in hyps]

    shared = run()
    assert flash_calls
    monkeypatch.setattr(attention, "MIN_PREFIX", 10**9)
    plain = run()
    for row_shared, row_plain in zip(shared, plain):
        for (ids_s, lp_s), (ids_p, lp_p) in zip(row_shared, row_plain):
            assert ids_s == ids_p
            assert lp_s == pytest.approx(lp_p, abs=1e-4)


def test_large_vocabulary_head_matches_generate(monkeypatch, without_native):
    # decodekit's kernels take such products where built; this is the path without them
    vocab = 16384  # x 256: 4M entries, weight first at 16..32 rows (4 prompts x 4 beams)
    model = tm.gpt2(vocab=vocab, dim=256, seed=2)
    used = []
    real = output_head.weight_first_linear
    monkeypatch.setattr(output_head, "weight_first_linear", lambda head, x: used.append(x.shape) or real(head, x))
    _assert_beams_match_generate(model, tm.prompts(5, 4, low=3, high=9, vocab=vocab), 8)
    assert used, "the weight-first output projection was not used"


# -- the lean Llama-family step -------------------------------------------------------------------


def _mistral(sliding_window=None):
    import transformers

    torch.manual_seed(1)
    config = transformers.MistralConfig(
        vocab_size=tm.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        sliding_window=sliding_window, initializer_range=0.2, bos_token_id=tm.BOS,
        eos_token_id=tm.EOS, pad_token_id=tm.PAD,
    )
    return tm._finish(transformers.MistralForCausalLM(config))


def _biased_llama():
    import transformers

    torch.manual_seed(2)
    config = transformers.LlamaConfig(
        vocab_size=tm.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        attention_bias=True, initializer_range=0.2, bos_token_id=tm.BOS, eos_token_id=tm.EOS,
        pad_token_id=tm.PAD,
    )
    return tm._finish(transformers.LlamaForCausalLM(config))


def _qwen3():
    import transformers

    torch.manual_seed(3)
    config = transformers.Qwen3Config(
        vocab_size=tm.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        initializer_range=0.2, bos_token_id=tm.BOS, eos_token_id=tm.EOS, pad_token_id=tm.PAD,
    )
    model = transformers.Qwen3ForCausalLM(config)
    with torch.no_grad():  # non-trivial per-head norms, so that skipping them would show
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    return tm._finish(model)


STEP_MODELS = {
    "llama": lambda: tm.llama(positions=512),
    "qwen2": lambda: tm._llama_like(__import__("transformers").Qwen2Config, __import__("transformers").Qwen2ForCausalLM, 0, tm.VOCAB, 512),
    "mistral": _mistral,
    "qwen3": _qwen3,
    "llama-bias": _biased_llama,
    "gpt2": lambda: tm.gpt2(positions=512),
}


@pytest.mark.parametrize("name", sorted(STEP_MODELS))
@pytest.mark.parametrize("long", [False, True])
def test_llama_step_equals_model_forward(name, long, flash_calls):
    """Prefill and decode the same padded, fanned-out, reordered rows through the lean step and
    through the model's own forward (no decodekit attention): the logits agree at every step."""
    model = STEP_MODELS[name]()
    lean, plain = HFLanguageModel(model), HFLanguageModel(model)
    assert lean._step is not None
    plain._step, plain._shared_prefix = None, False
    generator = torch.Generator().manual_seed(3)
    lengths = (LONG, LONG - 5) if long else (9, 4)
    prompts = [torch.randint(3, tm.VOCAB, (n,), generator=generator).tolist() for n in lengths]
    states = [m.start(prompts, 12) for m in (lean, plain)]
    fan_out = torch.arange(2).repeat_interleave(3)
    for m, state in zip((lean, plain), states):
        m.select(state, fan_out)
    for _ in range(6):
        torch.testing.assert_close(states[0].logits, states[1].logits, atol=2e-5, rtol=1e-5)
        tokens = torch.randint(3, tm.VOCAB, (6,), generator=generator)
        parents = torch.tensor([0, 0, 1, 4, 3, 3])  # rows move within their prompt's group
        for m, state in zip((lean, plain), states):
            m.advance(state, parents, tokens)
    torch.testing.assert_close(states[0].logits, states[1].logits, atol=2e-5, rtol=1e-5)
    assert bool(flash_calls) == long  # long prompts took the shared-prefix attention


@pytest.mark.parametrize("name", ["mistral", "qwen3"])
def test_beam_search_through_the_lean_step_matches_generate(name):
    model = STEP_MODELS[name]()
    assert HFLanguageModel(model)._step is not None
    _assert_beams_match_generate(model, tm.prompts(6, 3, low=2, high=9), 10)


def test_llama_step_declines_what_it_does_not_reproduce():
    from decodekit.model.fast_llama import LlamaStep

    assert LlamaStep.build(tm.gpt2()) is None
    assert LlamaStep.build(_mistral(sliding_window=4)) is None
    assert LlamaStep.build(tm.llama().double()) is None
    odd_eps = tm.llama()
    odd_eps.model.layers[1].input_layernorm.variance_epsilon = 1e-3
    assert LlamaStep.build(odd_eps) is None
    scaled = tm.llama()
    scaled.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert LlamaStep.build(scaled) is None
    partless = tm.llama()
    del partless.model.rotary_emb
    assert LlamaStep.build(partless) is None
    hooked = tm.llama()
    hooked.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert LlamaStep.build(hooked) is None
    # the parity tests of test_parity.py run Llama and Qwen2 through the lean step
    assert LlamaStep.build(tm.llama()) is not None and LlamaStep.build(tm.qwen2()) is not None


def test_gpt2_step_declines_what_it_does_not_reproduce():
    from decodekit.model.fast_gpt2 import GPT2Step

    assert GPT2Step.build(tm.llama()) is None
    assert GPT2Step.build(tm.gpt2().double()) is None
    for setting, value in (("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True)):
        model = tm.gpt2()
        setattr(model.config, setting, value)
        assert GPT2Step.build(model) is None, setting
    hooked = tm.gpt2()
    hooked.transformer.h[1].attn.register_forward_hook(lambda *args: None)
    assert GPT2Step.build(hooked) is None
    training = GPT2Step.build(tm.gpt2())
    training.model.train()
    assert not training.usable()  # dropout would apply: the model's own forward then
    assert GPT2Step.build(tm.gpt2()) is not None


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_llama_step_verifies_tree_blocks_like_the_model(name):
    """Speculative verification (a tree block under a 4D mask), rollback and the next step
    give the same logits through the lean step and through the model's forward."""
    model = STEP_MODELS[name]()
    lean, plain = HFLanguageModel(model), HFLanguageModel(model)
    plain._step, plain._shared_prefix = None, False
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, tm.VOCAB, (n,), generator=generator).tolist() for n in (11, 6)]
    states = [m.start(prompts, 16) for m in (lean, plain)]
    tokens = torch.randint(3, tm.VOCAB, (2, 5), generator=generator)
    parents = torch.tensor([[-1, 0, 0, 1, 3], [-1, 0, 1, 2, 3]])  # a tree and a chain
    blocks = [m.verify(state, tokens, parents) for m, state in zip((lean, plain), states)]
    torch.testing.assert_close(blocks[0], blocks[1], atol=2e-5, rtol=1e-5)
    index, count = torch.tensor([[0, 2, 0], [0, 1, 2]]), torch.tensor([2, 3])
    for m, state in zip((lean, plain), states):
        m.keep(state, index, count)
        m.advance(state, None, torch.tensor([7, 9]))
    torch.testing.assert_close(states[0].logits, states[1].logits, atol=2e-5, rtol=1e-5)


def test_llama_step_steps_aside_for_hooks_registered_later():
    model = tm.llama()
    adapter = HFLanguageModel(model)
    assert adapter._step.usable()
    calls = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *args: calls.append(1))
    decode(adapter, [[5, 6, 7]], BeamSearch(num_beams=2), DecodeOptions(max_new_tokens=4))
    assert len(calls) == adapter.forward_count  # every forward, prefill and steps, ran the hook
    handle.remove()
    assert adapter._step.usable()


@pytest.mark.parametrize("builder", ["llama", "gpt2"])
def test_the_lean_steps_read_the_weights_as_they_are_now(builder):
    """Weights changed in place between calls (fine-tuning, a merged adapter) are what the
    next prefill and step compute with: the lean steps keep no copy of them."""
    model = tm.BUILDERS[builder]()
    adapter = HFLanguageModel(model)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    before = adapter.start(prompts, 4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.25)
    after = adapter.start(prompts, 4)
    token = after.logits.argmax(-1)
    adapter.advance(after, None, token)
    with torch.no_grad():
        ids = torch.cat([torch.tensor(prompts), token[:, None]], 1)
        fresh = model(ids).logits
    assert not torch.allclose(before.logits, fresh[:, -2], atol=1e-3)  # the change matters
    torch.testing.assert_close(after.logits, fresh[:, -1], atol=2e-5, rtol=1e-5)
