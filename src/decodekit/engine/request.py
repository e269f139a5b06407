"""Requests submitted to the :class:`~decodekit.engine.core.Engine`, their handles and events.

A :class:`Request` is one prompt with everything that decides how it is decoded: the strategy
config, the options, its own seed, extra processors and a stop check. ``Engine.submit`` returns
a :class:`RequestHandle` per request; iterate it for :class:`EngineEvent` s or call
:meth:`RequestHandle.result`. Waiting on a handle drives the engine (whichever caller waits runs
steps for every request in flight, one thread at a time), so no background thread is needed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from decodekit.errors import DecodeKitError
from decodekit.options import DecodeOptions
from decodekit.search.base import Hypothesis

if TYPE_CHECKING:
    from decodekit.engine.core import Engine

_ids = itertools.count()


class AbortedError(DecodeKitError):
    """The request was aborted before it finished."""


@dataclass(frozen=True, eq=False)
class Request:
    """One prompt to decode.

    ``prompt``: token ids. ``strategy``: a strategy config (``Greedy()``, ``Sampling(...)``,
    ``BeamSearch(...)``, ...). ``seed``: this request's own random seed (None: the strategy's
    ``seed``, and if that is None too, unseeded and random); its draws never depend on other
    requests. ``processors``: a factory returning
    extra processors (e.g. a constraint) for the rows of the requests submitted together;
    ``stop_check``: ``(rows, t)`` generated ids -> ``(rows,)`` bool, stop strings. ``stream``:
    emit per-step events. ``stopping``: ``(history, scores) -> (rows,)`` bool, stopping
    criteria (:class:`~decodekit.logits.custom.Stopping`). ``index``: the prompt's position
    in the call that submitted it (what ``prefix_allowed_tokens_fn`` sees as ``batch_id``). ``id``: unique; generated if not given."""

    prompt: list[int]
    strategy: Any
    options: DecodeOptions = field(default_factory=DecodeOptions)
    seed: int | None = None
    processors: Callable[[], list] | None = None
    stop_check: Callable | None = None
    search_context: dict | None = None
    stream: bool = False
    stopping: Callable | None = None
    index: int = 0
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")


@dataclass(frozen=True)
class EngineEvent:
    """What happened to a request in one step.

    ``kind``: ``"tokens"`` (row ``row`` appended ``tokens`` with ``logprobs``; greedy, sampling
    and speculative rows, which may append several at once), ``"best"`` (beam searches: the
    current best hypothesis, ``tokens`` = its whole token list) or ``"finished"`` (the row or
    request ended with ``finish_reason``; for the request's last event ``output`` is set)."""

    kind: str
    row: int
    step: int
    tokens: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    finish_reason: str | None = None
    top: tuple | None = None
    """With ``top_logprobs``: per appended token, ``(ids, log-probs)`` of the most likely."""
    output: RequestOutput | None = None


@dataclass(frozen=True)
class RequestOutput:
    """A finished request: its hypotheses (best first; samples in draw order), speculative
    statistics (or None) and the processors its rows ran through (for constraint review)."""

    hypotheses: list[Hypothesis]
    stats: Any = None
    processors: tuple = ()
    scores_logprobs: bool = False
    """Whether the search's processors ran on log-probs (beam searches) rather than logits."""


class RequestHandle:
    """The caller's side of a submitted request: iterate for events, or wait for the result."""

    def __init__(self, engine: Engine, request: Request):
        self.engine, self.request, self.id = engine, request, request.id
        self._events: deque[EngineEvent] = deque()
        self._output: RequestOutput | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._signal = threading.Condition()  # new events or the end (background driving)

    # -- engine side ------------------------------------------------------------------------

    def _emit(self, event: EngineEvent) -> None:
        if self.request.stream:
            with self._signal:
                self._events.append(event)
                self._signal.notify_all()

    def _finish(self, output: RequestOutput | None, error: BaseException | None = None) -> None:
        with self._signal:
            if self._done.is_set():
                return
            self._output, self._error = output, error
            self._done.set()
            self._signal.notify_all()

    def _wait(self, ready, timeout: float | None = None) -> None:
        """Until ``ready()`` (or ``timeout``): wait for the engine's background thread while it
        runs one, else drive the engine (whichever caller waits runs the steps)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if not self.engine.in_background:
                self.engine.drive(ready, left)
                return
            with self._signal:
                self._signal.wait_for(ready, 0.25 if left is None else min(left, 0.25))

    # -- caller side ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> RequestOutput:
        """Wait (driving the engine) until the request has finished; raise its error if it failed."""
        self._wait(lambda: self.done, timeout)
        if not self.done:
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._output

    def __iter__(self) -> Iterator[EngineEvent]:
        """Events as they happen (requires ``stream=True``), then the final ``finished`` event."""
        while True:
            self._wait(lambda: bool(self._events) or self.done)
            while self._events:
                yield self._events.popleft()
            if self.done and not self._events:
                break
        if self._error is not None:
            raise self._error
        yield EngineEvent("finished", -1, -1, output=self._output)

    def poll(self) -> Iterator[EngineEvent | None]:
        """Like iterating, but never waits: ``None`` whenever nothing new has happened yet
        (for callers that wait elsewhere, e.g. on an event loop woken by the engine)."""
        while True:
            while self._events:
                yield self._events.popleft()
            if self.done and not self._events:
                break
            yield None
        if self._error is not None:
            raise self._error
        yield EngineEvent("finished", -1, -1, output=self._output)

    def abort(self) -> None:
        """Stop decoding this request; its rows leave the batch at the next step."""
        self.engine.abort(self.id)


def same_group(a: Request, b: Request) -> bool:
    """Whether two requests can be decided together (one search over their rows)."""
    return (
        a.strategy is b.strategy or a.strategy == b.strategy
    ) and a.options == b.options and a.processors is b.processors and a.stop_check is b.stop_check and a.search_context is b.search_context and a.stopping is b.stopping
