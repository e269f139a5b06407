"""decodekit's own CPU kernels (:mod:`decodekit.native`): the products equal ``F.linear``'s and
do not depend on the rows computed with them; the Llama one-token step in one kernel call
equals the lean step's PyTorch path (and through it the model's forward,
``tests/integration/test_fast_paths.py``) on the configurations it serves, and is not taken
where it does not serve. Skipped where the kernels are not built, except the check that a
machine able to build them did."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F
import transformers

import decodekit
from decodekit import native
from decodekit.model.hf import HFLanguageModel
from decodekit.model.native_steps import NativeStep

built = pytest.mark.skipif(not native.available(), reason="decodekit's kernels are not built or not for this CPU")


def _avx2() -> bool:
    info = Path("/proc/cpuinfo")
    return info.exists() and {"avx2", "fma"} <= set(info.read_text().split())


@pytest.mark.skipif(not (platform.machine() == "x86_64" and sys.platform == "linux" and shutil.which("cc") and _avx2()),
                    reason="not a machine that builds and runs the kernels")
def test_a_machine_with_a_compiler_and_avx2_runs_the_kernels():
    # the install builds them; without this check every test below could skip unseen
    assert native.available()


@built
def test_the_kernels_can_be_switched_off():
    code = "from decodekit import native; print(native.available())"
    env = {**os.environ, "DECODEKIT_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@built
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 17, native.ROWS])
@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (37, 29), (5, 256), (256, 704)])
@pytest.mark.parametrize("bias", [False, True])
def test_products_equal_f_linear(rows, shape, bias):
    generator = torch.Generator().manual_seed(rows * 1000 + shape[0])
    weight = torch.randn(*shape, generator=generator)
    b = torch.randn(shape[0], generator=generator) if bias else None
    x = torch.randn(rows, shape[1], generator=generator)
    got = native.linear(x, weight, b)
    torch.testing.assert_close(got, F.linear(x, weight, b), atol=1e-4, rtol=1e-5)


@built
def test_a_rows_product_does_not_depend_on_the_rows_beside_it():
    generator = torch.Generator().manual_seed(0)
    weight, x = torch.randn(300, 104, generator=generator), torch.randn(native.ROWS, 104, generator=generator)
    together = native.linear(x, weight, None)
    for row in range(native.ROWS):
        assert torch.equal(native.linear(x[row : row + 1], weight, None), together[row : row + 1])
    assert torch.equal(native.linear(x[3:9], weight, None), together[3:9])


@built
def test_products_the_kernel_does_not_serve_are_left_to_torch():
    weight = torch.randn(8, 8)
    assert native.linear(torch.randn(native.ROWS + 1, 8), weight, None) is None  # many rows: the BLAS
    assert native.linear(torch.randn(2, 8).double(), weight.double(), None) is None
    assert native.linear(torch.randn(8, 2).t(), weight, None) is None  # not contiguous
    grad = torch.randn(8, 8, requires_grad=True)
    assert native.linear(torch.randn(2, 8), grad, None) is None  # autograd wants the graph
    with torch.no_grad():
        assert native.linear(torch.randn(2, 8), grad, None) is not None


def _llama(seed: int, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    base = dict(vocab_size=tm.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, bos_token_id=tm.BOS,
                eos_token_id=tm.EOS, pad_token_id=tm.PAD)
    kind = config.pop("kind", "llama")
    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
               "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}
    config_class, model_class = classes[kind]
    model = model_class(config_class(**{**base, **config}))
    if kind == "qwen3":
        with torch.no_grad():  # per-head norms that matter
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    return tm._finish(model)


MODELS = {
    "gqa, head dim 8": lambda: _llama(0),
    "mha, head dim 64": lambda: _llama(1, hidden_size=128, num_attention_heads=2, num_key_value_heads=2),
    "8 heads per kv head, head dim 16": lambda: _llama(2, hidden_size=128, num_attention_heads=8, num_key_value_heads=1),
    "odd width 40, head dim 8": lambda: _llama(3, hidden_size=40, intermediate_size=72, num_attention_heads=5, num_key_value_heads=5),
    "qwen2 (q/k/v biases)": lambda: _llama(4, kind="qwen2"),
    "llama, attention bias": lambda: _llama(5, attention_bias=True),
    "qwen3 (q/k norms)": lambda: _llama(6, kind="qwen3", head_dim=16),
    "gpt2, head dim 16": lambda: tm.gpt2(seed=7, positions=512),
    "gpt2, head dim 8, width 64": lambda: _gpt2(8, n_embd=64, n_head=8),
    "gpt2, width 40 (out of 8 lanes)": lambda: _gpt2(12, n_embd=40, n_head=5),
    "gpt2, unscaled attention": lambda: _gpt2(9, scale_attn_weights=False),
}


def _gpt2(seed: int, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    base = dict(vocab_size=tm.VOCAB, n_positions=512, n_embd=32, n_layer=2, n_head=4, bos_token_id=tm.BOS,
                eos_token_id=tm.EOS, pad_token_id=tm.PAD, initializer_range=0.2)
    return tm._finish(transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**base, **config})))


@pytest.fixture
def native_calls(monkeypatch):
    """The steps the kernel served (rows of each)."""
    served, real = [], NativeStep.__call__

    def counting(self, part):
        out = real(self, part)
        if out is not None:
            served.append(out.shape[0])
        return out

    monkeypatch.setattr(NativeStep, "__call__", counting)
    return served


@built
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_kernel_step_equals_the_pytorch_step(name, native_calls):
    """Padded prompts (masked slots), fanned-out rows reordered at every step, and steps past
    the cache's first capacity: the kernel's logits equal the PyTorch path's at every step."""
    model = MODELS[name]()
    fast, plain = HFLanguageModel(model), HFLanguageModel(model)
    assert fast._step.native is not None
    plain._step.native = None
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, tm.VOCAB, (n,), generator=generator).tolist() for n in (9, 3, 14)]
    states = [m.start(prompts, 2) for m in (fast, plain)]  # room for 2 new tokens: the cache grows below
    fan_out = torch.arange(3).repeat_interleave(3)
    for m, state in zip((fast, plain), states):
        m.select(state, fan_out)
    steps = 20
    for _ in range(steps):
        torch.testing.assert_close(states[0].logits, states[1].logits, atol=5e-5, rtol=1e-5)
        tokens = torch.randint(3, tm.VOCAB, (9,), generator=generator)
        parents = torch.tensor([0, 0, 1, 4, 3, 3, 8, 6, 6])  # rows move within their prompt's group
        for m, state in zip((fast, plain), states):
            m.advance(state, parents, tokens)
    torch.testing.assert_close(states[0].logits, states[1].logits, atol=5e-5, rtol=1e-5)
    assert native_calls == [9] * steps  # every step was the kernel's


