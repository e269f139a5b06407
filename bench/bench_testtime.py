"""Test-time search on the embedded model: pass rate against model forwards.

Every method searches each task of ``bench/tasks`` (a prompt and its tests) with the task's
executable reward (fraction of tests the program passes in the sandbox) and reports, averaged
over tasks: the pass rate of its answer, the model forwards it spent (``row_forwards``: rows x
steps, so 16 rows in one batched forward count 16), the programs it had scored (reward calls;
the sandbox runs each distinct program once per task and caches it) and wall time. Searches
that rank prefixes (reward beam, DVTS, A*) and MCTS value a prefix by the pass rate of one
sampled completion of it (see ROLL). Everything is seeded: a rerun prints the same rewards
and forwards (only the times move).

    python bench/bench_testtime.py                  # table + docs/testtime.png
    python bench/bench_testtime.py --tasks 8 --plot ''   # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import decodekit
from decodekit import Sampling
from decodekit.testtime import (
    DVTS,
    MCTS,
    AStarDecoding,
    BestOfN,
    ExecutableReward,
    RewardBeamSearch,
)

TASKS = Path(__file__).resolve().parent / "tasks"
STOP = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n@"]

ROLL = Sampling(temperature=0.8, top_p=0.95)
"""Prefixes are valued by a sampled completion's pass rate: this model's greedy completions
loop until the length limit (and score 0), so a greedy rollout tells a search nothing."""

METHODS = {
    "greedy": [BestOfN(n=1, sampler=None)],
    "sampling": [BestOfN(n=1)],
    "best-of-N": [BestOfN(n=2), BestOfN(n=4), BestOfN(n=8), BestOfN(n=16), BestOfN(n=32)],
    "reward beam": [RewardBeamSearch(n=2, beam_width=2, max_steps=3, rollout_sampler=ROLL), RewardBeamSearch(n=4, beam_width=2, max_steps=3, rollout_sampler=ROLL), RewardBeamSearch(n=8, beam_width=4, max_steps=3, rollout_sampler=ROLL)],
    "DVTS": [DVTS(n=2, beam_width=2, max_steps=3, rollout_sampler=ROLL), DVTS(n=4, beam_width=2, max_steps=3, rollout_sampler=ROLL), DVTS(n=8, beam_width=4, max_steps=3, rollout_sampler=ROLL)],
    "A*": [AStarDecoding(k=2, token_budget=200, rollout_sampler=ROLL), AStarDecoding(k=3, token_budget=400, rollout_sampler=ROLL), AStarDecoding(k=4, token_budget=800, rollout_sampler=ROLL)],
    "MCTS": [MCTS(rollouts=4, rollout_sampler=ROLL, parallel=4), MCTS(rollouts=8, rollout_sampler=ROLL, parallel=4), MCTS(rollouts=16, rollout_sampler=ROLL, parallel=4)],
}


def load_tasks(limit: int | None) -> list[tuple[str, str, ExecutableReward]]:
    tasks = []
    for folder in sorted(p for p in TASKS.iterdir() if (p / "tests.py").is_file()):
        prompt = (folder / "prompt.py").read_text(encoding="utf-8")
        tasks.append((folder.name, prompt, ExecutableReward.from_file(folder / "tests.py")))
    return tasks[:limit] if limit else tasks


def describe(config) -> str:
    fields = {"best_of_n": ("n",), "reward_beam": ("n", "beam_width"), "dvts": ("n", "beam_width"), "astar": ("k", "token_budget"), "mcts": ("rollouts",)}
    return ", ".join(f"{f}={getattr(config, f)}" for f in fields.get(config.name, ()))


def run(decoder, tasks, config, max_new_tokens: int, seed: int) -> dict:
    rewards, forwards, calls, began = [], [], [], time.perf_counter()
    for _, prompt, reward in tasks:
        result = decoder.search(prompt, config, reward, max_new_tokens=max_new_tokens, stop=STOP, seed=seed)
        rewards.append(result.best.reward)
        forwards.append(result.compute.row_forwards)
        calls.append(result.compute.reward_calls)  # programs scored (the sandbox caches repeats)
    n = len(tasks)
    return {"reward": sum(rewards) / n, "forwards": sum(forwards) / n, "reward_calls": sum(calls) / n, "seconds": (time.perf_counter() - began) / n, "solved": sum(r == 1.0 for r in rewards)}


def at_forwards(curve: list[dict], forwards: float) -> float | None:
    """best-of-N's pass rate at ``forwards`` (linear between its measured budgets)."""
    points = sorted((row["forwards"], row["reward"]) for row in curve)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= forwards <= x1:
            return y0 + (y1 - y0) * (forwards - x0) / (x1 - x0)
    return None


def plot(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method, rows in results.items():
        xs, ys = [r["forwards"] for r in rows], [r["reward"] for r in rows]
        axes.plot(xs, ys, marker="o", label=method)
    axes.set_xscale("log")
    axes.set_xlabel("model forwards per task (rows x steps, log scale)")
    axes.set_ylabel("mean pass rate of the answer")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="only the first N tasks")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--plot", default="docs/testtime.png", help="PNG path ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    decoder = decodekit.load()
    tasks = load_tasks(args.tasks)
    print(f"{len(tasks)} tasks, embedded model, max_new_tokens={args.max_new_tokens}, seed={args.seed}, torch threads={args.threads}\n")
    print("| method | settings | pass rate | solved | forwards/task | reward calls/task | s/task |")
    print("|---|---|---:|---:|---:|---:|---:|")
    results: dict[str, list[dict]] = {}
    for method in args.methods.split(","):
        for config in METHODS[method]:
            row = run(decoder, tasks, config, args.max_new_tokens, args.seed)
            results.setdefault(method, []).append(row)
            print(f"| {method} | {describe(config)} | {row['reward']:.3f} | {row['solved']}/{len(tasks)} | {row['forwards']:.0f} | {row['reward_calls']:.1f} | {row['seconds']:.2f} |", flush=True)
    if "best-of-N" in results:
        print("\nagainst best-of-N at equal forwards (its pass rate interpolated between its budgets):\n")
        print("| method | settings | forwards/task | pass rate | best-of-N at those forwards | difference |")
        print("|---|---|---:|---:|---:|---:|")
        for method, rows in results.items():
            if method in ("best-of-N", "greedy", "sampling"):
                continue
            for config, row in zip(METHODS[method], rows):
                base = at_forwards(results["best-of-N"], row["forwards"])
                shown = "outside its range" if base is None else f"{base:.3f}"
                diff = "" if base is None else f"{row['reward'] - base:+.3f}"
                print(f"| {method} | {describe(config)} | {row['forwards']:.0f} | {row['reward']:.3f} | {shown} | {diff} |")
    if args.plot:
        plot(results, args.plot, f"{len(tasks)} code tasks, embedded model (seed {args.seed})")
        print(f"\nplot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
