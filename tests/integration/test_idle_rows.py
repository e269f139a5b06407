"""Work the lean steps leave out: a pool's free rows in a step (``idle``) and a prefill's left
padding are not computed, and what is read stays what the full pass gives."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch

from decodekit.model.hf import HFLanguageModel


@pytest.mark.parametrize("builder", ["gpt2", "llama", "qwen2"])
def test_idle_rows_are_skipped_and_the_others_step_as_before(builder):
    model = HFLanguageModel(tm.BUILDERS[builder]())
    assert model.skips_idle_rows
    prompts = [[5, 6, 7, 8], [9, 10], [3, 3, 3], [11]]
    full, part = model.start(prompts, 8), model.start(prompts, 8)
    tokens = full.logits.argmax(-1)
    idle = torch.tensor([1, 3])
    model.advance(full, None, tokens)
    model.advance(part, None, tokens, idle=idle)
    busy = torch.tensor([0, 2])
    assert torch.allclose(part.logits[busy], full.logits[busy], atol=1e-5)
    assert torch.equal(part.logits[idle], torch.zeros(2, full.logits.shape[-1]))  # not computed
    # the computed rows' caches equal the full pass's; a later step of them still agrees
    for a, b in zip(full.extra["cache"].layers, part.extra["cache"].layers):
        assert torch.allclose(a.keys[busy], b.keys[busy], atol=1e-5)
    nxt = full.logits.argmax(-1)
    model.advance(full, None, nxt)
    model.advance(part, None, nxt, idle=idle)
    assert torch.allclose(part.logits[busy], full.logits[busy], atol=1e-5)


@pytest.mark.parametrize("builder", ["gpt2", "llama", "qwen2"])
def test_a_fused_step_with_idle_rows_prefills_the_newcomers_as_alone(builder):
    model = HFLanguageModel(tm.BUILDERS[builder]())
    prompts, newcomers = [[5, 6, 7, 8], [9, 10], [4, 4]], [[11, 12, 13], [4], [7, 7, 7, 7, 7]]
    apart, fused = model.start(prompts, 8), model.start(prompts, 8)
    tokens = apart.logits.argmax(-1)
    model.advance(apart, None, tokens)
    new_apart = model.start(newcomers, 8)
    new_fused = model.advance_and_start(fused, None, tokens, newcomers, 8, idle=torch.tensor([1]))
    assert torch.allclose(fused.logits[[0, 2]], apart.logits[[0, 2]], atol=1e-5)
    assert not fused.logits[1].any()
    assert torch.allclose(new_fused.logits, new_apart.logits, atol=1e-5)


@pytest.mark.parametrize("builder", ["gpt2", "llama", "qwen2"])
def test_a_padded_prefill_gives_each_prompt_its_own_logits_and_cache(builder):
    """Prompts of different lengths prefilled together (left padding, not computed) give
    each prompt the logits and real cache slots it gets alone, and its next step too."""
    model = HFLanguageModel(tm.BUILDERS[builder]())
    prompts = [[5, 6, 7, 8, 9, 10, 11], [9, 10], [3]]
    together = model.start(prompts, 6)
    width = together.extra["length"]
    step = model.start(prompts, 6)
    model.advance(step, None, step.logits.argmax(-1))
    for row, prompt in enumerate(prompts):
        alone = model.start([prompt], 6)
        assert torch.allclose(together.logits[row], alone.logits[0], atol=1e-5)
        for a, b in zip(together.extra["cache"].layers, alone.extra["cache"].layers):
            assert torch.allclose(a.keys[row, :, width - len(prompt) : width], b.keys[0, :, : len(prompt)], atol=1e-5)
        token = alone.logits.argmax(-1)
        model.advance(alone, None, token)
        assert torch.allclose(step.logits[row], alone.logits[0], atol=1e-5)


@pytest.mark.parametrize("builder", ["gpt2", "llama", "qwen2"])
def test_the_engine_leaves_free_slots_out_and_every_request_decodes_as_alone(builder):
    """Short requests leave free slots among long ones; the engine's steps pass them as
    ``idle`` (asserted, so the test cannot pass without the path), and every request still
    decodes what it decodes alone."""
    import decodekit
    from decodekit.engine import Engine, Request

    model = HFLanguageModel(tm.BUILDERS[builder]())
    seen = []
    advance, fused = model.advance, model.advance_fused

    def advance_spy(*args, idle=None, **kwargs):
        seen.append(idle)
        return advance(*args, idle=idle, **kwargs)

    def fused_spy(*args, idle=None, **kwargs):
        seen.append(idle)
        return fused(*args, idle=idle, **kwargs)

    model.advance, model.advance_fused = advance_spy, fused_spy
    long = decodekit.DecodeOptions(max_new_tokens=16, min_new_tokens=16)
    short = decodekit.DecodeOptions(max_new_tokens=2, min_new_tokens=2)
    sample = decodekit.Sampling(seed=4, top_p=0.9, temperature=0.8)
    specs = [([5, 6, 7], decodekit.Greedy(), long), ([8, 9], decodekit.Greedy(), short), ([3, 4, 5, 6], sample, long),
             ([9, 9], sample, short), ([7], decodekit.Greedy(), short), ([4, 2], sample, long)]
    engine = Engine(model)
    handles = engine.submit([Request(*spec) for spec in specs])
    for _ in range(6):
        engine.step()
    late = ([6, 5, 4], sample, long)
    handles += engine.submit([Request(*late)])
    outputs = [h.result().hypotheses for h in handles]
    assert any(idle is not None and len(idle) for idle in seen)  # free slots were left out
    for (prompt, strategy, options), together in zip(specs + [late], outputs):
        model.advance, model.advance_fused = advance, fused
        (alone,) = Engine(model).submit([Request(prompt, strategy, options)])
        hyps = alone.result().hypotheses
        assert [h.token_ids for h in hyps] == [h.token_ids for h in together]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in together], abs=1e-4)