@built
def test_decoding_through_the_kernel_matches_generate(native_calls):
    model = MODELS["gqa, head dim 8"]()
    prompts = tm.prompts(3, 3, low=2, high=10)
    decoder = decodekit.load(model)
    for prompt in prompts:
        want = tm.generated_part(model, tm.hf_generate(model, [prompt], max_new_tokens=12, min_new_tokens=12), [prompt])[0]
        assert decoder.generate(prompt, max_new_tokens=12, min_new_tokens=12).best.token_ids == want
    assert native_calls


@built
def test_a_model_edited_after_loading_decodes_as_edited_through_the_kernel(native_calls):
    model = MODELS["qwen2 (q/k/v biases)"]()
    decoder = decodekit.load(model)
    prompt = [[5, 6, 7, 8]]

    def reference():
        return tm.generated_part(model, tm.hf_generate(model, prompt, max_new_tokens=8, min_new_tokens=8), prompt)[0]

    before = reference()
    assert decoder.generate(prompt[0], max_new_tokens=8, min_new_tokens=8).best.token_ids == before
    torch.manual_seed(1)
    with torch.no_grad():  # in place, and a weight replaced by a new tensor
        for layer in model.model.layers:
            layer.mlp.up_proj.weight.add_(torch.randn_like(layer.mlp.up_proj.weight))
            layer.self_attn.q_proj.bias.mul_(-3.0)
        model.model.layers[1].self_attn.o_proj.weight = torch.nn.Parameter(torch.randn_like(model.model.layers[1].self_attn.o_proj.weight))
    want = reference()
    assert want != before  # the edit changes what the model says
    assert decoder.generate(prompt[0], max_new_tokens=8, min_new_tokens=8).best.token_ids == want
    assert native_calls


