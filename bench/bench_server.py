"""A bounded load test of ``decodekit serve``, and the same load on ``transformers serve``.

    python bench/bench_server.py                          # decodekit, then transformers serve
    python bench/bench_server.py --peer none --requests 500
    python bench/bench_server.py --unique-prompts --without-prompt-cache   # no prompt repeats; decodekit with and without its prompt cache
    python bench/bench_server.py --unique-prompts --preamble --without-prompt-cache   # distinct prompts after one shared preamble

Each server runs alone in a subprocess on a free loopback port, serving the embedded model
(``--threads`` torch threads, 1 by default; decodekit's engine in a process of its own, as
``decodekit serve`` runs it). ``--clients`` concurrent streaming clients (the official ``openai`` async
client, one process) send ``--requests`` completions in all, with mixed parameters: greedy and
sampled (temperature, top_p, seed), 16 to 64 new tokens, some with a stop string, over a set of
code prompts (8 of them, so prompts repeat and ``decodekit serve``'s prompt cache serves most
prefills; ``--unique-prompts`` makes every prompt distinct; ``--preamble`` puts one shared
preamble of about 200 tokens before every prompt, as a system prompt or a few-shot header does). The same request list goes to every server. The peer is
``transformers serve --continuous-batching`` (needs ``accelerate``: ``pip install -e ".[bench]"``).

Prints, per server: requests, errors, generated tokens (from the streamed usage), throughput
(tokens/s over the whole run), time to first token p50/p99, inter-token latency p50/p99, the
server's resident memory after warm-up (10% of the requests) and at the end; for decodekit also
the rows and queue left in the engine afterwards (``/metrics``: 0 and 0 means nothing leaked).
Then the ratios decodekit / peer from the same run. Stops by itself; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

PROMPTS = [
    "def fibonacci(n):", "import os\n\n\ndef list_files(path):", "class Stack:\n    def __init__(self):",
    "def read_json(path):", "# parse the arguments\nimport argparse\n", "def quicksort(items):",
    "for i in range(10):", "def merge(a, b):\n    \"\"\"Merge two sorted lists.\"\"\"",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PREAMBLE = '''"""Utilities for reading, checking and writing the project's data files.

Every function here takes paths as strings or pathlib.Path objects, never opens a file it was
not given, and raises ValueError with the offending line number when the input is malformed.
Functions that write return the number of bytes written.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict
from pathlib import Path

ENCODING = "utf-8"
FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_name(name: str) -> str:
    if not FIELD.match(name):
        raise ValueError(f"not a field name: {name!r}")
    return name

