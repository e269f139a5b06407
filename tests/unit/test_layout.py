"""The few-row weight layout (:mod:`decodekit.model.layout`): the products it gives equal the
module's, it serves only few rows and widening weights within its budget, and a weight changed
after loading (in place or replaced) is the weight used."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import generated_part, hf_generate, llama

import decodekit
from decodekit.model.layout import ROWS, Projections

# the (in, out) copies are the path where decodekit's own kernels are not in use
# (tests/unit/test_native.py covers those)
pytestmark = pytest.mark.usefixtures("without_native")


def _linears():
    torch.manual_seed(0)
    return [torch.nn.Linear(16, 48), torch.nn.Linear(48, 16, bias=False), torch.nn.Linear(16, 40, bias=False)]


@pytest.mark.parametrize("rows", [1, ROWS, ROWS + 1, 9])
def test_products_equal_the_modules(rows):
    linears = _linears()
    layout = Projections(linears)
    layout.refresh()
    for index, module in enumerate(linears):
        x = torch.randn(rows, module.in_features)
        got = layout(x, index)
        assert torch.allclose(got, module(x), atol=1e-5)
        if rows > ROWS or not layout.wide[index]:
            assert torch.equal(got, F.linear(x, module.weight, module.bias))  # the module's own weight
    assert layout.wide == [True, False, True]  # only widening products are copied


def test_a_lean_step_spends_one_budget_on_its_layers_and_its_head(monkeypatch):
    from decodekit.model import fast_llama

    model = llama(seed=3)
    step = fast_llama.LlamaStep(model)
    assert step.projections.copied and step.head.copied
    both = step.projections.size + step.head.size
    monkeypatch.setattr(fast_llama, "BUDGET", both - 1)  # room for the layers' copies, not also the head's
    step = fast_llama.LlamaStep(model)
    assert step.projections.copied and not step.head.copied and step.head.size == 0


def test_over_the_budget_nothing_is_copied():
    linears = _linears()
    layout = Projections(linears, budget=100)
    layout.refresh()
    assert not layout.copied
    x = torch.randn(1, 16)
    assert torch.equal(layout(x, 0), F.linear(x, linears[0].weight, linears[0].bias))


def test_a_weight_changed_in_place_or_replaced_is_the_one_used():
    linears = _linears()
    layout = Projections(linears)
    layout.refresh()
    x = torch.randn(1, 16)
    with torch.no_grad():
        linears[0].weight.mul_(-2.0)
    layout.refresh()
    assert torch.allclose(layout(x, 0), linears[0](x), atol=1e-5)
    linears[2].weight = torch.nn.Parameter(torch.randn(40, 16))
    layout.refresh()
    assert torch.allclose(layout(x, 2), linears[2](x), atol=1e-5)


def test_a_model_edited_after_loading_decodes_as_edited(one_thread):
    model = llama(seed=3)
    decoder = decodekit.load(model)
    step = decoder.model._step
    assert step is not None and step.projections.copied and step.head.copied
    prompt = [[5, 6, 7, 8]]

    def reference():
        return generated_part(model, hf_generate(model, prompt, max_new_tokens=8, min_new_tokens=8), prompt)[0]

    before = reference()
    assert decoder.generate(prompt[0], max_new_tokens=8, min_new_tokens=8).best.token_ids == before
    torch.manual_seed(1)
    with torch.no_grad():  # e.g. a fine-tuning step on the loaded model
        for layer in model.model.layers:
            layer.mlp.up_proj.weight.add_(torch.randn_like(layer.mlp.up_proj.weight))
        model.lm_head.weight.mul_(3.0)
    want = reference()
    assert want != before  # the edit changes what the model says
    assert decoder.generate(prompt[0], max_new_tokens=8, min_new_tokens=8).best.token_ids == want


onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def onednn_calls(monkeypatch):
    """oneDNN's linear switched on for the layout (as on an AVX-512 CPU); the row counts of the
    products it took."""
    from decodekit.model import layout as layout_module

    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class Counting:  # torch.ops.mkldnn's ops cannot be patched one by one: a stand-in
        def _linear_pointwise(self, *args):
            calls.append(args[0].shape[0])
            return real(*args)

    monkeypatch.setattr(layout_module, "ONEDNN", True)
    monkeypatch.setattr(torch.ops, "mkldnn", Counting(), raising=False)
    return calls


@onednn
@pytest.mark.parametrize("rows", [33, 200])
def test_large_products_through_onednn_equal_the_modules(rows, onednn_calls):
    linears = _linears()
    layout = Projections(linears)
    layout.refresh()
    for index, module in enumerate(linears):
        x = torch.randn(rows, module.in_features)
        with torch.inference_mode():  # as the lean steps run
            got, want = layout(x, index), F.linear(x, module.weight, module.bias)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            # a strided input goes to F.linear, as do few rows
            strided = torch.randn(module.in_features, rows).t()
            assert torch.equal(layout(strided, index), F.linear(strided, module.weight, module.bias))
            layout(x[:4], index)
        # autograd wanted (the weights require grad): F.linear
        assert torch.equal(layout(x, index), F.linear(x, module.weight, module.bias))
    assert onednn_calls == [rows] * len(linears)


@onednn
def test_a_prefill_through_onednn_decodes_as_generate(onednn_calls, one_thread):
    model = llama(seed=4)
    decoder = decodekit.load(model)
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 60, (n,), generator=generator).tolist() for n in (40, 23)]
    want = generated_part(model, hf_generate(model, prompts, max_new_tokens=8, min_new_tokens=8), prompts)
    got = [r.best.token_ids for r in decoder.generate(prompts, max_new_tokens=8, min_new_tokens=8)]
    assert got == want
    assert onednn_calls and set(onednn_calls) == {63}  # the prefill's products: both prompts' tokens, padding left out
