"""Where a greedy token's time goes: decodekit's kernel step, the output layer's product, and
everything else (the engine's per-step decision and bookkeeping, Python).

    python bench/bench_step_time.py               # the embedded model, 2 threads
    python bench/bench_step_time.py --threads 1

Greedy calls of 64 new tokens (EOS ignored) over a 32-token prompt, as ``bench_peers.py``
times them; the kernel step (:class:`decodekit.model.native_steps.NativeStep`) and the
kernel's products (:func:`decodekit.native.linear`, the output layer here) are timed by
wrapping them. Prints milliseconds per generated token, the median of ``--rounds`` rounds of
``--calls`` calls. Nothing is asserted; without the kernels it prints only the total.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import decodekit
from decodekit import native
from decodekit.model import native_steps
from decodekit.models import embedded_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder = decodekit.load(str(embedded_model_path("stdlib-code")))
    spent = {"step": 0.0, "products": 0.0}

    def timed(name, function):
        def wrapper(*a):
            began = time.perf_counter()
            try:
                return function(*a)
            finally:
                spent[name] += time.perf_counter() - began

        return wrapper

    native_steps.NativeStep.__call__ = timed("step", native_steps.NativeStep.__call__)
    native.linear = timed("products", native.linear)
    prompt, greedy = list(range(100, 132)), decodekit.Greedy()

    def call():
        decoder.generate(prompt, greedy, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

    call()  # warm-up
    rows = []
    for _ in range(args.rounds):
        spent.update(step=0.0, products=0.0)
        began = time.perf_counter()
        for _ in range(args.calls):
            call()
        total = time.perf_counter() - began
        tokens = args.calls * args.new_tokens
        rows.append((total / tokens, spent["step"] / tokens, spent["products"] / tokens))
    total, step, products = (statistics.median(r[i] for r in rows) * 1e3 for i in range(3))
    print(f"embedded stdlib-code, {args.threads} threads, greedy, prompt 32, {args.new_tokens} new tokens; ms per token, median of {args.rounds} rounds\n")
    print("| part | ms / token | share |")
    print("|---|---:|---:|")
    if native.available():
        print(f"| kernel step | {step:.3f} | {step / total:.0%} |")
        print(f"| kernel products (output layer) | {products:.3f} | {products / total:.0%} |")
        print(f"| everything else | {total - step - products:.3f} | {(total - step - products) / total:.0%} |")
    print(f"| total | {total:.3f} | 100% |")


if __name__ == "__main__":
    main()
