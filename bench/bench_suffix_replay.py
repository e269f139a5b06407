"""SuffixDecoding's suffix trees replayed on identical token streams: decodekit's against
ArcticInference's C++ ``SuffixDecodingCache``. Prints markdown tables; asserts nothing.

Streams are the embedded target's greedy outputs (computed once, then shared) on four
workloads built from the held-out stdlib files:

- **edit** and **open**: as in ``bench/bench_speculative.py`` (rename an identifier in a
  window; continue a file at a held-out ``def``);
- **short**: ``open`` with 32-token prompts;
- **agentic**: multi-turn sessions; each turn's prompt is the whole session so far (earlier
  prompts and outputs) plus a new rename instruction for the same window.

Each request is replayed as a speculative decoder sees it: propose from the context, accept the
longest draft path that agrees with the stream, append the accepted tokens and the target's
one, repeat. Requests run in order, so each tree's global cache holds the previous outputs.
Both libraries get the same settings (``--max-depth``, ``--max-spec-factor``,
``--min-token-prob``, 32 draft tokens at most, 256 cached outputs). Columns: target forwards per
generated token (prefill excluded; lower is better), mean accepted tokens per forward, and
microseconds of update + propose per step (building the prompt's tree included).

Memory: each tree over the same text (the first ``--memory-tokens`` tokens of the stdlib, as
one sequence, and as 64 separate outputs in the global cache), in bytes per stored token --
decodekit's ``SuffixTree.memory_bytes()`` (checked against tracemalloc in the tests) and
ArcticInference's ``estimate_memory()``.

    bash bench/build_arctic_suffix.sh          # once: ArcticInference's tree, CPU build
    python bench/bench_suffix_replay.py
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

import decodekit
from decodekit import Greedy
from decodekit.models import held_out_files, stdlib_root
from decodekit.speculative import SpeculationContext, SuffixConfig
from decodekit.speculative.suffix import SuffixTreeProposer
from decodekit.speculative.suffix_tree import SuffixTree

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_speculative import Task, edit_tasks, open_tasks  # noqa: E402

MAX_TOKENS = 32
CACHED = 256


def arctic_cache_class(path: pathlib.Path):
    if (path / "arctic_inference").is_dir():
        sys.path.insert(0, str(path))
    try:
        from arctic_inference.suffix_decoding import SuffixDecodingCache
    except ImportError:
        return None, None
    version = (path / "VERSION").read_text().strip() if (path / "VERSION").exists() else "?"
    return SuffixDecodingCache, version


def agentic_streams(decoder, sources: list[str], sessions: int, turns: int, budget: int) -> list[tuple[list[int], list[int]]]:
    """Multi-turn sessions: each turn asks for another rename of the same window, with every
    earlier turn (prompt and the model's output) in its prompt."""
    import keyword
    import re
    from collections import Counter

    from bench_speculative import _windows

    tokenizer, out = decoder.tokenizer, []
    for text in sources:
        windows = _windows(text, tokenizer, budget)
        if not windows:
            continue
        window = windows[0]
        names = [n for n, _ in Counter(n for n in re.findall(r"\b[a-z_][a-z0-9_]{3,}\b", window) if not keyword.iskeyword(n)).most_common(turns)]
        if len(names) < turns:
            continue
        session = window
        for name in names:
            session += f"\n\n# The same code, with `{name}` renamed to `{name}_value`:\n"
            ids = tokenizer(session)["input_ids"]
            output = streams(decoder, [Task(ids, len(tokenizer(window)["input_ids"]))])[0][1]
            out.append((ids, output))
            session += tokenizer.decode(output)
        if len(out) >= sessions * turns:
            break
    return out


def streams(decoder, tasks: list[Task]) -> list[tuple[list[int], list[int]]]:
    out = []
    for task in tasks:
        result = decoder.generate(task.prompt, Greedy(), max_new_tokens=task.max_new_tokens)
        out.append((task.prompt, result.best.token_ids))
    return out


def accept(tokens: list[int], parents: list[int], truth: list[int]) -> int:
    """Tokens of the longest draft path that ``truth`` follows."""
    node, accepted = -1, 0
    for token in truth:
        nxt = next((i for i, (t, p) in enumerate(zip(tokens, parents)) if p == node and t == token), None)
        if nxt is None:
            break
        node, accepted = nxt, accepted + 1
    return accepted


def replay_decodekit(requests, config: SuffixConfig) -> tuple[int, int, float]:
    proposer = SuffixTreeProposer(config)
    steps = generated = 0
    seconds = 0.0
    for prompt, output in requests:
        proposer.begin([prompt], None)
        response: list[int] = []
        while len(response) < len(output):
            start = time.perf_counter()
            draft = proposer.propose(SpeculationContext([0], [prompt + response], [MAX_TOKENS]))
            seconds += time.perf_counter() - start
            valid = draft.valid[0]
            n = accept(draft.tokens[0][valid].tolist(), draft.parents[0][valid].tolist(), output[len(response):])
            response += output[len(response) : len(response) + n + 1]
            steps += 1
        generated += len(output)
        proposer.finish([response])
    return steps, generated, 1e6 * seconds / steps


def replay_arctic(requests, cache_class, config: SuffixConfig) -> tuple[int, int, float]:
    cache = cache_class(max_tree_depth=config.max_depth, max_cached_requests=CACHED)
    steps = generated = 0
    seconds = 0.0
    for rid, (prompt, output) in enumerate(requests):
        start = time.perf_counter()  # the prompt's tree is built here (decodekit: at the first propose)
        cache.start_request(rid, np.array(prompt, dtype=np.int32))
        seconds += time.perf_counter() - start
        response: list[int] = []
        while len(response) < len(output):
            start = time.perf_counter()
            draft = cache.speculate(
                rid,
                np.array(prompt + response, dtype=np.int32),
                max_spec_tokens=MAX_TOKENS,
                max_spec_factor=config.max_spec_factor,
                max_spec_offset=config.max_spec_offset,
                min_token_prob=config.min_token_prob,
                use_tree_spec=config.tree,
            )
            n = accept(list(draft.token_ids), list(draft.parents), output[len(response):])
            new = output[len(response) : len(response) + n + 1]
            cache.add_active_response(rid, new)
            seconds += time.perf_counter() - start
            response += new
            steps += 1
        generated += len(output)
        cache.stop_request(rid)
    return steps, generated, 1e6 * seconds / steps


def memory_rows(tokens: list[int], cache_class, depth: int) -> list[str]:
    rows = []
    outputs = [tokens[i::64] for i in range(64)]  # 64 interleaved pieces: 64 cached outputs
    ours = SuffixTree(depth)
    ours.extend(0, tokens)
    split = SuffixTree(depth)
    for i, piece in enumerate(outputs):
        split.extend(i, piece)
        split.close(i)
    ours_one, ours_split = ours.memory_bytes() / len(tokens), split.memory_bytes() / len(tokens)
    theirs_one = theirs_split = None
    if cache_class is not None:
        one = cache_class(max_tree_depth=depth, max_cached_requests=0)
        one.start_request(0, np.array(tokens, dtype=np.int32))
        theirs_one = one._local_trees[0].estimate_memory() / len(tokens)
        many = cache_class(max_tree_depth=depth, max_cached_requests=CACHED)
        for i, piece in enumerate(outputs):
            many.start_request(i, np.array([], dtype=np.int32))
            many.add_active_response(i, np.array(piece, dtype=np.int32))
            many.stop_request(i)
        theirs_split = many._global_tree.estimate_memory() / len(tokens)
    for label, mine, theirs in (("one sequence (a request's prompt)", ours_one, theirs_one), ("64 cached outputs (global tree)", ours_split, theirs_split)):
        ratio = f"{mine / theirs:.2f}" if theirs else "-"
        rows.append(f"| {label} | {mine:.0f} | {theirs:.0f} | {ratio} |" if theirs else f"| {label} | {mine:.0f} | - | - |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-depth", type=int, default=24)
    parser.add_argument("--max-spec-factor", type=float, default=4.0)
    parser.add_argument("--min-token-prob", type=float, default=0.1)
    parser.add_argument("--memory-tokens", type=int, default=32768)
    parser.add_argument("--arctic", type=pathlib.Path, default=HERE / "out" / "arctic", help="where build_arctic_suffix.sh put the build")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache_class, version = arctic_cache_class(args.arctic)
    decoder = decodekit.load("stdlib-code")
    tokenizer = decoder.tokenizer
    sources = [(stdlib_root() / p).read_text(encoding="utf-8", errors="replace") for p in held_out_files()]
    sources = [s for s in sources if len(s) > 2000]
    workloads = {
        "edit": streams(decoder, edit_tasks(tokenizer, sources, args.prompts, 200)),
        "open": streams(decoder, open_tasks(tokenizer, sources, args.prompts, 384, 96)),
        "short": streams(decoder, open_tasks(tokenizer, sources, args.prompts, 32, 96)),
        "agentic": agentic_streams(decoder, sources, max(2, args.prompts // 2), 3, 160),
    }
    print(
        f"ArcticInference: {'version ' + version if cache_class else 'not built (bash bench/build_arctic_suffix.sh)'}; "
        f"max_depth={args.max_depth}, max_spec_factor={args.max_spec_factor}, min_token_prob={args.min_token_prob}, "
        f"{MAX_TOKENS} draft tokens at most, {CACHED} cached outputs; streams: stdlib-code greedy\n"
    )
    print("| workload | requests | tokens | mode | decodekit fwd/token | Arctic fwd/token | decodekit acc/fwd | Arctic acc/fwd | decodekit us/step | Arctic us/step |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, requests in workloads.items():
        for tree in (False, True):
            config = SuffixConfig(max_depth=args.max_depth, max_spec_factor=args.max_spec_factor, min_token_prob=args.min_token_prob, max_tokens=MAX_TOKENS, max_cached_requests=CACHED, tree=tree)
            steps, generated, us = replay_decodekit(requests, config)
            cells = [f"{steps / generated:.3f}", "-", f"{generated / steps - 1:.2f}", "-", f"{us:.0f}", "-"]
            if cache_class is not None:
                a_steps, a_generated, a_us = replay_arctic(requests, cache_class, config)
                cells[1], cells[3], cells[5] = f"{a_steps / a_generated:.3f}", f"{a_generated / a_steps - 1:.2f}", f"{a_us:.0f}"
            print(f"| {name} | {len(requests)} | {generated} | {'tree' if tree else 'path'} | " + " | ".join(cells) + " |")
    from bench_suffix_tree import corpus_tokens

    tokens = corpus_tokens(tokenizer, args.memory_tokens)[: args.memory_tokens]
    print(f"\nMemory, bytes per stored token ({len(tokens)} stdlib tokens, max_depth={args.max_depth}):\n")
    print("| tree | decodekit | ArcticInference | ratio |")
    print("|---|---:|---:|---:|")
    print("\n".join(memory_rows(tokens, cache_class, args.max_depth)))


if __name__ == "__main__":
    main()
