"""Continuous batching: many concurrent requests through one engine vs the same requests
decoded one after another.

    python bench/bench_serving.py                          # embedded model, greedy
    python bench/bench_serving.py --concurrency 1 8 32 64 --new-tokens 128
    python bench/bench_serving.py --strategy sample        # seeded sampling, one seed per request
    python bench/bench_serving.py --strategy suffix        # speculative (SuffixDecoding) greedy
    python bench/bench_serving.py --strategy mixed         # half plain greedy, half suffix greedy
    python bench/bench_serving.py --strategy beam          # beam search, 4 beams
    python bench/bench_serving.py --strategy diverse       # Diverse Beam Search, 4 beams in 2 groups

For each concurrency C, C requests (distinct code prompts, ``--new-tokens`` new tokens each, EOS
suppressed so that every request decodes the same number of tokens, except with ``suffix``:
a minimum length is a processor, and speculative requests join one running state only without
processors) arrive at random times
within the first ``--spread`` seconds (seeded). One loop submits each request when its
arrival time has come and runs engine steps; a request's time to first token is from its
arrival to its first streamed token. The serial baseline decodes the same requests one after
another, each alone. Each is run ``--repeats`` times, alternating; printed are the medians: tokens/s of both and their ratio, time-to-first-token p50/p99,
and the engine's overhead: the share of step time spent outside model calls, over the whole run
("overhead", admissions and retirements included) and over the steps where all C requests
were running ("at C rows"; "-" when they never all ran at once).
"same": how many of the C concurrent outputs equal the request decoded alone, in every run.
``mixed`` (every other request speculative) also runs the engine with each speculative run's
verification in a forward of its own ("apart": ``Engine.fuse_verification = False``) instead of
as a part of the plain rows' forward, alternating with the default, and prints its tokens/s.
``beam`` (beam search, 4 beams, the best hypothesis compared) and ``diverse`` (Diverse Beam
Search, 4 beams in 2 groups, Hamming diversity) also run the engine with each
request's beam search a group of its own ("apart": ``Engine.pool_beams = False``) instead of
one pool for every beam search in flight, alternating, and prints its tokens/s.
Greedy outputs are equal; seeded sampled ones can differ after many tokens, because a row's
logits are not bit-identical alone and in a batch (see the README's "Determinism").
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

import decodekit
from decodekit.engine import Engine, Request

PROMPTS = [
    "def fibonacci(n):", "class Stack:", "import os\n\ndef main():", "def read_config(path):",
    "for i in range(10):", "def parse_args():", "class Node:\n    def __init__(self, value):",
    "def merge_sort(items):", "with open(path) as f:", "def __repr__(self):", "try:\n    import json",
    "def add(a, b):", "if __name__ == '__main__':", "def walk(tree):", "class Config(dict):",
    "def split_lines(text):",
]


def make_requests(decoder, count: int, strategies: list, new_tokens: int) -> list[Request]:
    requests = []
    for i in range(count):
        strategy = strategies[i % len(strategies)]
        speculative = getattr(strategy, "speculative", None) is not None
        options = decodekit.DecodeOptions(max_new_tokens=new_tokens, min_new_tokens=0 if speculative else new_tokens)
        requests.append(Request(decoder.encode(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS))), strategy, options, seed=i, stream=True))
    return requests


def serial(model, requests: list[Request]) -> tuple[float, list[list[int]]]:
    engine = Engine(model)
    began, outputs = time.perf_counter(), []
    for request in requests:
        (handle,) = engine.submit([_copy(request)])
        outputs.append(handle.result().hypotheses[0].token_ids)
    return time.perf_counter() - began, outputs


def _copy(request: Request) -> Request:
    return Request(request.prompt, request.strategy, request.options, seed=request.seed, stream=request.stream)


def concurrent(model, requests: list[Request], spread: float, seed: int, fuse: bool = True, pool_beams: bool = True) -> dict:
    engine = Engine(model, max_rows=1024)
    engine.trace = []
    engine.fuse_verification = fuse
    engine.pool_beams = pool_beams
    rng = random.Random(seed)
    arrivals = sorted(rng.uniform(0, spread) for _ in requests)
    handles, first_token, submitted = [], {}, {}
    began = time.perf_counter()
    queue = list(zip(arrivals, requests))
    while queue or any(not h.done for h in handles):
        now = time.perf_counter() - began
        while queue and queue[0][0] <= now:
            arrival, request = queue.pop(0)
            (handle,) = engine.submit([_copy(request)])
            handles.append(handle)
            submitted[handle.id] = began + arrival
        if not engine.step():
            time.sleep(0.0005)
            continue
        stamp = time.perf_counter()
        for handle in handles:
            if handle.id not in first_token and (handle._events or handle.done):
                first_token[handle.id] = stamp - submitted[handle.id]
    wall = time.perf_counter() - began - arrivals[0]  # from the first arrival
    ttft = sorted(first_token.values())
    outputs = [h.result().hypotheses[0].token_ids for h in handles]
    overhead = 1 - engine.forward_seconds / max(engine.step_seconds, 1e-9)
    # steady state: steps with every request running (no admission, no retirement)
    width = getattr(requests[0].strategy, "num_beams", 1)
    full = [(s, m) for rows, s, m in engine.trace if rows == width * len(requests)]
    steady = 1 - sum(m for _, m in full) / max(sum(s for s, _ in full), 1e-9) if full else float("nan")
    return dict(wall=wall, outputs=outputs, ttft=ttft, overhead=overhead, steady=steady, steps=engine.steps)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stdlib-code")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--strategy", choices=["greedy", "sample", "suffix", "mixed", "beam", "diverse"], default="greedy")
    parser.add_argument("--spread", type=float, default=0.5, help="arrivals within this many seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the medians are printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder = decodekit.load(args.model)
    suffix = decodekit.Greedy(speculative=decodekit.Speculative("suffix"))
    strategies = {
        "greedy": [decodekit.Greedy()],
        "sample": [decodekit.Sampling(temperature=0.8, top_p=0.95)],
        "suffix": [suffix],
        "mixed": [decodekit.Greedy(), suffix],
        "beam": [decodekit.BeamSearch(num_beams=4)],
        "diverse": [decodekit.DiverseBeamSearch(num_beams=4, num_groups=2)],
    }[args.strategy]
    beams = args.strategy in ("beam", "diverse")
    mixed = args.strategy == "mixed" or beams
    print(f"model {args.model}, {args.strategy}, {args.new_tokens} new tokens per request, "
          f"arrivals within {args.spread} s, {torch.get_num_threads()} threads\n")
    print("| concurrent | serial tok/s | engine tok/s | ratio | TTFT p50 (ms) | TTFT p99 (ms) | overhead | at C rows | same |" + (" apart tok/s |" if mixed else ""))
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if mixed else ""))
    for count in args.concurrency:
        requests = make_requests(decoder, count, strategies, args.new_tokens)
        serial_walls, runs, apart = [], [], []
        for _ in range(args.repeats):  # alternating, so slow phases of a shared machine hit both
            serial_wall, serial_out = serial(decoder.model, requests)
            serial_walls.append(serial_wall)
            runs.append(concurrent(decoder.model, requests, args.spread, args.seed))
            if mixed:
                apart.append(concurrent(decoder.model, requests, args.spread, args.seed, fuse=beams, pool_beams=not beams))
        run = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
        tokens = sum(len(o) for o in serial_out)
        ours, base = tokens / run["wall"], tokens / statistics.median(serial_walls)
        same = min(sum(a == b for a, b in zip(r["outputs"], serial_out)) for r in runs)  # in every run
        p50, p99 = percentile(run["ttft"], 0.5) * 1e3, percentile(run["ttft"], 0.99) * 1e3
        print(f"| {count} | {base:.0f} | {ours:.0f} | {ours / base:.2f}x | {p50:.0f} | {p99:.0f} | {run['overhead']:.0%} | {'-' if run['steady'] != run['steady'] else format(run['steady'], '.0%')} | {same}/{count} |"
              + (f" {tokens / statistics.median(r['wall'] for r in apart):.0f} |" if mixed else ""))


if __name__ == "__main__":
    main()
