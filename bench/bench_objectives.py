"""Decoding objectives side by side on the embedded model and held-out standard-library code.

Each prompt is a line of a held-out file (``decodekit.models.held_out_files()``) with the ten
lines before it as its context; every method continues it for ``--max-new-tokens`` tokens.
Per method, averaged over prompts: distinct-2 and self-BLEU over its outputs (methods with
several outputs), the repetition rate (repeated 4-grams within an output), the mean per-token
log-prob of its outputs under the model *given the context* (the same yardstick for every
method, from ``Decoder.score``) and the time per generated token. One run, one thread.

    python bench/bench_objectives.py --prompts 24

A second table measures what reading attention weights costs (GNMT coverage on an
encoder-decoder model).
"""

from __future__ import annotations

import argparse
import time

import torch

import decodekit
from decodekit import (
    BeamSearch,
    ContextAwareDecoding,
    Greedy,
    MomentumDecoding,
    Sampling,
    StochasticBeamSearch,
)
from decodekit.metrics.diversity import self_bleu
from decodekit.models import held_out_files, stdlib_root
from decodekit.scoring.rerank import Rescoring
from decodekit.testtime import OPERA, AdaDec, learn_threshold


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


def calibration_texts(count: int) -> list[str]:
    """Standard-library files outside the held-out split (AdaDec's threshold is learned there)."""
    held = set(held_out_files())
    root = stdlib_root()
    paths = sorted(p for p in root.rglob("*.py") if str(p.relative_to(root)) not in held)
    texts = [p.read_text(encoding="utf-8", errors="replace")[:2000] for p in paths]
    texts = [t for t in texts if len(t) > 200]
    return texts[:: max(1, len(texts) // count)][:count]


def distinct_chars(prompt: str, text: str) -> float:
    """A scorer for in-beam re-scoring: the fraction of distinct character 6-grams of the text
    (1 for text without repeats)."""
    grams = [text[i : i + 6] for i in range(len(text) - 5)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition(ids: list[int], n: int = 4) -> float:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct2(texts: list[list[int]]) -> float:
    grams = [tuple(t[i : i + 2]) for t in texts for i in range(len(t) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def coverage_cost(max_new_tokens: int, seed: int) -> None:
    """What reading cross-attention costs: beam search with and without GNMT's coverage penalty
    on a randomly initialised BART (6+6 layers, width 256, vocabulary 8000), 8 source prompts
    of 48 tokens, same run."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BartConfig(vocab_size=8000, d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=512)
    decoder = decodekit.load(transformers.BartForConditionalGeneration(config).eval())
    rng = torch.Generator().manual_seed(seed)
    sources = [torch.randint(4, 8000, (48,), generator=rng).tolist() for _ in range(8)]
    rows = []
    for name, beta in (("beam (4)", 0.0), ("beam (4) + coverage 0.2 (eager cross-attention)", 0.2)):
        config = BeamSearch(num_beams=4, coverage_penalty=beta, length_penalty_form="gnmt", length_penalty=0.2)
        decoder.generate(sources[0], config, max_new_tokens=4)  # warm-up
        began = time.perf_counter()
        results = decoder.generate(sources, config, max_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - began
        tokens = sum(len(r.sequences[0].token_ids) for r in results)
        rows.append((name, 1000 * seconds / max(tokens, 1)))
    print("\n| encoder-decoder (random BART 6+6 x 256) | ms / token |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    print(f"\ncoverage / plain: {rows[1][1] / rows[0][1]:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-coverage", action="store_true", help="leave out the encoder-decoder coverage cost table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    decoder = decodekit.load()
    pairs = prompts(args.prompts, args.seed)
    threshold = learn_threshold(decoder, calibration_texts(24)).threshold
    print(f"AdaDec threshold learned on 24 training-split files: {threshold:.3f} nats")
    methods = {
        "greedy": lambda ctx: Greedy(),
        "momentum (k=5, alpha=0.2)": lambda ctx: MomentumDecoding(),
        f"AdaDec (H*={threshold:.2f}, 3 candidates, lookahead 5)": lambda ctx: AdaDec(threshold=threshold),
        "OPERA (5 beams, 5 candidates)": lambda ctx: OPERA(),
        "beam (4) + re-scoring every 4 (distinct character 6-grams, w=0.5)": lambda ctx: BeamSearch(num_beams=4, num_return_sequences=4, rescore=Rescoring(distinct_chars, every=4, weight=0.5)),
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
            if isinstance(config, AdaDec | OPERA):
                best = decoder.search(prompt, config, max_new_tokens=args.max_new_tokens).best
                seqs = [best] if best.token_ids else []
            else:
                result = decoder.generate(prompt, config, max_new_tokens=args.max_new_tokens)
                seqs = [s for s in result.sequences if s.token_ids]
            seconds += time.perf_counter() - began
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
    if not args.skip_coverage:
        coverage_cost(args.max_new_tokens, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
