"""Run an untrusted candidate program against tests in a child interpreter, with limits.

What :func:`run_tests` guarantees, whatever the program does:

- the caller gets a :class:`SandboxResult` back, within about ``timeout_s`` (the child's whole
  process group is killed then) and never an exception caused by the program; no child or
  zombie process is left behind;
- the child runs at most ``cpu_s`` seconds of CPU, maps at most ``memory_mb`` of address space
  and writes files of at most ``max_output_bytes``; what it prints is discarded, and what it
  writes to its standard streams is read back only up to ``max_output_bytes``;
- through Python's audited operations (``sys.addaudithook``; a hook cannot be removed) the
  child cannot start processes, signal other processes, use the network, load ``ctypes``, raise
  its limits, or create, change or delete files outside its own fresh temporary directory (its
  working directory, also ``TMPDIR``). The first such attempt ends the run as ``"blocked"``,
  so catching the exception earns nothing;
- text the program prints cannot pass for the runner's report: the report travels on its own
  pipe, marked with a random per-run nonce.

What it does not guarantee: it is not a security boundary. The program shares the child's
interpreter with the runner, so a determined attacker can read the runner's state (the nonce
included) through frames or ``gc``, race a path between the hook's check and its use, or act
through what Python does not audit (hand-built extension modules, ``os.mkfifo``). Run code
from untrusted models inside a container or VM for that. The child sees the standard library
only (no ``site``, no site-packages). Linux only (it reads ``/proc/self/fd``).
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import numbers
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from decodekit.errors import ConfigError, InputError

OUTCOMES = ("ok", "failed", "syntax", "timeout", "memory", "blocked", "crashed")
_DETAIL_CHARS = 500
_REPORT_BYTES = 1 << 16

# The child's runner (run with -c, so nothing of it lives on disk). It reads its job, sets
# its own limits (here rather than in a preexec_fn: preexec_fn can deadlock when the parent
# has threads, as ExecutableReward's pool does), installs the audit hook, then runs the
# program and the tests. It binds everything it needs (exec, compile, os.write, os._exit)
# before the program runs, so the program cannot monkeypatch the runner into a false report.
_RUNNER = r'''
import io, json, os, resource, sys
import _posixsubprocess


def main(job_path, report_fd):
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    os.remove(job_path)  # the nonce is in it
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    exec_, compile_, write, exit_now, nonce = exec, compile, os.write, os._exit, job["nonce"]
    reserve = bytearray(1 << 20)  # freed on MemoryError, so the report can still be built

    def report(outcome, passed, detail):
        line = f"{nonce} {outcome} {passed} {detail.encode('utf-8', 'replace').hex()}\n".encode()
        while line:
            line = line[write(report_fd, line):]
        exit_now(0)  # no atexit handlers, no lingering threads of the program

    def describe(exc):
        try:
            text = f"{type(exc).__name__}: {exc}".strip()
        except BaseException:
            text = "an exception that cannot be printed"
        return text.splitlines()[0][:500]

    memory, cpu, size = job["memory_mb"] << 20, job["cpu_s"], job["max_output_bytes"]
    # SIGXCPU at cpu_s, SIGKILL a second later if the program catches SIGXCPU. RLIMIT_NPROC is
    # not set: it counts every process of the user on the machine, so a low value breaks
    # unrelated work (and the child's own threads); forking is stopped by the hook instead.
    for which, soft, hard in ((resource.RLIMIT_AS, memory, memory), (resource.RLIMIT_CPU, cpu, cpu + 1),
                              (resource.RLIMIT_FSIZE, size, size), (resource.RLIMIT_CORE, 0, 0)):
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))

    root = os.path.realpath(os.getcwd())
    realpath, isabs, isdir, join, readlink = os.path.realpath, os.path.isabs, os.path.isdir, os.path.join, os.readlink
    fspath, fsdecode, unix = os.fspath, os.fsdecode, 1  # AF_UNIX
    forbidden = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
                 "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn", "resource.setrlimit", "resource.prlimit"}
    native = {"ctypes", "_ctypes", "_posixsubprocess"}
    writes = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    # event -> its path arguments, as (index of the path, index of its dir_fd or None)
    paths = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)),
             "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "os.chdir": ((0, None),),
             "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),),
             "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),)}

    def resolve(path, dir_fd=None):
        # The real path an operation touches; None for a descriptor that is no file (a pipe).
        if isinstance(path, int):
            path = readlink(f"/proc/self/fd/{path}")
            return realpath(path) if isabs(path) else None
        path = fsdecode(fspath(path))
        if isinstance(dir_fd, int) and dir_fd >= 0 and not isabs(path):
            base = readlink(f"/proc/self/fd/{dir_fd}")
            return realpath(join(base, path)) if isabs(base) else None
        return realpath(path)

    def inside(real):
        return real is not None and (real == root or real.startswith(root + os.sep))

    def allowed(event, args):
        if event == "import":
            return not (args[0] in native or args[0].startswith("ctypes."))
        if event == "socket.__new__":  # asyncio's self-pipe; connect, bind, send stay blocked
            return args[1] == unix
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):  # a descriptor already open (and checked when opened)
                return True
            real = resolve(path)
            if inside(real) or real == "/dev/null":
                return True
            writing = (flags if isinstance(flags, int) else 0) & writes or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            # An outside directory is refused even for reading: as a dir_fd it would let a
            # relative path escape (the open event does not carry os.open's dir_fd).
            return not writing and not isdir(real)
        return all(inside(resolve(args[i], args[d] if d is not None and d < len(args) else None))
                   for i, d in paths[event])

    def hook(event, args):
        if event in forbidden or (event.startswith(("socket.", "ctypes.")) and event != "socket.__new__"):
            ok = False
        elif event in paths or event in ("open", "import", "socket.__new__"):
            try:
                ok = allowed(event, args)
            except MemoryError:
                raise
            except BaseException:  # arguments the guard cannot resolve are refused
                ok = False
        else:
            return
        if not ok:
            shown = tuple(a[:200] if type(a) in (str, bytes) else a if type(a) is int else "<object>"
                          for a in args[:2])
            report("blocked", 0, f"{event}{shown!r}"[:500])

    def refuse(*args):
        hook("subprocess.Popen", ("_posixsubprocess.fork_exec",))

    # fork_exec starts processes without an audit event; re-importing the module is blocked.
    _posixsubprocess.fork_exec = refuse
    sys.dont_write_bytecode = True  # writing .pyc files next to the stdlib would be blocked
    sys.addaudithook(hook)

    class Sink(io.TextIOBase):  # what the program prints is dropped, however much it is
        def writable(self):
            return True

        def write(self, text):
            return len(text)

    sys.stdout = sys.stderr = Sink()
    module = type(sys)("__candidate__")  # a real module, so dataclasses and pickle work
    sys.modules["__candidate__"] = module
    oom = object()

    def run(source, name):
        # None if the code ran; oom if it ran out of memory; else its error's first line.
        try:
            exec_(compile_(source, name, "exec") if type(source) is str else source, module.__dict__)
        except MemoryError:
            return oom
        except BaseException as exc:
            return describe(exc)
        return None

    try:
        code = compile_(job["program"], "<candidate>", "exec")
    except BaseException as exc:
        code = oom if isinstance(exc, MemoryError) else report("syntax", 0, describe(exc))
    error = oom if code is oom else run(code, "<candidate>")
    passed, first = 0, "" if error is None else f"program: {error}"
    for i, source in enumerate(job["tests"] if error is None else ()):
        error = run(source, f"<test {i}>")
        if error is oom:
            break
        passed += error is None
        first = first or ("" if error is None else f"test {i}: {error}")
    if error is oom:
        reserve.clear()
        report("memory", passed, "MemoryError")
    report("failed" if first else "ok", passed, first)


main(sys.argv[1], int(sys.argv[2]))
'''


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run; every field must be a positive number."""

    timeout_s: float = 2.0  # wall clock of the whole child run; its process group is killed then
    cpu_s: int = 2  # RLIMIT_CPU
    memory_mb: int = 256  # RLIMIT_AS (address space, not resident memory)
    max_output_bytes: int = 65536  # bytes of stdout/stderr read back; RLIMIT_FSIZE too

    def __post_init__(self):
        for name in ("cpu_s", "memory_mb", "max_output_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ConfigError(name, value, "a positive integer")
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (0 < t < math.inf):
            raise ConfigError("timeout_s", t, "a positive, finite number of seconds")


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class SandboxResult:
    """What one run gave: ``outcome`` is one of :data:`OUTCOMES`; ``detail`` says why, briefly."""

    passed: int  # tests that ran without an exception
    total: int
    outcome: str
    detail: str

    @property
    def fraction(self) -> float:
        """``passed / total`` for ``"ok"`` and ``"failed"`` runs (1.0 for ``"ok"``); 0.0 for
        every other outcome, so a program that timed out or was blocked earns nothing."""
        if self.outcome == "ok":
            return 1.0
        return self.passed / self.total if self.outcome == "failed" and self.total else 0.0


def _wait(pid: int, deadline: float) -> bool:
    """Wait until the child exits or ``deadline`` passes; True if it exited. The child is left
    unreaped, so its process group id cannot be reused before the group is killed."""
    delay = 0.001
    with contextlib.suppress(ChildProcessError):  # already reaped (SIGCHLD ignored): it exited
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.02)
    return True


