"""Work the engine leaves out because nobody reads it, on the embedded model (1 torch thread):

1. a one-token step of 64 rows of which some are a pool's free slots (``idle``: no
   projections, MLP or output head for them) against the same step computing every row;
2. the prefill of prompts of mixed lengths with the left padding skipped, against the same
   prefill computing the padding (the lean step without the part's active tokens) and the
   same number of real tokens in prompts of one length (no padding at all);
3. the sampled rows' decision: ``draw_rows`` (no nucleus for the rows whose race winner top-p
   keeps) against ``race(warp_rows(...))`` on the model's own logits, 32 rows with the
   temperatures and top-p values of ``bench/bench_server.py``; the tokens are compared.

    python bench/bench_skips.py
    python bench/bench_skips.py --repeats 11

Prints milliseconds (median of ``--repeats`` timings) and ratios (< 1: less time). Nothing is
asserted; the tests check that the results are the same.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from decodekit.logits.draw import draw_rows
from decodekit.logits.warpers import warp_rows
from decodekit.model.hf import HFLanguageModel
from decodekit.models import embedded_model_path
from decodekit.search.base import race

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_head import per_call  # noqa: E402

CODE = [
    "def fibonacci(n):\n    if n < 2:\n        return n", "import os\n\n\ndef list_files(path):\n    return [",
    "class Stack:\n    def __init__(self):\n        self.items = []", "def read_json(path):\n    with open(path) as f:",
    "# parse the arguments\nimport argparse\nparser = argparse.", "def quicksort(items):\n    if len(items) <= 1:",
    "for i in range(10):\n    print(i, i * i)", "def merge(a, b):\n    \"\"\"Merge two sorted lists.\"\"\"\n    out = []",
]


def timed(fn, repeats: int, calls: int = 1) -> float:
    """Milliseconds per call: ``bench_head.per_call``'s median of ``repeats`` timings."""
    return per_call(fn, calls, repeats) / 1e3


def step_ms(model, prompts, idle) -> float:
    """ms per one-token step of ``prompts``' rows (32 steps), ``idle`` rows left out (None: all)."""
    state = model.start(prompts, 40)
    token = state.logits.argmax(-1)
    start = time.perf_counter()
    for _ in range(32):
        model.advance(state, None, token, idle=idle)
    return 1e3 * (time.perf_counter() - start) / 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = HFLanguageModel(AutoModelForCausalLM.from_pretrained(str(embedded_model_path("stdlib-code"))).eval())
    prompts = [[5 + i % 50] * (8 + i % 9) for i in range(64)]

    print("1. one-token step, 64 rows (32 steps from a prefill of 8-16 tokens; the idle counts alternate)\n")
    print("| idle rows | ms / step | ratio to none idle |")
    print("|---:|---:|---:|")
    counts = (0, 4, 8, 16, 32)
    times = {k: [] for k in counts}
    step_ms(model, prompts, None)  # warm-up
    for _ in range(args.repeats):  # the counts alternate, so the machine's drift hits them alike
        for k in counts:
            times[k].append(step_ms(model, prompts, torch.arange(k) * 2 if k else None))
    full = statistics.median(times[0])
    for k in counts:
        ms = statistics.median(times[k])
        print(f"| {k} | {ms:.2f} | {ms / full:.2f} |")

    print("\n2. prefill of 8 prompts\n")
    mixed = [[7 + i] * n for i, n in enumerate([3, 5, 8, 10, 12, 14, 16, 28])]  # 96 real tokens
    even = [[7 + i] * 12 for i in range(8)]  # 96 real tokens, no padding
    @torch.inference_mode()
    def lean_prefill(prompts, skip_padding: bool):
        ids, positions, prompt_mask, _, cache = model._prefill_inputs(prompts, 8)
        part = model._prefill_part(ids, positions, prompt_mask, cache)
        return model._project(model._step.parts([part if skip_padding else part[:5]])[0][:, -1])

    padded = timed(lambda: lean_prefill(mixed, False), args.repeats, 20)
    packed = timed(lambda: lean_prefill(mixed, True), args.repeats, 20)
    plain = timed(lambda: lean_prefill(even, True), args.repeats, 20)
    print("| prompts | tokens computed | ms |")
    print("|---|---:|---:|")
    print(f"| lengths 3-28, padding computed | {8 * 28} | {padded:.2f} |")
    print(f"| lengths 3-28, padding skipped | 96 | {packed:.2f} |")
    print(f"| all 12 (no padding) | 96 | {plain:.2f} |")
    print(f"\nskipped / computed: {packed / padded:.2f}; skipped / no padding: {packed / plain:.2f}")

    print("\n3. deciding 32 sampled rows (temperature 0.7/0.9/1.0 x top-p 0.9/0.95/1.0)\n")
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path("stdlib-code")))
    ids = [tokenizer(text)["input_ids"] for text in CODE]
    state = model.start([ids[i % len(ids)][: 4 + i // len(ids)] for i in range(32)], 8)  # real next-token distributions
    logits = state.logits
    rows = logits.shape[0]
    temperature = torch.tensor([0.7, 0.9, 1.0])[torch.arange(rows) % 3]
    top_p = torch.tensor([0.9, 0.95, 1.0])[(torch.arange(rows) // 3) % 3]
    settings = (temperature, torch.zeros(rows, dtype=torch.long), top_p, torch.zeros(rows), torch.ones(rows))
    draws = [torch.rand(rows) for _ in range(50)]
    same = all(torch.equal(draw_rows(logits, settings, u), race(warp_rows(logits, *settings), u)) for u in draws)
    u = draws[0]
    full_ms = timed(lambda: race(warp_rows(logits, *settings), u), args.repeats, 20)
    draw_ms = timed(lambda: draw_rows(logits, settings, u), args.repeats, 20)
    print("| decision | ms |")
    print("|---|---:|")
    print(f"| race(warp_rows(...)) | {full_ms:.2f} |")
    print(f"| draw_rows | {draw_ms:.2f} |")
    print(f"\ndraw_rows / full: {draw_ms / full_ms:.2f}; same tokens on 50 draws: {same}")


if __name__ == "__main__":
    main()