'''
"""``--preamble``: what every prompt then begins with (about 200 tokens of the embedded model)."""


def requests(count: int, seed: int, unique: bool = False, preamble: bool = False) -> list[dict]:
    """The mixed request list (the same for every server); ``unique``: no two prompts alike
    (each begins with its request's number, after the preamble if any)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = rng.choice(PROMPTS)
        prompt = f"# request {i}\n{prompt}" if unique else prompt
        body = {"prompt": PREAMBLE + prompt if preamble else prompt, "max_tokens": rng.choice([16, 32, 48, 64])}
        if i % 2:
            body |= {"temperature": rng.choice([0.7, 0.9, 1.0]), "top_p": rng.choice([0.9, 0.95, 1.0]), "seed": i}
        else:
            body |= {"temperature": 0}
        if i % 5 == 0:
            body["stop"] = ["\n\n\n"]
        out.append(body)
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MiB."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    kids = [int(c) for c in found]
    return kids + [g for k in kids for g in children(k)]


def start(command: list[str], base: str, env: dict, log) -> subprocess.Popen:
    # the server's log goes to a file: a pipe nobody reads fills up and blocks its writer
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{command[0]} exited: {log.read()[-2000:]}")
        try:
            if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{command[0]} did not start within 180 s")


async def load(base: str, model: str, bodies: list[dict], clients: int, pid: int) -> dict:
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
    queue = list(enumerate(bodies))
    ttft, gaps, tokens, errors, rss_warm = [], [], 0, [], None
    warm_at = max(1, len(bodies) // 10)
    done = 0

    async def one(body: dict) -> None:
        nonlocal tokens, done, rss_warm
        began = last = time.perf_counter()
        first = True
        try:
            stream = await client.completions.create(model=model, stream=True, stream_options={"include_usage": True}, **body)
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].text:
                    if first:
                        ttft.append(now - began)
                        first = False
                    else:
                        gaps.append(now - last)
                    last = now
                if chunk.usage is not None:
                    tokens += chunk.usage.completion_tokens
        except Exception as error:  # counted and reported, never hidden
            errors.append(f"{type(error).__name__}: {str(error)[:120]}")
        done += 1
        if done == warm_at:
            rss_warm = rss_mib(pid)

    async def worker() -> None:
        while queue:
            _, body = queue.pop(0)
            await one(body)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - began
    await client.close()
    return {"wall": wall, "tokens": tokens, "errors": errors, "ttft": ttft, "gaps": gaps, "rss_warm": rss_warm, "rss_end": rss_mib(pid)}


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def engine_left(base: str) -> str:
    text = httpx.get(base + "/metrics", timeout=10).text
    rows = re.search(r"^decodekit_running_rows (\S+)", text, re.M)
    queued = re.search(r"^decodekit_queue_depth (\S+)", text, re.M)
    return f"{float(rows.group(1)):.0f} rows, {float(queued.group(1)):.0f} queued" if rows and queued else "?"


def run(name: str, command: list[str], model: str, bodies: list[dict], clients: int, env: dict, port: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile(mode="w+")
    process = start(command, base, env, log)
    try:
        asyncio.run(load(base, model, bodies[: max(8, clients)], clients, process.pid))  # warm-up, not counted
        result = asyncio.run(load(base, model, bodies, clients, process.pid))
        result["left"] = engine_left(base) if name.startswith("decodekit") else "-"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (OMP_NUM_THREADS); default 1: on a 2-core machine the clients and the HTTP side need the other core, and both servers are faster so")
    parser.add_argument("--peer", choices=["transformers", "none"], default="transformers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-in-process", action="store_true", help="decodekit's engine in the server's process (default: its own)")
    parser.add_argument("--unique-prompts", action="store_true", help="no two prompts alike (each begins with its request's number)")
    parser.add_argument("--preamble", action="store_true", help="one shared preamble (about 200 tokens) before every prompt")
    parser.add_argument("--without-prompt-cache", action="store_true", help="also run decodekit with --prompt-cache-mib 0")
    args = parser.parse_args()
    from decodekit.models import embedded_model_path

    path = str(embedded_model_path("stdlib-code"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    bodies = requests(args.requests, args.seed, args.unique_prompts, args.preamble)
    ours = [sys.executable, "-m", "decodekit", "serve", "--port", "{port}", "--served-model-name", "m"] + (["--engine-in-process"] if args.engine_in_process else [])
    servers = [("decodekit", ours, "m")]
    if args.without_prompt_cache:
        servers.append(("decodekit, no prompt cache", ours + ["--prompt-cache-mib", "0"], "m"))
    if args.peer == "transformers":
        servers.append(("transformers serve", ["transformers", "serve", "--continuous-batching", "--device", "cpu", "--host", "127.0.0.1", "--port", "{port}", path], path))
    kind = "every prompt distinct" if args.unique_prompts else f"prompts drawn from {len(PROMPTS)}"
    kind += ", after a shared preamble" if args.preamble else ""
    print(f"embedded model (stdlib-code), {args.requests} streaming completions, {args.clients} concurrent clients, {args.threads} threads, mixed greedy/sampled, 16-64 new tokens, {kind}\n")
    results = {}
    for name, command, model in servers:
        port = free_port()
        command = [c.replace("{port}", str(port)) for c in command]
        results[name] = run(name, command, model, bodies, args.clients, env, port)
    print("| server | requests | errors | tokens | tok/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | RSS warm / end (MiB) | left in engine |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {args.requests} | {len(r['errors'])} | {r['tokens']} | {r['tokens'] / r['wall']:.0f} | {1000 * quantile(r['ttft'], 0.5):.0f} | "
            f"{1000 * quantile(r['ttft'], 0.99):.0f} | {1000 * quantile(r['gaps'], 0.5):.1f} | {1000 * quantile(r['gaps'], 0.99):.1f} | "
            f"{r['rss_warm']:.0f} / {r['rss_end']:.0f} | {r['left']} |"
        )
    for name, r in results.items():
        if r["errors"]:
            print(f"\n{name}: first errors: {r['errors'][:3]}")
    peer = results.get("transformers serve")
    for name, ours in results.items():
        if peer is not None and ours is not peer:
            speed = (ours["tokens"] / ours["wall"]) / (peer["tokens"] / peer["wall"])
            ttft = quantile(ours["ttft"], 0.5) / quantile(peer["ttft"], 0.5)
            print(f"\n{name} / transformers serve: throughput {speed:.2f}x, TTFT p50 {ttft:.2f}x (lower is better)")


if __name__ == "__main__":
    main()
