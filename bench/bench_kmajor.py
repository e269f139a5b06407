"""Projections from K-major weight copies (``decodekit/model/lean.py: KMajor``) against
``F.linear`` with the model's ``(out, in)`` weights, 1 torch thread:

1. one product per shape (the embedded model's and a 768-wide model's), for several row counts:
   microseconds per call with the weights cycled through more memory than the cache holds (as
   in a step, where every layer's weights are read once), and whether both give the same bits;
2. the embedded model's lean one-token step at 8 and 64 rows with K-major products switched
   on and off, alternated: milliseconds per step and whether the logits are identical.

    python bench/bench_kmajor.py
    python bench/bench_kmajor.py --repeats 7

Prints tables and ratios (< 1: the K-major product takes less time). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from decodekit.model import lean
from decodekit.model.hf import HFLanguageModel
from decodekit.models import embedded_model_path

SHAPES = [(6144, 256), (704, 256), (256, 704), (256, 256), (128, 256), (3072, 768), (768, 3072), (32000, 768)]


def cycled(product, x: torch.Tensor, weights: list[torch.Tensor], calls: int = 40) -> float:
    """Microseconds per ``product(x, w)``, ``w`` cycling through ``weights``."""
    product(x, weights[0])
    start = time.perf_counter()
    for i in range(calls):
        product(x, weights[i % len(weights)])
    return 1e6 * (time.perf_counter() - start) / calls


def products(rows: list[int]) -> None:
    print("| weight (out x in) | rows | F.linear (us) | K-major (us) | ratio | same bits |")
    print("|---|---:|---:|---:|---:|---|")
    for out, inner in SHAPES:
        copies = max(2, int(48e6 // (out * inner * 4)) + 1)  # more than the 32 MB cache
        weights = [torch.randn(out, inner) for _ in range(copies)]
        kmajor = [w.t().contiguous() for w in weights]
        for m in rows:
            x = torch.randn(m, inner)
            a, b = cycled(F.linear, x, weights), cycled(torch.mm, x, kmajor)
            same = torch.equal(F.linear(x, weights[0]), torch.mm(x, kmajor[0]))
            print(f"| {out} x {inner} | {m} | {a:.0f} | {b:.0f} | {b / a:.2f} | {same} |")


def steps(repeats: int) -> None:
    model = HFLanguageModel(AutoModelForCausalLM.from_pretrained(str(embedded_model_path("stdlib-code"))).eval())
    print("\n| rows | F.linear (ms / step) | K-major (ms / step) | ratio | identical logits |")
    print("|---:|---:|---:|---:|---|")
    saved = lean.K_MAJOR_ROWS
    for rows in (8, 64):
        prompts = [[5 + i % 50] * (8 + i % 9) for i in range(rows)]
        times, logits = {"plain": [], "kmajor": []}, {}
        for _ in range(repeats):
            for name, threshold in (("plain", 1 << 30), ("kmajor", saved)):
                lean.K_MAJOR_ROWS = threshold
                state = model.start(prompts, 40)
                token = state.logits.argmax(-1)
                start = time.perf_counter()
                for _ in range(32):
                    model.advance(state, None, token)
                times[name].append(1e3 * (time.perf_counter() - start) / 32)
                logits[name] = state.logits
        lean.K_MAJOR_ROWS = saved
        a, b = statistics.median(times["plain"]), statistics.median(times["kmajor"])
        print(f"| {rows} | {a:.2f} | {b:.2f} | {b / a:.2f} | {torch.equal(logits['plain'], logits['kmajor'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    products(args.rows)
    steps(args.repeats)


if __name__ == "__main__":
    main()
