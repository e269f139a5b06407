"""The sandbox (decodekit.testtime.sandbox) and the executable reward on top of it.

Every run starts a real child interpreter, bounded by small limits; each test checks the
outcome, that the candidate earns nothing when it misbehaves, and that the parent is unharmed.
"""

import glob
import math
import os
import tempfile
import time

import pytest

from decodekit.errors import ConfigError, InputError
from decodekit.testtime.executable import ExecutableReward
from decodekit.testtime.sandbox import SandboxLimits, SandboxResult, run_tests
from decodekit.testtime.sandbox import tests_from_file as from_file
from decodekit.testtime.sandbox import tests_from_source as from_source

LIMITS = SandboxLimits(timeout_s=2.0, cpu_s=2, memory_mb=256)
FAST = 5.0  # seconds a run that is stopped early may take, on a loaded 2-core machine


def _children() -> list[str]:
    """Pids of this process's live or zombie children (Linux)."""
    found = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as f:
            found += f.read().split()
    return found


@pytest.fixture(autouse=True)
def sandbox_dirs(tmp_path, monkeypatch):
    """Sandbox temp dirs go under tmp_path/sandboxes; afterwards none is left, nor any child."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    assert list(root.iterdir()) == []
    assert _children() == []


def run(program, tests=("assert True",), limits=LIMITS, bound=FAST):
    start = time.monotonic()
    result = run_tests(program, list(tests), limits)
    assert time.monotonic() - start < bound
    if result.outcome not in ("ok", "failed"):
        assert result.fraction == 0.0
    return result


# --- what passes and what fails


def test_exact_fractions():
    program = "def add(a, b):\n    return a + b\n"
    result = run(program, ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(2, 2) == 5"])
    assert (result.outcome, result.passed, result.total) == ("failed", 2, 3)
    assert result.fraction == pytest.approx(2 / 3)
    assert result.detail.startswith("test 2: AssertionError")
    result = run(program, ["assert add(1, 2) == 3", "assert add(0, 0) == 0"])
    assert (result.outcome, result.fraction, result.detail) == ("ok", 1.0, "")


def test_tests_share_the_program_namespace_and_stdlib_imports_work():
    program = ("import collections, dataclasses, json, re\n"
               "@dataclasses.dataclass\nclass P:\n    x: int\n"
               "def parse(s):\n    return json.loads(s)['a']\n")
    tests = ["assert parse('{\"a\": 3}') == 3", "seen = P(2)", "assert seen.x == 2",
             "assert open(re.__file__).read()"]  # reading files is allowed
    assert run(program, tests).outcome == "ok"


def test_string_hashing_is_the_same_in_every_run():
    first, second = (run("h = hash('abc')\n", ["assert False, h"]).detail for _ in range(2))
    assert first == second


def test_program_that_raises_passes_nothing():
    result = run("raise ValueError('boom')\n", ["assert True", "assert True"])
    assert (result.outcome, result.passed, result.fraction) == ("failed", 0, 0.0)
    assert "ValueError: boom" in result.detail


def test_syntax_error():
    result = run("def f(:\n    pass\n")
    assert (result.outcome, result.fraction) == ("syntax", 0.0)
    assert "SyntaxError" in result.detail


def test_writing_inside_its_own_temp_dir_is_allowed():
    program = ("import os, tempfile\nopen('out.txt', 'w').write('hi')\nos.mkdir('sub')\n"
               "fd, name = tempfile.mkstemp()\nos.close(fd)\nos.remove(name)\n")
    tests = ["assert open('out.txt').read() == 'hi'", "assert os.path.isdir('sub')"]
    assert run(program, tests).outcome == "ok"


# --- limits


def test_infinite_loop_times_out_on_the_wall_clock():
    result = run("while True:\n    pass\n", limits=SandboxLimits(timeout_s=1.0, cpu_s=30))
    assert result.outcome == "timeout" and "wall-clock" in result.detail


def test_cpu_bound_test_function_hits_the_cpu_limit():
    test = "def test_spin():\n    while True:\n        pass\ntest_spin()\n"
    result = run("x = 1\n", [test], limits=SandboxLimits(timeout_s=20.0, cpu_s=1), bound=15.0)
    assert result.outcome == "timeout"


def test_sleeping_program_times_out():
    result = run("import time\ntime.sleep(60)\n", limits=SandboxLimits(timeout_s=1.0))
    assert result.outcome == "timeout"


@pytest.mark.parametrize("program", [
    "x = bytearray(10 ** 10)\n",
    "grow = []\nwhile True:\n    grow.append([0] * 10000)\n",
])
def test_memory_hog(program):
    result = run(program)
    assert result.outcome == "memory"


def test_output_flood_neither_hangs_nor_counts():
    program = "import sys\nprint('x' * 10 ** 8)\nsys.stderr.write('z' * 10 ** 7)\n"
    result = run(program, ["assert True", "print('x' * 10 ** 7)"])
    assert (result.outcome, result.fraction) == ("ok", 1.0)  # what it prints is dropped


def test_raw_output_is_capped_by_the_file_size_limit():
    program = "import os\nwhile True:\n    os.write(1, b'y' * 65536)\n"
    result = run(program, limits=SandboxLimits(max_output_bytes=4096))
    assert (result.outcome, result.fraction) == ("failed", 0.0)
    assert "File too large" in result.detail


def test_a_dying_interpreter_is_reported_as_crashed():
    result = run("import faulthandler\nfaulthandler._sigsegv()\n")
    assert (result.outcome, result.fraction) == ("crashed", 0.0)
    assert "signal 11" in result.detail


# --- blocked operations


def test_fork_bomb_is_stopped_at_the_first_fork():
    result = run("import os\nwhile True:\n    os.fork()\n")
    assert result.outcome == "blocked" and "os.fork" in result.detail


@pytest.mark.parametrize("program", [
    "import subprocess\nsubprocess.run(['echo'])\n",
    "import os\nos.system('echo hi')\n",
    "import os\nos.execv('/bin/echo', ['echo'])\n",
    "import os\nos.posix_spawn('/bin/echo', ['echo'], {})\n",
    "import multiprocessing\nmultiprocessing.get_context('spawn').Process(target=print).start()\n",
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",  # the parent: this test process
])
def test_processes_and_signals_are_blocked(program):
    assert run(program).outcome == "blocked"


@pytest.mark.parametrize("program", [
    "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')\n",
    "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n",
])
def test_network_is_blocked(program):
    assert run(program).outcome == "blocked"


def test_asyncio_event_loop_still_works():
    program = "import asyncio\nasync def one():\n    return 1\nvalue = asyncio.run(one())\n"
    assert run(program, ["assert value == 1"]).outcome == "ok"


@pytest.mark.parametrize("program", ["import ctypes\n", "import _ctypes\n",
                                     "import importlib\nimportlib.import_module('ctypes.util')\n"])
def test_ctypes_is_blocked(program):
    assert run(program).outcome == "blocked"


WRITES = {
    "open": "open(TARGET, 'w').write('x')",
    "caught": "try:\n    open(TARGET, 'w').write('x')\nexcept Exception:\n    pass",
    "os.open": "os.close(os.open(TARGET, os.O_WRONLY | os.O_CREAT))",
    "pathlib": "import pathlib\npathlib.Path(TARGET).write_text('x')",
    "symlink": "os.symlink(TARGET, 'link')\nopen('link', 'w').write('x')",
    "dir_fd": "d = os.open(os.path.dirname(TARGET), os.O_RDONLY)\n"
              "os.close(os.open(os.path.basename(TARGET), os.O_WRONLY | os.O_CREAT, dir_fd=d))",
    "mkdir": "os.mkdir(TARGET)",
    "chdir": "os.chdir(os.path.dirname(TARGET))\nopen(os.path.basename(TARGET), 'w')",
}


@pytest.mark.parametrize("how", sorted(WRITES))
def test_writing_outside_is_blocked_even_when_caught(how, tmp_path):
    target = tmp_path / "escaped.txt"
    program = f"import os\nTARGET = {str(target)!r}\n{WRITES[how]}\n"
    result = run(program, ["assert True"])
    assert (result.outcome, result.fraction) == ("blocked", 0.0)
    assert not target.exists()


@pytest.mark.parametrize("op", ["os.remove(VICTIM)", "os.rename(VICTIM, 'stolen')",
                                "import shutil\nshutil.rmtree(os.path.dirname(VICTIM))",
                                "os.truncate(VICTIM, 0)"])
def test_changing_files_outside_is_blocked(op, tmp_path):
    victim = tmp_path / "keep" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    result = run(f"import os\nVICTIM = {str(victim)!r}\n{op}\n")
    assert result.outcome == "blocked"
    assert victim.read_text() == "precious"


def test_printed_or_written_reports_are_not_believed():
    forge = ("import os\nfor line in ['ok 1 ', '{\"outcome\": \"ok\", \"passed\": 1}']:\n"
             "    print(line)\n"
             "    for fd in map(int, os.listdir('/proc/self/fd')):\n"
             "        try:\n            os.write(fd, (line + '\\n').encode())\n"
             "        except OSError:\n            pass\n")
    result = run(forge, ["assert False"])
    assert (result.outcome, result.passed, result.fraction) == ("failed", 0, 0.0)
    result = run(forge + "os._exit(0)\n", ["assert False"])  # and no real report follows
    assert (result.outcome, result.fraction) == ("crashed", 0.0)


# --- limits and results as values


@pytest.mark.parametrize("field, value", [
    ("timeout_s", 0), ("timeout_s", -1.0), ("timeout_s", "2"), ("timeout_s", True), ("timeout_s", math.inf),
    ("timeout_s", math.nan), ("cpu_s", 0), ("cpu_s", 1.5), ("cpu_s", True), ("memory_mb", -5),
    ("memory_mb", None), ("max_output_bytes", 0),
])
def test_limits_are_validated(field, value):
    with pytest.raises(ConfigError) as info:
        SandboxLimits(**{field: value})
    assert info.value.field == field


def test_fraction_is_zero_unless_the_tests_ran():
    assert SandboxResult(2, 4, "failed", "").fraction == 0.5
    assert SandboxResult(0, 0, "ok", "").fraction == 1.0
    assert SandboxResult(0, 0, "failed", "").fraction == 0.0
    for outcome in ("syntax", "timeout", "memory", "blocked", "crashed"):
        assert SandboxResult(3, 4, outcome, "").fraction == 0.0


def test_bad_arguments_raise():
    with pytest.raises(InputError):
        run_tests(b"x = 1", ["assert True"])
    with pytest.raises(InputError):
        run_tests("x = 1", "assert True")
    with pytest.raises(ConfigError):
        run_tests("x = 1", ["assert True"], limits={"timeout_s": 1})


# --- tests_from_source / tests_from_file

TEST_MODULE = '''"""Tests of inc."""
import math

LIMIT = 10


def helper(x):
    return inc(x) - 1


def test_inc():
    assert inc(1) == 2


@staticmethod
def test_helper():
    assert helper(math.floor(3.5)) == 3


def test_limit(n=LIMIT):
    assert inc(n) == 12
'''


def test_tests_from_source_with_test_functions():
    tests = from_source(TEST_MODULE)
    assert len(tests) == 3
    assert all("import math" in t and "def helper" in t and "LIMIT = 10" in t for t in tests)
    assert tests[0].rstrip().endswith("test_inc()") and "def test_helper" not in tests[0]
    assert "@staticmethod" in tests[1]
    result = run("def inc(x):\n    return x + 1\n", tests)
    assert (result.outcome, result.passed) == ("failed", 2)
    assert result.detail.startswith("test 2: AssertionError")


def test_tests_from_source_with_bare_asserts():
    source = "import math\nassert f(1) == 2\nx = f(math.floor(2.5))\nassert x == 3\n'''doc'''\ncheck(f)\n"
    tests = from_source(source)
    assert tests == ["import math\nassert f(1) == 2\n",
                     "import math\nx = f(math.floor(2.5))\nassert x == 3\n",
                     "import math\nx = f(math.floor(2.5))\n'''doc'''\ncheck(f)\n"]
    program = "def f(x):\n    return x + 1\ndef check(g):\n    assert g(0) == 2\n"
    result = run(program, tests)
    assert (result.passed, result.total) == (2, 3)


@pytest.mark.parametrize("source, message", [
    ("def test_a(:\n    pass\n", "mytests.py, line 1"),
    ("import math\nx = 1\n", "no tests"),
    ("def test_fixture(tmp_path):\n    pass\n", "takes arguments"),
    ("assert 1\x00\n", "mytests.py"),
])
def test_tests_from_source_errors(source, message):
    with pytest.raises(InputError, match=message):
        from_source(source, "mytests.py")


def test_tests_from_file(tmp_path):
    path = tmp_path / "test_inc.py"
    path.write_text(TEST_MODULE, encoding="utf-8")
    assert from_file(path) == from_source(TEST_MODULE)
    with pytest.raises(InputError, match="missing.py"):
        from_file(tmp_path / "missing.py")
    (tmp_path / "bad.py").write_text("def test_x(:\n", encoding="utf-8")
    with pytest.raises(InputError, match="bad.py, line 1"):
        from_file(tmp_path / "bad.py")


# --- ExecutableReward


TESTS = ["assert inc(1) == 2", "assert inc(2) == 3", "assert inc(0) == 1"]


def test_reward_scores_in_order_and_caches():
    reward = ExecutableReward(TESTS, limits=LIMITS)
    assert reward.kind == "outcome"
    prompt = "def inc(x):\n"
    good, bad, partial = "    return x + 1\n", "    return x\n", "    return 2 if x == 0 else x + 1\n"
    assert reward.score(prompt, [good, bad, partial, good]) == pytest.approx([1.0, 0.0, 2 / 3, 1.0])
    assert (reward.calls, reward.lookups) == (3, 4)
    assert reward.score(prompt, [partial]) == pytest.approx([2 / 3])
    assert reward.result(prompt, bad).outcome == "failed"
    assert (reward.calls, reward.lookups) == (3, 5)
    assert reward.score(prompt, ["    while True: pass\n"]) == [0.0]


def test_reward_custom_program_and_lru():
    reward = ExecutableReward(TESTS, limits=LIMITS, program=lambda prompt, completion: completion, cache_size=1)
    one, two = "def inc(x):\n    return x + 1\n", "inc = lambda x: x + 1\n"
    assert reward.score("ignored", [one, one]) == [1.0, 1.0]
    assert reward.calls == 1
    assert reward.score("ignored", [two]) == [1.0]
    assert reward.score("ignored", [one]) == [1.0]  # evicted by two: run again
    assert reward.calls == 3


def test_reward_from_file(tmp_path):
    path = tmp_path / "tests.py"
    path.write_text("def test_inc():\n    assert inc(1) == 2\n", encoding="utf-8")
    reward = ExecutableReward.from_file(path, limits=LIMITS)
    assert reward.score("def inc(x):\n    return x + 1\n", [""]) == [1.0]


@pytest.mark.parametrize("kwargs, field", [
    ({"tests": []}, "tests"), ({"tests": "assert True"}, "tests"), ({"tests": [1]}, "tests"),
    ({"tests": TESTS, "limits": {"timeout_s": 1}}, "limits"), ({"tests": TESTS, "program": "x"}, "program"),
    ({"tests": TESTS, "cache_size": 0}, "cache_size"),
])
def test_reward_config_errors(kwargs, field):
    with pytest.raises(ConfigError) as info:
        ExecutableReward(**kwargs)
    assert info.value.field == field


def test_reward_bad_limits_are_caught_when_built():
    with pytest.raises(ConfigError, match="memory_mb"):
        ExecutableReward(TESTS, limits=SandboxLimits(memory_mb=0))
