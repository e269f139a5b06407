"""How often constrained decoding finishes: the share of real-world JSON Schemas for which
greedy, beam search and Diverse Beam Search end with EOS (a complete, valid instance) within
the token budget, on the embedded model.

    python bench/bench_constrained_finish.py --max-new-tokens 96

The schemas are ``tests/fixtures/schemas/real_world.json`` (60); the prompt is the same for
all. One run, one thread; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import decodekit
from decodekit import BeamSearch, DiverseBeamSearch
from decodekit.constraints import JsonSchema

SCHEMAS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "schemas" / "real_world.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--prompt", default="Output JSON:\n")
    args = parser.parse_args()
    torch.set_num_threads(1)
    decoder = decodekit.load()
    schemas = json.loads(SCHEMAS.read_text())
    strategies = {"greedy": None, "beam (4)": BeamSearch(num_beams=4), "DBS (4 beams, 2 groups)": DiverseBeamSearch(num_beams=4, num_groups=2)}
    print(f"{len(schemas)} JSON Schemas, embedded model, {args.max_new_tokens} tokens, prompt {args.prompt!r}\n")
    print("| strategy | finished (EOS) | constraint | length | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, strategy in strategies.items():
        counts = {"eos": 0, "constraint": 0, "length": 0}
        began = time.perf_counter()
        for schema in schemas:
            result = decoder.generate(args.prompt, strategy, constraint=JsonSchema(schema), max_new_tokens=args.max_new_tokens)
            reason = result.sequences[0].finish_reason if result.sequences else "constraint"
            counts[reason if reason in counts else "constraint"] += 1
        print(f"| {name} | {counts['eos']}/{len(schemas)} | {counts['constraint']} | {counts['length']} | {time.perf_counter() - began:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