@built
def test_steps_the_kernel_does_not_serve_take_the_pytorch_path(native_calls):
    from decodekit.model import attention

    model = MODELS["gqa, head dim 8"]()
    adapter = HFLanguageModel(model)
    long = [[3 + i % (tm.VOCAB - 3) for i in range(attention.MIN_PREFIX + 4)]]
    state = adapter.start(long, 4)
    adapter.select(state, torch.zeros(3, dtype=torch.long))  # 3 rows sharing a long prompt: the shared-prefix plan
    adapter.advance(state, None, torch.tensor([5, 6, 7]))
    assert native_calls == []
    with pytest.raises(IndexError):  # as the PyTorch path: a token outside the embedding
        adapter.advance(adapter.start([[5, 6]], 4), None, torch.tensor([tm.VOCAB]))
    odd = _llama(8, hidden_size=48, num_attention_heads=2, num_key_value_heads=2)  # head dim 24: not a kernel size
    assert HFLanguageModel(odd)._step.native is None
    assert HFLanguageModel(_gpt2(10, n_embd=36, n_head=3))._step.native is None  # head dim 12


@built
def test_a_gpt2_position_outside_its_table_is_an_error_not_a_read():
    model = _gpt2(11, n_positions=16)
    adapter = HFLanguageModel(model)
    state = adapter.start([[5, 6]], 4)
    state.extra["next_position"] = torch.tensor([16])  # what the model's own forward would refuse too
    with pytest.raises(IndexError):
        adapter.advance(state, None, torch.tensor([7]))


@built
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_kernel_verifies_draft_blocks_like_the_pytorch_step(name, native_calls):
    """A tree block and a chain under the verification mask, rollback, then the next step."""
    model = MODELS[name]()
    fast, plain = HFLanguageModel(model), HFLanguageModel(model)
    plain._step.native = None
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, tm.VOCAB, (n,), generator=generator).tolist() for n in (11, 6)]
    states = [m.start(prompts, 3) for m in (fast, plain)]
    for _ in range(2):
        tokens = torch.randint(3, tm.VOCAB, (2, 5), generator=generator)
        parents = torch.tensor([[-1, 0, 0, 1, 3], [-1, 0, 1, 2, 3]])  # a tree and a chain
        blocks = [m.verify(state, tokens, parents) for m, state in zip((fast, plain), states)]
        torch.testing.assert_close(blocks[0], blocks[1], atol=5e-5, rtol=1e-5)
        index, count = torch.tensor([[0, 2, 0], [0, 1, 2]]), torch.tensor([2, 3])
        for m, state in zip((fast, plain), states):
            m.keep(state, index, count)
            m.advance(state, None, torch.tensor([7, 9]))
        torch.testing.assert_close(states[0].logits, states[1].logits, atol=5e-5, rtol=1e-5)
    assert native_calls == [2, 2, 2, 2]  # both blocks and both steps were the kernel's


@pytest.fixture
def threads(monkeypatch):
    """Sets the kernels' thread count (one or two) for a test, torch's left as it is, so that
    only the kernels' sums can differ."""
    lib = native.library()
    monkeypatch.setattr(native, "follow_threads", lambda lib: None)
    yield lib.dk_set_threads
    lib.dk_set_threads(torch.get_num_threads())
    native._threads[0] = torch.get_num_threads()


@built
@pytest.mark.parametrize("rows", [1, 5, 9, native.ROWS])
def test_a_second_thread_changes_no_product(rows, threads):
    # large enough to be split between the threads; 520 outputs: the halves end off a block
    generator = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(520, 300, generator=generator), torch.randn(520, generator=generator)
    x = torch.randn(rows, 300, generator=generator)
    threads(1)
    alone = native.linear(x, weight, bias)
    lib = native.library()
    transposed, alone_t = weight.t().contiguous(), torch.empty(rows, 520)  # Conv1D's layout
    lib.dk_linear_t(x.data_ptr(), transposed.data_ptr(), bias.data_ptr(), alone_t.data_ptr(), rows, 520, 300)
    threads(2)
    for _ in range(20):  # the worker between jobs: spinning, asleep, woken
        assert torch.equal(native.linear(x, weight, bias), alone)
        y = torch.empty(rows, 520)
        lib.dk_linear_t(x.data_ptr(), transposed.data_ptr(), bias.data_ptr(), y.data_ptr(), rows, 520, 300)
        assert torch.equal(y, alone_t)


