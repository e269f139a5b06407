"""Decoding objectives side by side on the embedded model and held-out standard-library code.

Each prompt is a line of a held-out file (``decodekit.models.held_out_files()``) with the ten
lines before it as its context; every method continues it for ``--max-new-tokens`` tokens.
Per method, averaged over prompts: distinct-2 and self-BLEU over its outputs (methods with
several outputs), the repetition rate (repeated 4-grams within an output), the mean per-token
log-prob of its outputs under the model *given the context* (the same yardstick for every
method, from ``Decoder.score``) and the time per generated token. One run, one thread.

    python bench/bench_objectives.py --prompts 24
"""

from __future__ import annotations

import argparse
import time

import torch

import decodekit
from decodekit import BeamSearch, ContextAwareDecoding, Greedy, Sampling, StochasticBeamSearch
from decodekit.metrics.diversity import self_bleu
from decodekit.models import held_out_files, stdlib_root


def prompts(count: int, seed: int) -> list[tuple[str, str]]:
    """``(context, line)`` pairs: a non-blank line of a held-out file and the lines before it."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    files = held_out_files()
    while len(out) < count:
        path = stdlib_root() / files[int(torch.randint(len(files), (1,), generator=rng))]
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        if len(lines) < 20:
            continue
        at = int(torch.randint(10, len(lines) - 1, (1,), generator=rng))
        line = lines[at].rstrip("\n")
        if line.strip():
            out.append(("".join(lines[at - 10 : at]), line))
    return out


def repetition(ids: list[int], n: int = 4) -> float:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct2(texts: list[list[int]]) -> float:
    grams = [tuple(t[i : i + 2]) for t in texts for i in range(len(t) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    decoder = decodekit.load()
    pairs = prompts(args.prompts, args.seed)
    methods = {
        "greedy": lambda ctx: Greedy(),
        "beam (4)": lambda ctx: BeamSearch(num_beams=4, num_return_sequences=4),
        "sampling (4)": lambda ctx: Sampling(n=4, temperature=0.8, top_p=0.95, seed=args.seed),
        "stochastic beam (4)": lambda ctx: StochasticBeamSearch(num_beams=4, seed=args.seed),
        "CAD alpha=0.5": lambda ctx: ContextAwareDecoding(context=ctx, alpha=0.5),
        "CAD alpha=1.0": lambda ctx: ContextAwareDecoding(context=ctx, alpha=1.0),
    }
    print(f"{len(pairs)} held-out prompts, embedded model, {args.max_new_tokens} new tokens, seed {args.seed}\n")
    print("| method | outputs | distinct-2 | self-BLEU | repeated 4-grams | mean log-prob / token (given context) | ms / token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, make in methods.items():
        d2, sb, rep, lp, tokens, seconds, outputs = [], [], [], [], 0, 0.0, 0
        for context, line in pairs:
            config = make(context)
            prompt = line if isinstance(config, ContextAwareDecoding) else context + line
            began = time.perf_counter()
            result = decoder.generate(prompt, config, max_new_tokens=args.max_new_tokens)
            seconds += time.perf_counter() - began
            seqs = [s for s in result.sequences if s.token_ids]
            outputs += len(seqs)
            tokens += sum(len(s.token_ids) for s in seqs)
            if len(seqs) > 1:
                d2.append(distinct2([s.token_ids for s in seqs]))
                sb.append(self_bleu([s.text for s in seqs]))
            rep.extend(repetition(s.token_ids) for s in seqs)
            scored = decoder.score([context + line] * len(seqs), [s.token_ids for s in seqs])
            lp.extend(x.logprob / len(x.token_ids) for x in scored)
        mean = lambda xs: f"{sum(xs) / len(xs):.3f}" if xs else "–"  # noqa: E731
        print(f"| {name} | {outputs / len(pairs):.1f} | {mean(d2)} | {mean(sb)} | {mean(rep)} | {mean(lp)} | {1000 * seconds / max(tokens, 1):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