def _report(fd: int, nonce: str, total: int) -> SandboxResult | None:
    """The last line in the report pipe that carries this run's nonce (read without blocking,
    at most ``_REPORT_BYTES``), or None if there is none."""
    os.set_blocking(fd, False)
    data, found = b"", None
    with contextlib.suppress(BlockingIOError):
        while len(data) < _REPORT_BYTES and (chunk := os.read(fd, _REPORT_BYTES - len(data))):
            data += chunk
    for line in data.decode(errors="replace").split("\n"):
        parts = line.split(" ")
        if len(parts) == 4 and parts[0] == nonce and parts[1] in OUTCOMES and parts[2].isdigit():
            with contextlib.suppress(ValueError):
                detail = bytes.fromhex(parts[3]).decode(errors="replace")[:_DETAIL_CHARS]
                found = SandboxResult(min(int(parts[2]), total), total, parts[1], detail)
    return found


def run_tests(program: str, tests: Sequence[str], limits: SandboxLimits = DEFAULT_LIMITS) -> SandboxResult:
    """Run ``program``, then each test in order in the program's namespace, in a fresh
    sandboxed interpreter; a test passes when it raises nothing. Raises only for bad arguments
    (:class:`InputError`, :class:`ConfigError`), never for what the program does."""
    if not isinstance(program, str):
        raise InputError(f"run_tests: the program must be a str, not {type(program).__name__}")
    if isinstance(tests, str) or not isinstance(tests, Sequence) or not all(isinstance(t, str) for t in tests):
        raise InputError("run_tests: tests must be a sequence of str (one source text per test)")
    if not isinstance(limits, SandboxLimits):
        raise ConfigError("limits", limits, "a SandboxLimits")
    nonce, total = secrets.token_hex(16), len(tests)
    with tempfile.TemporaryDirectory(prefix="decodekit-sandbox-", ignore_cleanup_errors=True) as root:
        work, job, log = (os.path.join(root, name) for name in ("work", "job.json", "output"))
        os.mkdir(work)  # the child's only writable place; job and log sit outside it
        with open(job, "w", encoding="utf-8") as f:
            json.dump({"nonce": nonce, "program": program, "tests": list(tests), "cpu_s": int(limits.cpu_s),
                       "memory_mb": int(limits.memory_mb), "max_output_bytes": int(limits.max_output_bytes)}, f)
        read_end, write_end = os.pipe()
        try:
            with open(log, "wb") as out:
                try:
                    # -s -S -B and an env built from nothing isolate like -I, which would also
                    # ignore PYTHONHASHSEED (-E) and so change set and hash orders between runs.
                    proc = subprocess.Popen(
                        [sys.executable, "-s", "-S", "-B", "-c", _RUNNER, job, str(write_end)],
                        cwd=work, env={"PYTHONHASHSEED": "0", "TMPDIR": work}, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=out, pass_fds=(write_end,), start_new_session=True)
                finally:
                    os.close(write_end)
            try:
                exited = _wait(proc.pid, time.monotonic() + limits.timeout_s)
            finally:
                with contextlib.suppress(OSError):  # the group: whatever the program started dies too
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            result = _report(read_end, nonce, total)
        finally:
            os.close(read_end)
        with open(log, "rb") as f:
            output = f.read(limits.max_output_bytes)
    code = proc.returncode
    if not exited:
        return SandboxResult(0, total, "timeout", f"wall-clock limit of {limits.timeout_s:g} s exceeded")
    if result is not None:
        return result
    if code in (-signal.SIGXCPU, -signal.SIGKILL):  # RLIMIT_CPU's soft and hard limits
        return SandboxResult(0, total, "timeout", f"CPU limit of {limits.cpu_s} s exceeded")
    if b"MemoryError" in output or b"Cannot allocate memory" in output:
        return SandboxResult(0, total, "memory", "out of memory before the report was written")
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    lines = output.decode(errors="replace").strip().splitlines()
    return SandboxResult(0, total, "crashed", (f"{how}: {lines[0]}" if lines else how)[:_DETAIL_CHARS])


