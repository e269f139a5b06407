"""decodekit serve under load, over real HTTP on 127.0.0.1 with the official ``openai`` client.

    python bench/bench_http.py                       # 1, 8, 32 concurrent streaming clients
    python bench/bench_http.py --concurrency 32 --new-tokens 64

Starts the server (embedded model) on a free loopback port in this process, then for each
concurrency C runs C client threads, each streaming one completion of ``--new-tokens`` tokens
(greedy, EOS suppressed through ``decodekit.min_tokens``), and compares with the same requests
sent one after another. Prints tokens/s of both, their ratio, time-to-first-token p50/p99 and
whether every streamed text equals the serial one. Client and server share the machine's
cores, so the ratio is lower than the engine's own (bench_serving.py).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import openai
import torch
import uvicorn

import decodekit
from decodekit.serve import create_app


def start(decoder) -> tuple[uvicorn.Server, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(decoder, "m"), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1"


def stream(client, prompt: str, tokens: int) -> tuple[float, float, str]:
    began, first, text = time.perf_counter(), None, []
    for chunk in client.completions.create(model="m", prompt=prompt, max_tokens=tokens, temperature=0, stream=True, extra_body={"decodekit": {"min_tokens": tokens}}):
        if first is None:
            first = time.perf_counter() - began
        if chunk.choices:
            text.append(chunk.choices[0].text)
    return time.perf_counter() - began, first or 0.0, "".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    server, base = start(decodekit.load())
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    print(f"embedded model, greedy, {args.new_tokens} tokens per request, streaming, {torch.get_num_threads()} threads\n")
    print("| concurrent | serial tok/s | concurrent tok/s | ratio | TTFT p50 (ms) | TTFT p99 (ms) | same |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for count in args.concurrency:
        prompts = [f"def task_{i}(x):" for i in range(count)]
        began = time.perf_counter()
        serial = [stream(client, p, args.new_tokens)[2] for p in prompts]
        serial_wall = time.perf_counter() - began
        out: dict[int, tuple[float, float, str]] = {}
        def worker(i: int, out=out, prompts=prompts) -> None:
            out[i] = stream(client, prompts[i], args.new_tokens)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        ttft = sorted(v[1] for v in out.values())
        tokens = count * args.new_tokens
        same = all(out[i][2] == serial[i] for i in range(count))
        p50, p99 = ttft[len(ttft) // 2] * 1e3, ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))] * 1e3
        print(f"| {count} | {tokens / serial_wall:.0f} | {tokens / wall:.0f} | {(tokens / wall) / (tokens / serial_wall):.2f}x | {p50:.0f} | {p99:.0f} | {same} |")
    server.should_exit = True


if __name__ == "__main__":
    main()
