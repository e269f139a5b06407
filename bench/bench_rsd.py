"""Recursive Speculative Decoding's draft tree against the draft model's chain.

The embedded target (stdlib-code) with its embedded draft (stdlib-code-draft), 4 drafted
tokens per step, on held-out standard-library prompts: tokens per target forward (the
prompt's first token excluded), wall time, and plain decoding's time in the same run. Trees
``(3, 2)`` and ``(4, 2, 2)`` give each node at depth d that many distinct children (sampled
without replacement, verified by recursive rejection sampling; greedy: the draft's top
tokens). One run, one thread.

    python bench/bench_rsd.py --prompts 8
"""

from __future__ import annotations

import argparse
import time

import torch

import decodekit
from decodekit import Greedy, Sampling
from decodekit.models import held_out_files, stdlib_root
from decodekit.speculative import DraftModelConfig, Speculative


def prompts(count: int) -> list[str]:
    """The first 6 lines of held-out files (at least 200 characters)."""
    out = []
    for name in held_out_files():
        text = (stdlib_root() / name).read_text(encoding="utf-8", errors="replace")
        if len(text) > 200:
            out.append("".join(text.splitlines(keepends=True)[:6]))
        if len(out) == count:
            break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = decodekit.load()
    draft = decodekit.load("stdlib-code-draft").model
    items = prompts(args.prompts)
    print(f"{len(items)} held-out prompts, {args.max_new_tokens} new tokens, draft stdlib-code-draft, 4 tokens per draft\n")
    print("| mode | draft | tokens / target forward | seconds | vs plain |")
    print("|---|---|---:|---:|---:|")
    modes = {"greedy": lambda s: Greedy(speculative=s), "sampling (T=1, seed 1)": lambda s: Sampling(temperature=1.0, seed=1, speculative=s)}
    for mode, make in modes.items():
        target.generate(items[0], make(None), max_new_tokens=4)  # warm-up
        began = time.perf_counter()
        target.generate(items, make(None), max_new_tokens=args.max_new_tokens)
        plain = time.perf_counter() - began
        print(f"| {mode} | none (plain) | 1.00 | {plain:.2f} | 1.00 |", flush=True)
        for name, branching in (("chain", ()), ("tree (3, 2)", (3, 2)), ("tree (4, 2, 2)", (4, 2, 2))):
            spec = Speculative("draft", DraftModelConfig(model=draft, num_tokens=4, branching=branching))
            began = time.perf_counter()
            results = target.generate(items, make(spec), max_new_tokens=args.max_new_tokens)
            seconds = time.perf_counter() - began
            generated = sum(r.stats.generated for r in results)
            forwards = sum(r.stats.target_forwards for r in results)
            print(f"| {mode} | {name} | {generated / forwards:.2f} | {seconds:.2f} | {plain / seconds:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
