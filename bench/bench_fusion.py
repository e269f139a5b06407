"""Two ways to cut a one-row decoding step's kernel calls, timed against the lean step's own:

- one product for a layer's q, k and v projections (and one for its gate and up projections)
  instead of three (and two), each weight laid out ``(in, out)`` as the few-row layout does;
- ``torch.compile`` (inductor) of a layer's dense parts: the norm, projections and rotary
  before attention, the output projection, norm and gated MLP after it.

    python bench/bench_fusion.py            # the embedded model's first layer, 1 thread

Prints microseconds per layer for each form (median of rounds, the forms alternated) and the
ratio to the unfused eager form, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import decodekit


def timed(fn, calls: int) -> float:
    for _ in range(calls // 10):
        fn()
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = decodekit.load().model.model
    config, layer = model.config, model.model.layers[0]
    D, H, Hkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    d = config.head_dim
    eps, half = config.rms_norm_eps, d // 2
    attn, mlp = layer.self_attn, layer.mlp
    wq, wk, wv, wo = (m.weight.detach() for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
    wg, wu, wd = (m.weight.detach() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    n1, n2 = layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()
    t = {name: w.t().contiguous() for name, w in (("g", wg), ("u", wu), ("gu", torch.cat([wg, wu])), ("qkv", torch.cat([wq, wk, wv])))}
    x = torch.randn(1, D)
    out = torch.randn(1, H * d)
    cos, sin = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def rotate(v):
        return v * cos + torch.cat((-v[..., half:], v[..., :half]), -1) * sin

    def pre(h):  # as the lean step: three products, the widening ones (in, out)
        y = F.rms_norm(h, (D,), n1, eps)
        q, k, v = F.linear(y, wq).view(1, 1, H, d), F.linear(y, wk).view(1, 1, Hkv, d), F.linear(y, wv).view(1, 1, Hkv, d)
        return rotate(q), rotate(k), v

    def post(h):
        h = h + F.linear(out, wo)
        y = F.rms_norm(h, (D,), n2, eps)
        return h + F.linear(F.silu(y @ t["g"]) * (y @ t["u"]), wd)

    def pre_fused(h):
        y = F.rms_norm(h, (D,), n1, eps)
        q, k, v = (y @ t["qkv"]).split([H * d, Hkv * d, Hkv * d], -1)
        return rotate(q.view(1, 1, H, d)), rotate(k.view(1, 1, Hkv, d)), v.view(1, 1, Hkv, d)

    def post_fused(h):
        h = h + F.linear(out, wo)
        y = F.rms_norm(h, (D,), n2, eps)
        g, u = (y @ t["gu"]).split([wg.shape[0], wu.shape[0]], -1)
        return h + F.linear(F.silu(g) * u, wd)

    with torch.inference_mode():
        began = time.perf_counter()
        pre_c, post_c = torch.compile(pre, dynamic=False), torch.compile(post, dynamic=False)
        pre_c(x), post_c(x)
        compile_s = time.perf_counter() - began
        forms = {
            "eager (the lean step's)": (pre, post),
            "fused q/k/v and gate/up": (pre_fused, post_fused),
            "torch.compile (inductor)": (pre_c, post_c),
        }
        want = (pre(x), post(x))
        same = {name: all(torch.equal(a, b) for a, b in zip((*f(x),), want[0])) and torch.equal(g(x), want[1]) for name, (f, g) in forms.items()}
        times = {name: [] for name in forms}
        for _ in range(args.rounds):
            for name, (f, g) in forms.items():
                times[name].append(timed(lambda f=f, g=g: (f(x), g(x)), args.calls))
    base = statistics.median(times["eager (the lean step's)"])
    print(f"embedded model's layer 0 (d={D}, {H}/{Hkv} heads, MLP {wg.shape[0]}), one row, {args.threads} thread(s); compile took {compile_s:.1f} s\n")
    print("| form | us per layer | ratio | identical |")
    print("|---|---:|---:|---|")
    for name in forms:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.0f} | {median / base:.2f}x | {'yes' if same[name] else 'no'} |")


if __name__ == "__main__":
    main()
