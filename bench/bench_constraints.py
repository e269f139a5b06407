"""Cost of constrained decoding: mask time per token and per-step overhead vs unconstrained.

    python bench/bench_constraints.py                       # tiny random Llama + embedded model
    python bench/bench_constraints.py --models tiny --repeats 5

For each (model, constraint, strategy) it decodes the same prompt with and without the
constraint. Unconstrained runs get an EOS id that never wins, so they run the whole budget;
per-step time is wall time / steps taken. ``mask us/row`` is the time spent inside the
constraint processor (masking the scores, then following the rows: fork, advance) per step,
divided by the rows it served. ``overhead`` is the constrained per-step time over the
unconstrained one, minus one. The tiny model (1 layer, width 32) has a nearly free forward, so
its overhead is the worst case; the embedded model shows a realistic one. Prints a markdown
table; timings are medians over ``--repeats``. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import decodekit  # noqa: E402
from decodekit.constraints import Catalog, CorpusSubstring, JsonSchema, Regex, constraint_processor  # noqa: E402
from decodekit.engine import Decoding  # noqa: E402
from decodekit.models import stdlib_root  # noqa: E402
from decodekit.options import DecodeOptions  # noqa: E402


class TimedProcessor:
    """Wraps a constraint processor and adds up the time spent in it."""

    changes_argmax = True

    def __init__(self, inner):
        self.inner, self.seconds, self.row_steps = inner, 0.0, 0

    def reset(self, rows: int) -> None:
        self.inner.reset(rows)

    def __call__(self, token_ids, scores):
        start = time.perf_counter()
        out = self.inner(token_ids, scores)
        self.seconds += time.perf_counter() - start
        self.row_steps += scores.shape[0]
        return out

    def advance(self, parents, tokens) -> None:
        start = time.perf_counter()
        self.inner.advance(parents, tokens)
        self.seconds += time.perf_counter() - start


def run(decoder, prompt: str, strategy, max_new_tokens: int, spec=None) -> tuple[float, int, float]:
    """(seconds per step, steps, mask microseconds per row-step) of one decoding."""
    model, ids = decoder.model, [decoder.encode(prompt)]
    processors = []
    if spec is None:
        unused = model.vocab_size - 1  # an EOS that never wins: run the whole budget
        options = DecodeOptions(max_new_tokens=max_new_tokens, eos_token_ids=(unused,))
    else:
        options = DecodeOptions(max_new_tokens=max_new_tokens)
        inner = constraint_processor(spec, strategy.name, decoder.tokenizer, model.vocab_size, model.eos_token_ids, max_new_tokens)
        processors = [TimedProcessor(inner)]
    decoding = Decoding(model, ids, strategy, options, processors=processors)
    start = time.perf_counter()
    steps = sum(1 for _ in decoding)
    elapsed = time.perf_counter() - start
    mask = processors[0].seconds / max(1, processors[0].row_steps) * 1e6 if processors else 0.0
    return elapsed / steps, steps, mask


def cases(tokenizer) -> list[tuple[str, object, list]]:
    schemas = json.loads((Path(__file__).resolve().parents[1] / "tests/fixtures/schemas/real_world.json").read_text())
    order = next(s["schema"] for s in schemas if s["name"] == "order")
    generator = torch.Generator().manual_seed(0)
    vocab = len(tokenizer)

    def token_catalog(size: int) -> list[list[int]]:
        lengths = torch.randint(8, 17, (size,), generator=generator).tolist()
        return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]

    corpus = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted((stdlib_root() / "json").glob("*.py")))
    beam8 = decodekit.BeamSearch(num_beams=8, num_return_sequences=8)
    greedy = decodekit.Greedy()
    return [
        ("json_schema (order)", JsonSchema(order), [greedy, decodekit.BeamSearch(num_beams=4)]),
        ("regex (semver)", Regex(r"[0-9]+\.[0-9]+\.[0-9]+"), [greedy]),
        ("catalog 10k", Catalog(token_catalog(10_000)), [greedy, beam8]),
        ("catalog 100k", Catalog(token_catalog(100_000)), [greedy, beam8]),
        (f"corpus ({len(tokenizer(corpus)['input_ids']) // 1000}k tokens)", CorpusSubstring(corpus), [beam8]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,stdlib-code", help="comma-separated: tiny, stdlib-code")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from constraint_models import tiny_llama, tokenizer

    tok = tokenizer()
    decoders = {"tiny": lambda: decodekit.load(tiny_llama(), tok), "stdlib-code": lambda: decodekit.load("stdlib-code")}
    start = time.perf_counter()
    all_cases = cases(tok)
    for name, spec, _ in all_cases:  # compile once, outside the timings (cached)
        compile_start = time.perf_counter()
        constraint_processor(spec, "greedy", tok, len(tok), (tok.eos_token_id,), None)
        print(f"compiled {name} in {time.perf_counter() - compile_start:.2f} s", file=sys.stderr)
    print(f"threads={args.threads} max_new_tokens={args.max_new_tokens} repeats={args.repeats} (medians)\n")
    print("| model | constraint | strategy | rows | steps | mask us/row | step ms constrained | step ms plain | overhead |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        decoder = decoders[model_name]()
        if decoder.model.vocab_size != len(tok):
            raise SystemExit(f"{model_name}: its logits do not cover the shared tokenizer")
        for name, spec, strategies in all_cases:
            for strategy in strategies:
                plain, constrained = [], []
                for _ in range(args.repeats):  # interleaved, so background load hits both alike
                    plain.append(run(decoder, "data = ", strategy, args.max_new_tokens))
                    constrained.append(run(decoder, "data = ", strategy, args.max_new_tokens, spec))
                plain_step = statistics.median(p[0] for p in plain)
                step = statistics.median(c[0] for c in constrained)
                mask = statistics.median(c[2] for c in constrained)
                steps = statistics.median(c[1] for c in constrained)
                rows = getattr(strategy, "num_beams", 1)
                label = strategy.name if rows == 1 else f"{strategy.name} {rows}"
                print(
                    f"| {model_name} | {name} | {label} | {rows} | {steps:.0f} | {mask:.0f} | "
                    f"{step * 1e3:.2f} | {plain_step * 1e3:.2f} | {step / plain_step - 1:+.0%} |",
                    flush=True,
                )
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
