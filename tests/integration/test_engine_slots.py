"""Rows as slots: a request that leaves the running batch frees its rows in place, and a later
request is written into them instead of merging a new state in."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch

import decodekit
from decodekit.engine import Engine, Request
from decodekit.model.hf import HFLanguageModel


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_a_request_takes_the_free_slots_of_one_that_left_without_copying_the_state(builder):
    """Rows of a finished request stay in the state as free slots; later requests are written
    into them (one shorter prompt, one longer than the state's length, which lengthens it)
    instead of merging a new state in, and every output equals the request decoded alone."""
    model = HFLanguageModel(tm.BUILDERS[builder]())
    calls = {"merge": 0, "insert": 0}
    merge, insert = model.merge, model.insert

    def counted(name, method):
        def call(*args, **kwargs):
            calls[name] += 1
            return method(*args, **kwargs)
        return call

    model.merge, model.insert = counted("merge", merge), counted("insert", insert)
    long = decodekit.DecodeOptions(max_new_tokens=30, min_new_tokens=30)  # no early EOS
    short = decodekit.DecodeOptions(max_new_tokens=3, min_new_tokens=3)
    sample = decodekit.Sampling(seed=11, top_p=0.9)
    engine = Engine(model)
    starts = [([5, 6, 7], decodekit.Greedy(), long), ([8, 9], decodekit.Greedy(), short), ([9, 8, 7, 6], decodekit.Greedy(), short), ([4, 4, 4], sample, long), ([3], sample, short)]
    first = engine.submit([Request(*spec) for spec in starts])
    for _ in range(5):
        engine.step()
    assert first[1].done and first[2].done and first[4].done
    merged = calls["merge"]
    later = [
        ([10, 11], decodekit.Greedy(), long),  # shorter than the state's length
        ([12 + i % 7 for i in range(14)], decodekit.Greedy(), long),  # longer: the state lengthens
        ([6, 5], sample, long),
    ]
    handles = first + [h for prompt, strategy, options in later for h in engine.submit([Request(prompt, strategy, options)])]
    outputs = [h.result().hypotheses for h in handles]
    assert calls["merge"] == merged and calls["insert"] >= 1  # the later requests took the free slots
    for (prompt, strategy, options), together in zip(starts + later, outputs):
        (alone,) = Engine(model).submit([Request(prompt, strategy, options)])
        hyps = alone.result().hypotheses
        assert [h.token_ids for h in hyps] == [h.token_ids for h in together]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in together], abs=1e-4)


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_new_requests_are_prefilled_in_the_forward_of_the_running_rows(builder):
    """With the lean step, greedy and sampling requests that arrive while rows decode are
    prefilled in the same forward as those rows' step (no forward of their own), and decode
    what they decode alone."""
    model = HFLanguageModel(tm.BUILDERS[builder]())
    assert model.can_fuse_prefill
    options = decodekit.DecodeOptions(max_new_tokens=12, min_new_tokens=12)
    engine = Engine(model)
    specs = [([5, 6, 7], decodekit.Greedy()), ([9, 8, 7, 6, 5, 4], decodekit.Sampling(seed=3, top_k=20)), ([4], decodekit.Greedy()), ([3, 3], decodekit.Sampling(seed=8))]
    handles = engine.submit([Request(specs[0][0], specs[0][1], options)])
    engine.step()
    for prompt, strategy in specs[1:]:
        handles += engine.submit([Request(prompt, strategy, options)])
        before = model.forward_count
        engine.step()
        assert model.forward_count == before + 1  # the step's forward prefilled the newcomer too
    for (prompt, strategy), handle in zip(specs, handles):
        (alone,) = Engine(model).submit([Request(prompt, strategy, options)])
        want, got = alone.result().hypotheses, handle.result().hypotheses
        assert [h.token_ids for h in got] == [h.token_ids for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_a_fused_step_and_prefill_equal_the_two_apart(builder):
    model = HFLanguageModel(tm.BUILDERS[builder]())
    prompts, newcomers = [[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [4], [7, 7, 7, 7, 7]]
    apart, fused = model.start(prompts, 8), model.start(prompts, 8)
    tokens = apart.logits.argmax(-1)
    model.advance(apart, None, tokens)
    new_apart = model.start(newcomers, 8)
    new_fused = model.advance_and_start(fused, None, tokens, newcomers, 8)
    assert torch.allclose(fused.logits, apart.logits, atol=1e-5)
    assert torch.allclose(new_fused.logits, new_apart.logits, atol=1e-5)
    for a, b in ((apart, fused), (new_apart, new_fused)):
        assert a.extra["length"] == b.extra["length"] and torch.equal(a.extra["next_position"], b.extra["next_position"])
        assert torch.equal(a.extra["mask"], b.extra["mask"])
        for la, lb in zip(a.extra["cache"].layers, b.extra["cache"].layers):
            assert torch.allclose(la.keys, lb.keys, atol=1e-5) and torch.allclose(la.values, lb.values, atol=1e-5)


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_free_slots_hold_no_cache_slots_so_the_shared_length_stays_bounded(builder):
    """A slot freed by a finished request decodes padding until a request takes it; the slots it
    writes meanwhile stay masked, so the shared length (what every step attends over) follows
    the live rows and does not grow with the time a slot stays free."""
    model = HFLanguageModel(tm.BUILDERS[builder]())
    engine = Engine(model)
    long = decodekit.DecodeOptions(max_new_tokens=70, min_new_tokens=70)
    short = decodekit.DecodeOptions(max_new_tokens=2, min_new_tokens=2)
    # one long request; short ones come and go, so the pool keeps free slots most of the time
    handles = engine.submit([Request([5, 6, 7], decodekit.Greedy(), long), Request([8, 9], decodekit.Greedy(), short), Request([4, 4], decodekit.Greedy(), short)])
    lengths = []
    for step in range(68):
        engine.step()
        if step % 20 == 0:
            handles += engine.submit([Request([3, 2 + step % 5], decodekit.Greedy(), short)])
        for partition in engine._partitions:
            extra = partition.state.extra
            if "mask" not in extra:
                continue
            mask = extra["mask"][:, : extra["length"]]
            for pool in partition.groups:
                for row in getattr(pool, "free", []):
                    assert int(mask[row].sum()) == 0, f"free slot {row} holds real cache slots at step {step}"
            lengths.append(extra["length"])
    assert all(h.result() is not None for h in handles)
    # the long request has 3 + 70 slots: compaction keeps the length close to that, never far past
    assert max(lengths) <= 73 + 73 // 8 + 8 + 4