@built
@pytest.mark.parametrize("model", [lambda: _llama(10, hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2),
                                   lambda: _gpt2(11, n_embd=320, n_head=5)], ids=["llama", "gpt2"])
def test_a_second_thread_changes_no_step(model, threads, native_calls):
    model = model()
    prompts = tm.prompts(3, 3, low=4, high=12)
    decoder = decodekit.load(model)
    runs = []
    for count in (1, 2):
        threads(count)
        beam = decodekit.BeamSearch(num_beams=3, num_return_sequences=3)
        runs.append([decoder.generate(p, beam, max_new_tokens=10, min_new_tokens=10) for p in prompts])
    for one, two in zip(*runs):
        assert [c.token_ids for c in one.sequences] == [c.token_ids for c in two.sequences]
        assert [c.score for c in one.sequences] == [c.score for c in two.sequences]
    assert native_calls


@built
def test_two_callers_at_once_each_get_their_own_products(threads):
    # ctypes lets go of the GIL: two Python threads run threaded products at the same time,
    # each on an OpenMP team of its own
    import concurrent.futures

    generator = torch.Generator().manual_seed(5)
    weights = [torch.randn(520, 300, generator=generator) for _ in range(2)]
    xs = [torch.randn(9, 300, generator=generator) for _ in range(2)]
    threads(1)
    alone = [native.linear(x, w, None) for x, w in zip(xs, weights)]
    threads(2)

    def repeat(i):
        return all(torch.equal(native.linear(xs[i], weights[i], None), alone[i]) for _ in range(200))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(repeat, [0, 1])) == [True, True]


@built
@pytest.mark.parametrize("before", ["native.linear(x, w, None)", "torch.randn(512, 512).exp().sum()"],
                         ids=["after a threaded product", "after torch's threads ran"])
def test_a_forked_child_computes_alone(before):
    # OpenMP's threads do not survive a fork: asking for them in the child would wait forever
    code = f"""
import os, torch
from decodekit import native
torch.set_num_threads(2)
x, w = torch.randn(4, 300), torch.randn(520, 300)
want = torch.nn.functional.linear(x, w)
{before}  # the parent's OpenMP threads have run
pid = os.fork()
if pid == 0:
    ok = all(torch.allclose(native.linear(x, w, None), want, atol=1e-4) for _ in range(5))
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "0"


@built
@pytest.mark.parametrize("name", ["gqa, head dim 8", "qwen3 (q/k norms)", "gpt2, head dim 16"])
def test_free_rows_left_out_of_a_step_are_as_the_pytorch_step_leaves_them(name, native_calls):
    """A pool's free rows (``idle``): the kernel computes them on placeholder ids, then gives
    them what the packed PyTorch pass does (zero logits, zero keys and values); the other
    rows' logits equal the PyTorch step's at every step, as do the caches."""
    model = MODELS[name]()
    fast, plain = HFLanguageModel(model), HFLanguageModel(model)
    plain._step.native = None
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, tm.VOCAB, (n,), generator=generator).tolist() for n in (6, 11, 4, 8)]
    states = [m.start(prompts, 16) for m in (fast, plain)]
    for step in range(12):
        idle = torch.tensor([step % 4, (step + 2) % 4]) if step % 3 else None
        tokens = torch.randint(3, tm.VOCAB, (4,), generator=generator)
        if idle is not None:
            tokens[idle] = -1  # never read: the kernel must not look them up
        for m, state in zip((fast, plain), states):
            m.advance(state, None, tokens, idle=idle)
        busy = torch.ones(4, dtype=torch.bool)
        if idle is not None:
            busy[idle] = False
            assert not states[0].logits[~busy].any()
        torch.testing.assert_close(states[0].logits[busy], states[1].logits[busy], atol=5e-5, rtol=1e-5)
    for a, b in zip(states[0].extra["cache"].layers, states[1].extra["cache"].layers):
        torch.testing.assert_close(a.keys, b.keys, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=5e-5, rtol=1e-5)
    assert native_calls == [4] * 12