def _segment(source: str, node: ast.stmt) -> str:
    decorators = "".join(f"@{ast.get_source_segment(source, d)}\n" for d in getattr(node, "decorator_list", ()))
    return decorators + ast.get_source_segment(source, node) + "\n"


def tests_from_source(source: str, filename: str = "<tests>") -> list[str]:
    """Self-contained test texts from a tests module, for :func:`run_tests`.

    With top-level ``test_*`` functions: one test per function, made of every other top-level
    statement (imports, helpers, constants), the function, and a call of it. Without: one test
    per top-level ``assert`` or bare expression (e.g. ``check(candidate)``), preceded by the
    other statements above it. Raises :class:`InputError` naming ``filename`` and the line on a
    syntax error, on a test function that needs arguments, and when there is no test."""
    try:
        body = ast.parse(source, filename).body
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes
        where = f"{filename}, line {exc.lineno}" if getattr(exc, "lineno", None) else filename
        raise InputError(f"{where}: the tests do not parse: {getattr(exc, 'msg', exc)}") from None
    functions = [n for n in body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    for fn in functions:
        a = fn.args
        if len(a.posonlyargs) + len(a.args) > len(a.defaults) or None in a.kw_defaults:
            raise InputError(f"{filename}, line {fn.lineno}: {fn.name} takes arguments, but tests are "
                             "called without any (pytest fixtures are not supported)")
    if functions:
        setup = "".join(_segment(source, n) for n in body if n not in functions)
        tests = [f"{setup}{_segment(source, fn)}{fn.name}()\n" for fn in functions]
    else:
        tests, setup = [], ""
        for node in body:
            if isinstance(node, ast.Assert) or isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant):
                tests.append(setup + _segment(source, node))
            else:  # imports, definitions, assignments, docstrings
                setup += _segment(source, node)
    if not tests:
        raise InputError(f"{filename}: no tests: define test_* functions, or write top-level asserts or calls")
    return tests


def tests_from_file(path) -> list[str]:
    """:func:`tests_from_source` on a UTF-8 file; :class:`InputError` naming it if unreadable."""
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the tests file {path}: {exc}") from None
    return tests_from_source(source, str(path))
