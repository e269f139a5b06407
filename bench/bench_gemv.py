"""How fast the CPU streams a model's weights through a matrix product, against how fast it
streams memory at all: the floor of a one-row decoding step.

    python bench/bench_gemv.py                 # 1 thread, the embedded model's shapes
    python bench/bench_gemv.py --threads 2
    python bench/bench_gemv.py --rows 1 2 3 4 5 6 7 8   # the row counts of speculative blocks

A one-token step of a small model reads every weight once (``rows`` = 1): it is bound by how
fast the weights come from memory, not by arithmetic. This bench times, for the embedded
model's projection shapes (every layer's q, k, v, o, gate, up, down and the output layer, each
a distinct tensor so nothing stays in cache), a chain of products ``x @ W.T`` through
``F.linear`` (MKL here), from ``(in, out)`` copies of the weights, through oneDNN's ``_linear_pointwise`` (plain and with weights packed
for it) and through decodekit's own kernel (:mod:`decodekit.native`, where built; up to 32 rows), against a plain sum over a buffer of the same size (the memory's streaming rate).
Prints GB/s of weights per second and each form's time per chain, for 1, 8 and 32 rows (``--rows``). Nothing
is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from decodekit import native
from decodekit.models import embedded_model_path


def shapes() -> list[tuple[int, int]]:
    config = json.loads((embedded_model_path("stdlib-code") / "config.json").read_text())
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head, config["num_key_value_heads"] * head
    layer = [(q, d), (kv, d), (kv, d), (d, q), (ff, d), (ff, d), (d, ff)]
    return layer * layers + [(config["vocab_size"], d)]


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    weights = [torch.randn(n, k) for n, k in shapes()]
    total = sum(w.numel() * 4 for w in weights)
    buffer = torch.randn(total // 4)
    stream = timed(lambda: buffer.sum(), args.repeats)
    print(f"{args.threads} thread(s); {len(weights)} weights, {total / 1e6:.1f} MB (the embedded model's projections)\n")
    print(f"sum over {total / 1e6:.1f} MB: {1e3 * stream:.2f} ms, {total / stream / 1e9:.1f} GB/s\n")
    print("| rows | form | ms per chain | GB/s of weights | vs sum |")
    print("|---:|---|---:|---:|---:|")
    for rows in args.rows:  # the kernel serves up to decodekit.native.ROWS
        inputs = {k: torch.randn(rows, k) for k in {w.shape[1] for w in weights}}
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
        def mkl(inputs=inputs):
            return [F.linear(inputs[w.shape[1]], w) for w in weights]

        def onednn(inputs=inputs, tensors=weights):
            return [torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], t, None, "none", [], "") for w, t in zip(weights, tensors)]

        transposed = [w.t().contiguous() for w in weights]

        def in_out(inputs=inputs, transposed=transposed):  # the (in, out) layout of decodekit.model.layout
            return [inputs[t.shape[0]] @ t for t in transposed]

        def kernel(inputs=inputs):
            return [native.linear(inputs[w.shape[1]], w, None) for w in weights]

        forms = {"F.linear (MKL)": mkl, "(in, out) copy, x @ W": in_out, "oneDNN": onednn,
                 "oneDNN, packed": lambda inputs=inputs, packed=packed: onednn(inputs, packed)}
        if native.available() and rows <= native.ROWS:
            forms["decodekit kernel"] = kernel
        for name, fn in forms.items():
            seconds = timed(fn, args.repeats)
            print(f"| {rows} | {name} | {1e3 * seconds:.2f} | {total / seconds / 1e9:.1f} | {seconds / stream:.2f}x |")


if __name__ == "__main__":
    main()
