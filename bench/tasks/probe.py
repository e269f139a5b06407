"""Calibrate the code-completion tasks against decodekit's embedded model.

For every task directory next to this file (or the ones named on the command line), decode
the prompt greedily and draw 16 samples (temperature 0.8, top_p 0.95, seed 0), score every
completion by the fraction of the task's tests it passes, and print one row per task:
greedy reward, mean sample reward, best-of-16 reward. Tasks run one after another, each
program in its own short-lived subprocess (2 s timeout), on one torch thread.

    python bench/tasks/probe.py                 # every task
    python bench/tasks/probe.py add_two sign    # some tasks
    python bench/tasks/probe.py -v add_two      # also print every completion and its reward
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import decodekit

TASKS = Path(__file__).resolve().parent
STOP = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n@"]
SAMPLES, MAX_NEW_TOKENS, TIMEOUT_S = 16, 48, 2.0

# Run in the child: exec the program, then the tests' module (shared setup), then each
# test_* function in definition order. Prints one JSON line {"passed": k, "total": n};
# a program that fails at top level prints {"error": ...} (reward 0).
RUNNER = r"""
import io, json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    spec = json.load(f)
out, sys.stdout = sys.stdout, io.StringIO()  # what the program prints is dropped


def report(**fields):
    out.write(json.dumps(fields) + "\n")
    out.flush()
    sys.exit(0)


ns = {"__name__": "__main__"}
try:
    exec(compile(spec["program"], "<program>", "exec"), ns)
except BaseException as e:
    report(error="program: " + type(e).__name__)
try:
    exec(compile(spec["tests"], "<tests>", "exec"), ns)
except BaseException as e:
    report(error="tests setup: " + type(e).__name__)
passed = 0
for name in spec["order"]:
    try:
        ns[name]()
        passed += 1
    except BaseException:
        pass
report(passed=passed, total=len(spec["order"]))
"""


def test_names(tests: str) -> list[str]:
    """The top-level ``test_*`` functions of a tests file, in definition order."""
    import ast

    return [n.name for n in ast.parse(tests).body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def reward(program: str, tests: str) -> float:
    """Fraction of the tests passed by ``program``: 0 when it does not compile, raises at
    top level, or runs past the timeout."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings of odd completions
            compile(program, "<program>", "exec")
    except (SyntaxError, ValueError):
        return 0.0
    order = test_names(tests)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump({"program": program, "tests": tests, "order": order}, f)
        path = f.name
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUNNER, path], capture_output=True, text=True, timeout=TIMEOUT_S,
            env={**os.environ, "PYTHONHASHSEED": "0"}, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return 0.0
    finally:
        os.unlink(path)
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return 0.0
    if "error" in out or not out["total"]:
        return 0.0
    return out["passed"] / out["total"]


def task_dirs(names: list[str]) -> list[Path]:
    found = sorted(p for p in TASKS.iterdir() if p.is_dir() and (p / "prompt.py").is_file())
    if names:
        wanted = set(names)
        found = [p for p in found if p.name in wanted]
        missing = wanted - {p.name for p in found}
        if missing:
            sys.exit(f"no such task: {', '.join(sorted(missing))}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="*", help="task directory names (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each completion and its reward")
    parser.add_argument("--check-reference", action="store_true", help="also score reference.py and '    pass'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    decoder = decodekit.load()
    sampling = decodekit.Sampling(n=SAMPLES, seed=0, temperature=0.8, top_p=0.95)
    rows = []
    start = time.time()
    print(f"{'task':<28} {'greedy':>7} {'mean':>7} {'best16':>7}", flush=True)
    for task in task_dirs(args.tasks):
        prompt = (task / "prompt.py").read_text(encoding="utf-8")
        tests = (task / "tests.py").read_text(encoding="utf-8")
        greedy = decoder.generate(prompt, decodekit.Greedy(), max_new_tokens=MAX_NEW_TOKENS, stop=STOP).sequences[0].text
        samples = [s.text for s in decoder.generate(prompt, sampling, max_new_tokens=MAX_NEW_TOKENS, stop=STOP).sequences]
        g = reward(prompt + greedy, tests)
        rs = [reward(prompt + s, tests) for s in samples]
        mean, best = sum(rs) / len(rs), max(rs)
        rows.append((task.name, g, mean, best))
        extra = ""
        if args.check_reference:
            ref = reward(prompt + (task / "reference.py").read_text(encoding="utf-8"), tests)
            stub = reward(prompt + "    pass\n", tests)
            extra = f"   reference {ref:.2f}  pass-stub {stub:.2f}"
        print(f"{task.name:<28} {g:>7.2f} {mean:>7.2f} {best:>7.2f}{extra}", flush=True)
        if args.verbose:
            print(f"    greedy  {g:.2f} {greedy!r}")
            for r, s in sorted(zip(rs, samples), key=lambda x: -x[0]):
                print(f"    sample  {r:.2f} {s!r}")
    if rows:
        n = len(rows)
        means = [sum(col) / n for col in list(zip(*rows))[1:]]
        print(f"{'MEAN (' + str(n) + ' tasks)':<28} {means[0]:>7.2f} {means[1]:>7.2f} {means[2]:>7.2f}")
        print(f"tasks with best-of-16 > 0: {sum(r[3] > 0 for r in rows)}/{n}; greedy > 0: {sum(r[1] > 0 for r in rows)}/{n}; "
              f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
