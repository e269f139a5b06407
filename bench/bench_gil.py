"""What a busy Python thread costs a loop of small torch calls in another thread of the same
process (why ``decodekit serve`` runs its engine in a process of its own).

    python bench/bench_gil.py

Thread A times 3,000 rounds of three small torch calls (a 64x256 by 256x256 linear, an add, a
relu: the size of the embedded model's per-row work); thread B alternates busy Python work and
sleep in 3 ms periods at the duty cycle shown. Each torch call releases the interpreter lock
and must take it back, from B when B is running. Prints the loop's time and its slowdown
against the loop alone, at 1 torch thread.
"""

from __future__ import annotations

import threading
import time

import torch


def loop(x: torch.Tensor, w: torch.Tensor, rounds: int = 3000) -> float:
    began = time.perf_counter()
    for _ in range(rounds):
        torch.relu(torch.nn.functional.linear(x, w) + x)
    return time.perf_counter() - began


def main() -> None:
    torch.set_num_threads(1)
    x, w = torch.randn(64, 256), torch.randn(256, 256)
    loop(x, w, 300)  # warm-up
    alone = min(loop(x, w) for _ in range(3))
    print("| busy thread's duty | loop (s) | slowdown |")
    print("|---:|---:|---:|")
    print(f"| none | {alone:.3f} | 1.00x |")
    for duty in (0.2, 0.4, 0.8):
        stop = threading.Event()

        def busy(duty=duty, stop=stop):
            while not stop.is_set():
                began = time.perf_counter()
                while time.perf_counter() - began < 0.003 * duty:
                    pass
                time.sleep(0.003 * (1 - duty))

        thread = threading.Thread(target=busy)
        thread.start()
        took = loop(x, w)
        stop.set()
        thread.join()
        print(f"| {duty:.0%} | {took:.3f} | {took / alone:.2f}x |")


if __name__ == "__main__":
    main()
