"""Admission that fails: a request whose rows cannot join the running state fails alone (with
a named error), and every request already in flight decodes exactly what it decodes alone."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch

import decodekit
from decodekit.engine import Engine, Request
from decodekit.engine.pool import RowPool
from decodekit.errors import ModelError
from decodekit.model.hf import HFLanguageModel
from decodekit.speculative import Speculative

LONG = decodekit.DecodeOptions(max_new_tokens=14, min_new_tokens=14)  # no early EOS
RUNNING = [
    ([5, 6, 7], decodekit.Greedy(), LONG),
    ([9, 8, 7, 6], decodekit.Sampling(seed=3, top_k=20), LONG),
    ([4, 4], decodekit.BeamSearch(num_beams=3, num_return_sequences=2), LONG),
    ([3, 1, 4, 1, 5, 9, 2, 6], decodekit.Greedy(speculative=Speculative("ngram")), LONG),
]


def alone(model, prompt, strategy, options):
    (handle,) = Engine(model).submit([Request(prompt, strategy, options)])
    return handle.result().hypotheses


def same(got, want) -> None:
    assert [h.token_ids for h in got] == [h.token_ids for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)


def running(model) -> tuple[Engine, list]:
    engine = Engine(model)
    handles = [h for spec in RUNNING for h in engine.submit([Request(*spec)])]
    for _ in range(3):
        engine.step()
    assert not any(h.done for h in handles)
    return engine, handles


def finish(model, engine, handles) -> None:
    """The running requests end as they do alone, and the engine still takes new requests."""
    for spec, handle in zip(RUNNING, handles):
        same(handle.result().hypotheses, alone(model, *spec))
    later = ([2, 7, 1, 8], decodekit.Greedy(), LONG)
    (handle,) = engine.submit([Request(*later)])
    same(handle.result().hypotheses, alone(model, *later))


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
@pytest.mark.parametrize("newcomer", ["greedy", "beam"])
def test_a_merge_the_model_refuses_fails_only_the_new_request(builder, newcomer):
    """``model.merge`` raising (memory, say) for a request admitted mid-flight: that request
    fails with a ModelError naming admission; the greedy, sampled, beam and speculative
    requests in flight are untouched."""
    model = HFLanguageModel(tm.BUILDERS[builder]())
    engine, handles = running(model)
    merge = model.merge

    def refusing(*args, **kwargs):
        model.merge = merge
        raise RuntimeError("not enough memory")

    model.merge = refusing
    strategy = decodekit.Greedy() if newcomer == "greedy" else decodekit.BeamSearch(num_beams=3, num_return_sequences=2)
    (new,) = engine.submit([Request([6, 6, 6, 6, 6], strategy, LONG)])
    with pytest.raises(ModelError, match="admission.*not enough memory"):
        new.result()
    assert model.merge is merge  # the merge was tried, and refused
    finish(model, engine, handles)


@pytest.mark.parametrize("builder", ["gpt2", "llama"])
def test_a_merge_that_fails_half_way_leaves_the_running_state_as_it_was(builder):
    """A merge whose last allocation fails (after the new cache rows were built) changes
    nothing: the running rows keep decoding exactly."""
    model = HFLanguageModel(tm.BUILDERS[builder]())
    engine, handles = running(model)
    merge, tried = model.merge, []

    def failing_late(*args, **kwargs):
        model.merge = merge
        original = torch.Tensor.new_zeros

        def new_zeros(self, *shape, **options):  # the attention mask: allocated after the cache
            tried.append(shape)
            raise RuntimeError("not enough memory")

        torch.Tensor.new_zeros = new_zeros
        try:
            return merge(*args, **kwargs)
        finally:
            torch.Tensor.new_zeros = original

    model.merge = failing_late
    (new,) = engine.submit([Request([6, 6, 6, 6, 6], decodekit.Greedy(), LONG)])
    with pytest.raises(ModelError, match="admission"):
        new.result()
    assert tried  # it failed where it allocates the mask, after the cache
    finish(model, engine, handles)


def test_a_failure_after_the_rows_joined_fails_their_partition_not_the_engine(monkeypatch):
    """A failure past the model's merge (the rows joined, their pool did not take them): the
    new request and the partition it joined fail with a named error; the speculative run in
    flight ends as it does alone, and the engine decodes later requests."""
    model = HFLanguageModel(tm.BUILDERS["llama"]())
    engine, handles = running(model)
    add = RowPool.add

    def broken(self, group, slots=None):
        if any(h.request.prompt == [6, 6, 6, 6, 6] for h in group.handles):
            raise ValueError("broken pool")
        return add(self, group, slots)

    monkeypatch.setattr(RowPool, "add", broken)
    (new,) = engine.submit([Request([6, 6, 6, 6, 6], decodekit.Greedy(), LONG)])
    with pytest.raises(ModelError, match="admission.*broken pool"):
        new.result()
    for spec, handle in zip(RUNNING, handles):
        if getattr(spec[1], "speculative", None) is not None:
            same(handle.result().hypotheses, alone(model, *spec))
        else:
            with pytest.raises(ModelError, match="broken pool"):
                handle.result()
    later = ([2, 7, 1, 8], decodekit.Sampling(seed=1), LONG)
    (handle,) = engine.submit([Request(*later)])
    same(handle.result().hypotheses, alone(model, *later))
