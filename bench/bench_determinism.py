"""How often a seeded draw changes between a row decoded alone and the same row in a batch.

    python bench/bench_determinism.py
    python bench/bench_determinism.py --prompts 5 --steps 40 --draws 2000 --temperature 0.8

A row's logits are not bit-identical alone and in a batch: matrix products and attention round
differently with other rows and padding. This bench decodes ``--prompts`` code prompts greedily
with the embedded model, once all together and once each alone, and keeps both sets of
logits per step (the same tokens, so only the rounding differs). For every step it then draws
``--draws`` tokens from each pair of distributions with the same random numbers, by the two
samplers: inverting the CDF (``inverse_cdf``) and the Gumbel-max race that sampling uses
(``race``), and prints the share of draws whose token differs, and the logits' largest
difference. A different token is a seeded request that decodes differently among others.
"""

from __future__ import annotations

import argparse
import time

import torch

import decodekit
from decodekit.search.base import inverse_cdf, race

PROMPTS = [
    "def read_json(path):",
    "import os\n\ndef main():",
    "class Stack:\n    def __init__(self):",
    "x = 1",
    "for i in range(10):\n    print(i)",
    "def merge(a, b):\n    \"\"\"Merge two sorted lists.\"\"\"",
]


def logits_per_step(model, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    state = model.start(prompts, steps + 1)
    out = [state.logits.clone()]
    for _ in range(steps):
        model.advance(state, None, state.logits.argmax(-1))
        out.append(state.logits.clone())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stdlib-code")
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    decoder = decodekit.load(args.model)
    model = decoder.model
    prompts = [decoder.encode(p) for p in PROMPTS[: args.prompts]]
    generator = torch.Generator().manual_seed(args.seed)
    together = logits_per_step(model, prompts, args.steps)
    changed = {"inverse CDF": 0, "race": 0}
    drift, draws, began = 0.0, 0, time.perf_counter()
    for row, prompt in enumerate(prompts):
        alone = logits_per_step(model, [prompt], args.steps)
        for step in range(args.steps + 1):
            a = (alone[step][0] / args.temperature).expand(args.draws, -1).contiguous()
            b = (together[step][row] / args.temperature).expand(args.draws, -1).contiguous()
            drift = max(drift, float((a[0] - b[0]).abs().max()))
            u = torch.rand(args.draws, generator=generator)
            changed["inverse CDF"] += int((inverse_cdf(a.softmax(-1), u) != inverse_cdf(b.softmax(-1), u)).sum())
            changed["race"] += int((race(a, u) != race(b, u)).sum())
            draws += args.draws
    print(f"model {args.model}, {len(prompts)} prompts x {args.steps + 1} steps, {args.draws} draws each "
          f"({draws} in all), temperature {args.temperature}; largest logit difference alone vs batch {drift:.1e}; "
          f"{time.perf_counter() - began:.0f} s\n")
    print("| sampler | draws whose token differs alone vs in the batch | share |")
    print("|---|---:|---:|")
    for name, count in changed.items():
        print(f"| {name} | {count} | {count / draws:.1e} |")


if __name__ == "__main__":
    main()
