"""Proposal cost: SuffixDecoding's per-step work (append the step's accepted tokens to the
request's suffix tree, then propose) in microseconds per call, at context lengths 1k-32k
tokens of real stdlib code, next to one decoding forward of the embedded target, in the same
run. Prints a markdown table; asserts nothing.

    python bench/bench_suffix_tree.py
"""

from __future__ import annotations

import argparse
import time

import torch

import decodekit
from decodekit.models import held_out_files, stdlib_root
from decodekit.speculative import PromptLookupConfig, SpeculationContext, SuffixConfig
from decodekit.speculative.ngram import PromptLookupProposer
from decodekit.speculative.suffix import SuffixTreeProposer


def corpus_tokens(tokenizer, needed: int) -> list[int]:
    """Held-out files first, then more of the stdlib, until ``needed`` tokens."""
    root = stdlib_root()
    paths = [root / p for p in held_out_files()] + sorted(root.glob("*.py"))
    tokens: list[int] = []
    for path in paths:
        tokens += tokenizer(path.read_text(encoding="utf-8", errors="replace"))["input_ids"]
        if len(tokens) >= needed:
            break
    return tokens


def proposal_cost(
    proposer, tokens: list[int], length: int, calls: int, step: int
) -> tuple[float, float]:
    """(seconds to take in the first ``length`` tokens, microseconds per update + propose)."""
    start = time.perf_counter()
    proposer.begin([tokens[:length]], None, None)
    sequence = tokens[:length]
    proposer.propose(SpeculationContext([0], [sequence], [32]))  # takes in the context
    build = time.perf_counter() - start
    cursor = length
    start = time.perf_counter()
    for _ in range(calls):
        sequence.extend(tokens[cursor : cursor + step])  # this step's accepted tokens
        cursor += step
        proposer.propose(SpeculationContext([0], [sequence], [32]))
    return build, 1e6 * (time.perf_counter() - start) / calls


def forward_cost(decoder, tokens: list[int], length: int, steps: int = 16) -> float:
    """Microseconds of one decoding forward (one new token) at a cache of ``length`` tokens."""
    model = decoder.model
    state = model.start([tokens[:length]], steps + 2)
    model.advance(state, None, torch.tensor([tokens[length]]))
    start = time.perf_counter()
    for i in range(steps):
        model.advance(state, None, torch.tensor([tokens[length + 1 + i]]))
    return 1e6 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768]
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--step", type=int, default=4, help="tokens accepted per call")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder = decodekit.load("stdlib-code")
    tokens = corpus_tokens(decoder.tokenizer, max(args.lengths) + args.calls * args.step + 64)
    longest_forward = decoder.model.max_length - 32
    print(
        f"threads={args.threads}; forward = one decode step of stdlib-code (its context is at most "
        f"{decoder.model.max_length} tokens, so longer contexts use a {longest_forward}-token cache)\n"
    )
    print(
        "| context | suffix build (s) | suffix update+propose (µs) | ngram update+propose (µs) "
        "| target forward (µs) | suffix / forward |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    forwards: dict[int, float] = {}
    for length in args.lengths:
        build, suffix_us = proposal_cost(
            SuffixTreeProposer(SuffixConfig()), tokens, length, args.calls, args.step
        )
        _, ngram_us = proposal_cost(
            PromptLookupProposer(PromptLookupConfig()), tokens, length, args.calls, args.step
        )
        at = min(length, longest_forward)
        if at not in forwards:
            forwards[at] = forward_cost(decoder, tokens, at)
        ratio = suffix_us / forwards[at]
        print(
            f"| {length} | {build:.2f} | {suffix_us:.0f} | {ngram_us:.0f} | {forwards[at]:.0f} "
            f"| {100 * ratio:.1f}% {'(<= 3%)' if ratio <= 0.03 else '(> 3%)'} |"
        )


if __name__ == "__main__":
    main()
