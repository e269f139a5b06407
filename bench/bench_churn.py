"""A steady stream of short requests through one engine, no HTTP: what a server's engine sees.

    python bench/bench_churn.py                 # 64 in flight, 20 s, embedded model
    python bench/bench_churn.py --live 32 --seconds 30

``--live`` requests are always in flight: half greedy, half sampled (temperature 0.9, top-p 0.95,
one seed each), 16-64 new tokens, short code prompts; each one that finishes is replaced at
once by a new one. The loop steps the engine for ``--seconds`` and prints generated tokens per
second, engine steps per second, and, over the steps, the mean rows of the running state and
its mean cache length (what every step's forward computes and attends over: rows that hold
no request and slots that hold no token cost as much as real ones). Reads the engine's
running state (``engine._partitions``) for the last two.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import decodekit

PROMPTS = ["def fibonacci(n):", "import os\n\n\ndef list_files(path):", "class Stack:\n    def __init__(self):",
           "def read_json(path):", "for i in range(10):", "def merge(a, b):"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stdlib-code")
    parser.add_argument("--live", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder = decodekit.load(args.model)
    rng = random.Random(args.seed)
    def new(i: int):
        options = {"max_new_tokens": rng.choice([16, 32, 48, 64])}
        strategy = decodekit.Sampling(temperature=0.9, top_p=0.95, seed=i) if i % 2 else decodekit.Greedy()
        return decoder.submit(rng.choice(PROMPTS), strategy, **options)[0]

    engine = decoder.engine
    live = [new(i) for i in range(args.live)]
    issued, tokens, steps, shapes = args.live, 0, 0, []
    began = time.perf_counter()
    while time.perf_counter() - began < args.seconds:
        engine.step()
        steps += 1
        # the running state(s) the next step's forward reads: rows, and the cache length
        for partition in engine._partitions:
            shapes.append((partition.state.rows, partition.state.extra.get("length", 0)))
        for j, pending in enumerate(live):
            if pending.done:
                tokens += len(pending.result().sequences[0].token_ids)
                live[j] = new(issued)
                issued += 1
    wall = time.perf_counter() - began
    print(f"model {args.model}, {args.live} requests in flight, {args.threads} threads, {wall:.1f} s\n")
    print("| tok/s | steps/s | rows per step | attended length per step |")
    print("|---:|---:|---:|---:|")
    rows = statistics.mean(r for r, _ in shapes) if shapes else float("nan")
    length = statistics.mean(n for _, n in shapes) if shapes else float("nan")
    print(f"| {tokens / wall:.0f} | {steps / wall:.1f} | {rows:.1f} | {length:.1f} |")


if __name__ == "__main__":
    main()
