"""The output projection for a few rows against a large vocabulary: ``F.linear(x, W)`` (what a
model's ``nn.Linear`` head runs) against the weight-first ``(W @ x.T).T`` decodekit uses on the
CPU for 16-32 rows (8-32 for heads of 8M+ entries) (``decodekit/model/head.py``).

    python bench/bench_head.py
    python bench/bench_head.py --vocab 6144 50257 --dim 256 --threads 2

Prints microseconds per call (median of ``--repeats`` timings of ``--calls`` calls each) and the
ratio weight-first / linear (< 1: weight-first is faster). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from decodekit.model import head as output_head


def per_call(fn, calls: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[6144, 16384, 50257])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"dim {args.dim}, torch threads {torch.get_num_threads()}, µs per call, median of {args.repeats}\n")
    print("| vocab | rows | F.linear (µs) | weight-first (µs) | ratio | decodekit uses weight-first |")
    print("|---:|---:|---:|---:|---:|:---:|")
    for vocab in args.vocab:
        head = torch.nn.Linear(args.dim, vocab, bias=False)
        used = head.weight.numel() >= output_head.MIN_ENTRIES  # what large_cpu_head checks of a model
        for rows in args.rows:
            x = torch.randn(rows, args.dim)
            with torch.inference_mode():
                plain = per_call(lambda x=x, head=head: F.linear(x, head.weight), args.calls, args.repeats)
                first = per_call(lambda x=x, head=head: output_head.weight_first_linear(head, x), args.calls, args.repeats)
            uses = "yes" if used and output_head.applies(head, rows) else "no"
            print(f"| {vocab} | {rows} | {plain:.0f} | {first:.0f} | {first / plain:.2f}x | {uses} |")


if __name__ == "__main__":
    main()
