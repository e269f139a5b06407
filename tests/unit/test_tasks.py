"""The code-completion tasks of bench/tasks (see bench/tasks/README.md): enough of them, each a
directory with a prompt, tests and a reference completion; the reference passes every test
in the sandbox and a do-nothing completion does not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKS = Path(__file__).parents[2] / "bench" / "tasks"
FILES = ("prompt.py", "tests.py", "reference.py")
STUB = "    pass\n"


def task_dirs() -> list[Path]:
    return sorted(p for p in TASKS.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def test_there_are_enough_tasks():
    assert len(task_dirs()) >= 30


@pytest.mark.parametrize("task", task_dirs(), ids=lambda p: p.name)
def test_task_files(task: Path):
    for name in FILES:
        assert (task / name).is_file(), f"{task.name}: no {name}"
    prompt = (task / "prompt.py").read_text(encoding="utf-8")
    assert prompt.strip(), f"{task.name}: empty prompt"
    tests = ast.parse((task / "tests.py").read_text(encoding="utf-8"))
    names = [n.name for n in tests.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert 3 <= len(names) <= 5, f"{task.name}: {len(names)} tests, expected 3 to 5"
    assert len(set(names)) == len(names), f"{task.name}: a test name is defined twice"


@pytest.mark.parametrize("task", task_dirs(), ids=lambda p: p.name)
def test_reference_passes_and_stub_does_not(task: Path):
    from decodekit.testtime.sandbox import run_tests, tests_from_file

    prompt = (task / "prompt.py").read_text(encoding="utf-8")
    reference = (task / "reference.py").read_text(encoding="utf-8")
    tests = tests_from_file(task / "tests.py")
    assert 3 <= len(tests) <= 5, f"{task.name}: the sandbox found {len(tests)} tests"

    result = run_tests(prompt + reference, tests)
    assert result.total == len(tests)
    assert result.passed == result.total and result.fraction == 1.0, (
        f"{task.name}: the reference passes {result.passed}/{result.total} ({result.outcome})"
    )

    stub = run_tests(prompt + STUB, tests)
    assert stub.fraction < 1.0, f"{task.name}: the completion {STUB!r} passes every test"
