"""An outcome reward that runs each candidate program against tests in the sandbox."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from decodekit.errors import ConfigError, InputError
from decodekit.testtime.sandbox import (
    DEFAULT_LIMITS,
    SandboxLimits,
    SandboxResult,
    run_tests,
    tests_from_file,
)

# Each worker only waits on its child process; two keep a small machine responsive.
_WORKERS = 2


def _concatenate(prompt: str, completion: str) -> str:
    return prompt + completion


class ExecutableReward:
    """Outcome reward: the fraction of tests a candidate program passes in the sandbox (cite:
    PG-TD, Zhang et al. 2023, "Planning with Large Language Models for Code Generation", which
    uses the pass rate of the given tests as the reward).

    The program of a completion is ``program(prompt, completion)`` (default: the prompt followed
    by the completion). Results are cached by program text in an LRU of ``cache_size`` entries
    (thread-safe); ``calls`` counts the sandbox runs actually made, ``lookups`` the completions
    :meth:`score` was asked about. A program that times out, runs out of memory, does not
    compile, crashes or attempts a blocked operation scores 0.0 (see :mod:`.sandbox`).
    """

    kind = "outcome"

    def __init__(self, tests: Sequence[str], *, limits: SandboxLimits = DEFAULT_LIMITS,
                 program: Callable[[str, str], str] | None = None, cache_size: int = 4096):
        if isinstance(tests, str) or not isinstance(tests, Sequence) or not tests or not all(
                isinstance(t, str) for t in tests):
            raise ConfigError("tests", tests, "a non-empty sequence of test source texts (str)")
        if not isinstance(limits, SandboxLimits):
            raise ConfigError("limits", limits, "a SandboxLimits")
        if program is not None and not callable(program):
            raise ConfigError("program", program, "None or a callable (prompt, completion) -> program text")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigError("cache_size", cache_size, "an integer >= 1")
        self.tests, self.limits = tuple(tests), limits
        self._program = program or _concatenate
        self._cache: OrderedDict[str, SandboxResult] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.calls = 0
        self.lookups = 0

    @classmethod
    def from_file(cls, path, **kwargs) -> ExecutableReward:
        """The reward for the tests in a tests file (see :func:`.sandbox.tests_from_file`)."""
        return cls(tests_from_file(path), **kwargs)

    def _text(self, prompt: str, completion: str) -> str:
        text = self._program(prompt, completion)
        if not isinstance(text, str):
            raise InputError(f"ExecutableReward: program(prompt, completion) returned {type(text).__name__}, not str")
        return text

    def _run(self, text: str) -> SandboxResult:
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        # Outside the lock: runs of other programs proceed meanwhile.
        result = run_tests(text, self.tests, self.limits)
        with self._lock:
            self.calls += 1
            self._cache[text] = result
            self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def result(self, prompt: str, completion: str) -> SandboxResult:
        """The full sandbox result of one completion's program (cached)."""
        return self._run(self._text(prompt, completion))

    def score(self, prompt: str, completions: Sequence[str]) -> list[float]:
        """One float in [0, 1] per completion, in order: the fraction of tests its program
        passes. Distinct programs run at most two at a time; equal ones run once."""
        if isinstance(completions, str) or not isinstance(completions, Sequence):
            raise InputError("ExecutableReward.score: completions must be a sequence of str")
        texts = [self._text(prompt, c) for c in completions]
        with self._lock:
            self.lookups += len(texts)
        distinct = list(dict.fromkeys(texts))
        if len(distinct) > 1:
            with ThreadPoolExecutor(max_workers=min(_WORKERS, len(distinct))) as pool:
                results = dict(zip(distinct, pool.map(self._run, distinct)))
        else:
            results = {text: self._run(text) for text in distinct}
        return [results[text].fraction for text in texts]
