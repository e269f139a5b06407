"""The few-row weight layout's effect on whole decoding calls (:mod:`decodekit.model.layout`).

    python bench/bench_layout.py                 # 1 thread, the embedded model
    python bench/bench_layout.py --threads 2

One process, one model: each round times the same calls with the lean step's ``(in, out)``
copies switched off and on, alternately, so that a busy moment of the machine falls on both;
prints the median seconds per call and the ratio (below 1: the copies are faster), and checks
that both give the same tokens. 64 new tokens, EOS ignored. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import decodekit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", default="stdlib-code")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder = decodekit.load(args.model)
    step = decoder.model._step
    if step is None or getattr(step, "head", None) is None:
        raise SystemExit(f"{args.model} has no lean step with the layout")
    options = dict(max_new_tokens=64, min_new_tokens=64)
    print(f"{args.model}, {args.threads} thread(s), median of {2 * args.rounds} calls each\n")
    print("| strategy | prompt | module weights (s) | (in, out) copies (s) | ratio | same tokens |")
    print("|---|---:|---:|---:|---:|---|")
    for length, strategy in ((32, decodekit.Greedy()), (512, decodekit.Greedy()), (32, decodekit.BeamSearch(num_beams=8))):
        prompt = [(i * 7) % 5000 + 10 for i in range(length)]
        times: dict[bool, list[float]] = {False: [], True: []}
        tokens: dict[bool, list[int]] = {}
        for _ in range(args.rounds):
            for copied in (False, True):
                projections = getattr(step, "projections", None)
                if projections is not None:
                    projections.copied = copied
                step.head.copied = copied
                tokens[copied] = decoder.generate(prompt, strategy, **options).best.token_ids  # warm
                for _ in range(2):
                    began = time.perf_counter()
                    decoder.generate(prompt, strategy, **options)
                    times[copied].append(time.perf_counter() - began)
        plain, copies = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {strategy.name} | {length} | {plain:.3f} | {copies:.3f} | {copies / plain:.2f} | {'yes' if tokens[False] == tokens[True] else 'no'} |")


if __name__ == "__main__":
    main()
