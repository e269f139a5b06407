"""The engine: one loop for every request (continuous batching).

Requests are submitted in groups (the requests of one call share a strategy, options and
processors); between steps the scheduler admits pending groups (prefill once, fan out to beams or
samples, then their rows join a running state: :mod:`decodekit.engine.admission`) and retires
finished ones (their rows leave, the cache slots are reused). Per step:

1. admit pending groups (prefill, or mark greedy/sampling groups for the step's own forward;
   speculative requests start or join their proposer's run);
2. every group decides its rows from its slice of the state's logits (vectorised per group:
   one ``search.step`` for all its requests);
3. one host sync for every group's ``[non-finite, done]`` flags;
4. finished and aborted groups are retired and their outputs delivered; a group whose logits
   were not finite fails with :class:`~decodekit.errors.NumericalError`, alone;
5. one forward per state advances every remaining row (``advance(parents, tokens)``), and
   prefills the marked groups where the lean step can (``advance_and_start``), whose rows
   then join the state;
6. each speculative run takes one draft-and-verify step for all its rows.

Threads: callers only ``submit`` and wait on handles; waiting drives the engine, and a lock
makes sure one thread at a time runs steps. Nothing is patched per call.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from decodekit.engine.admission import Admission
from decodekit.engine.entry import queued_entry, resolved
from decodekit.engine.group import PlainGroup, deliver, deliver_error
from decodekit.engine.limits import model_error
from decodekit.engine.request import AbortedError, Request, RequestHandle, same_group
from decodekit.engine.speculative import SpeculativeGroup
from decodekit.engine.step import (
    Clock,
    FusedBlocks,
    FusedPrefill,
    Partition,
    drop_aborted,
    step_partitions,
    verify_blocks,
)
from decodekit.errors import ConfigError


class Engine(Admission):
    """Owns a :class:`~decodekit.model.base.LanguageModel` and decodes every request submitted
    to it. ``max_rows``: rows admitted at once (a larger group still runs, alone).
    ``proposers``: speculative proposers kept (least recently used dropped first); each is
    keyed by its full config and driven by one speculative run at a time, so cross-request
    state (a global suffix tree, a successor matrix) is never shared by two decodings at once;
    later requests with the same config join that run where it allows
    (:mod:`decodekit.engine.speculative`), else wait for it."""

    def __init__(self, model, *, max_rows: int = 256, proposers: int = 4):
        self.model, self.max_rows, self.max_proposers = model, max_rows, proposers
        self._lock = threading.Lock()  # pending queue and aborts
        self._step_lock = threading.Lock()  # held by the one thread running steps
        self._changed = threading.Condition()
        self._pending: list[PlainGroup | list[RequestHandle]] = []
        self._partitions: list[Partition] = []
        self._speculative: list[SpeculativeGroup] = []
        self._proposers: OrderedDict = OrderedDict()
        self._busy: set = set()
        self._fused: FusedPrefill | None = None  # this step's new groups, prefilled in its forward
        self.steps = 0
        self.clock = Clock()  # time inside model calls (prefill and steps)
        self.step_seconds = 0.0  # time inside step() in all
        self.trace: list[tuple[int, float, float]] | None = None
        """Set to a list to record ``(rows, step seconds, model seconds)`` per step (benches)."""
        self.fuse_verification = True
        """Speculative runs verify their blocks as parts of the plain rows' forward where the
        model's lean step allows (False: in forwards of their own; for comparison)."""
        self.pool_beams = True
        """Separately arrived beam searches of one config share a :class:`~decodekit.engine.beam_pool.BeamPool`
        (False: each call's a group of its own; ``bench/bench_serving.py --strategy beam`` compares)."""
        self._background: threading.Thread | None = None
        self._closing = False
        self._listeners: list[Callable[[], None]] = []

    # -- submitting -------------------------------------------------------------------------

    def submit(self, requests: Request | Sequence[Request]) -> list[RequestHandle]:
        """Queue requests; returns one handle per request. Consecutive requests that share
        strategy, options, processors and stop check form one group (one prefill, one search).
        Every setting is checked here, before any model call: a bad one raises."""
        if isinstance(requests, Request):
            requests = [requests]
        requests = list(requests)
        if not requests:
            raise ConfigError("requests", requests, "at least one Request")
        batches: list[list[Request]] = []
        for request in requests:
            if not isinstance(request, Request):
                raise ConfigError("requests", request, "decodekit.engine.Request objects")
            request = resolved(self.model, request)
            # a model whose rotary frequencies or positions follow the batch (batch_invariant False): one group each
            if batches and same_group(batches[-1][0], request) and getattr(self.model, "batch_invariant", True):
                batches[-1].append(request)
            else:
                batches.append([request])
        entries = [queued_entry(self.model, [RequestHandle(self, r) for r in batch]) for batch in batches]
        with self._lock:
            self._pending.extend(entries)
        with self._changed:
            self._changed.notify_all()
        return [h for entry in entries for h in (entry.handles if isinstance(entry, PlainGroup) else entry)]

    def abort(self, request_id: str) -> None:
        """Abort a request: it fails with :class:`AbortedError` now; its rows leave the batch
        once every request of its group is done: at once if no thread is stepping, else when
        the stepping thread releases the engine (no later request is needed to free them)."""
        with self._lock:
            for entry in self._pending + [g for p in self._partitions for g in p.groups] + self._speculative:
                handles = entry.handles if not isinstance(entry, list) else entry
                for handle in handles:
                    if handle.id == request_id:
                        handle._finish(None, AbortedError(f"request {request_id} was aborted"))
        if self._step_lock.acquire(blocking=False):  # nobody is stepping: its rows leave now
            try:
                self._drop_aborted()
            finally:
                self._step_lock.release()
        with self._changed:
            self._changed.notify_all()

    def _drop_aborted(self) -> None:
        """Free the rows of aborted requests (call with the step lock held). Whoever holds the
        lock calls it before releasing it, so an aborted request's rows never wait for a
        later request to step them out."""
        self._partitions = drop_aborted(self.model, self._partitions)
        still = []
        for group in self._speculative:
            if any(h.done for h in group.handles) and group.prune():
                self._busy.discard(group.key)
            else:
                still.append(group)
        self._speculative = still

    # -- driving ----------------------------------------------------------------------------

    @property
    def forward_seconds(self) -> float:
        """Seconds spent inside model calls so far (prefill and steps)."""
        return self.clock.model_seconds

    @property
    def running_rows(self) -> int:
        return sum(g.rows for p in self._partitions for g in p.groups) + sum(g.rows for g in self._speculative)

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def prompt_cache_hits(self) -> int:
        """Prompts whose prefill the model's prompt cache saved so far (0 without one)."""
        cache = getattr(self.model, "prompt_cache", None)
        return cache.hits if cache is not None else 0

    @property
    def prompt_cache_prefix_tokens(self) -> int:
        """Prompt tokens taken from cached prefixes of other prompts so far (0 without a cache)."""
        cache = getattr(self.model, "prompt_cache", None)
        return cache.prefix_tokens if cache is not None else 0

    def drive(self, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Run steps (or wait for the thread running them) until ``ready()`` or ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            if deadline is not None and time.monotonic() >= deadline:
                return
            if self._step_lock.acquire(blocking=False):
                progressed = False
                try:
                    while not ready() and (deadline is None or time.monotonic() < deadline):
                        if not self.step():
                            break
                        progressed = True
                finally:
                    try:
                        self._drop_aborted()
                    finally:
                        self._step_lock.release()
                    with self._changed:
                        self._changed.notify_all()
                if not progressed and not ready():
                    with self._changed:
                        self._changed.wait(0.01)
            else:
                with self._changed:
                    self._changed.wait(0.05)

    @contextlib.contextmanager
    def exclusive(self):
        """Hold the step lock for the block: no engine step runs meanwhile, so the caller may
        drive the model directly (scoring, test-time search trees). Yields the model."""
        with self._step_lock:
            yield self.model

    # -- background driving (servers) -------------------------------------------------------

    @property
    def in_background(self) -> bool:
        return self._background is not None

    def run_in_background(self) -> None:
        """Step in a thread of the engine's own whenever there is work, so that callers only
        wait (each on its own request). For many concurrent callers (a server): no step waits
        for a caller to take its turn. ``stop_background()`` ends it."""
        if self._background is not None:
            return
        self._closing = False
        self._background = threading.Thread(target=self._run, name="decodekit-engine", daemon=True)
        self._background.start()

    def stop_background(self, timeout: float | None = 30.0) -> None:
        """End the background thread (after its current step); callers drive again."""
        thread = self._background
        if thread is None:
            return
        self._closing = True
        with self._changed:
            self._changed.notify_all()
        thread.join(timeout)
        self._background = None

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the background thread) after every background step, e.g.
        to wake an event loop whose requests may have new events."""
        self._listeners.append(listener)

    def _has_work(self) -> bool:
        return bool(self._pending or self._partitions or self._speculative)

    def _run(self) -> None:
        while not self._closing:
            with self._changed:
                self._changed.wait_for(lambda: self._closing or self._has_work(), 0.5)
            if self._closing:
                break
            with self._step_lock:
                try:
                    while self._has_work() and not self._closing and self.step():
                        self._notify()
                except Exception:  # step() already failed every request in flight with it
                    pass
                finally:
                    self._drop_aborted()
            self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def step(self) -> bool:
        """One engine step for every request in flight; False when there was nothing to do.
        Call with the step lock held (``drive`` does)."""
        began, model_before = time.perf_counter(), self.forward_seconds
        try:
            self._admit()
            if not self._partitions and not self._speculative:
                return False
            fused, self._fused = self._fused, None
            blocks = self._prepare_speculative(fused)
            settled = self._notify if self._listeners and threading.current_thread() is self._background else None
            self._partitions = step_partitions(self.model, self._partitions, self.clock, self.steps, fused, blocks, settled)
            if fused is not None:
                self._place_fused(fused)
            if blocks is not None and blocks.target is None:
                verify_blocks(self.model, blocks, self.clock)
            self._step_speculative(blocks)
            self.steps += 1
            return True
        except BaseException as error:  # a bug or an interrupt: nothing in flight can continue
            self._fail_all(error)
            raise
        finally:
            elapsed = time.perf_counter() - began
            self.step_seconds += elapsed
            if self.trace is not None:
                self.trace.append((self.running_rows, elapsed, self.forward_seconds - model_before))
            with self._changed:
                self._changed.notify_all()

    # -- speculative groups -----------------------------------------------------------------

    def _prepare_speculative(self, fused) -> FusedBlocks | None:
        """The blocks of the speculative runs that verify in the forward of the plain rows'
        step (the partition a fused prefill joins, else the first that can take them); with no
        plain rows, of two or more runs that verify in one forward together."""
        if not self._speculative or not self.fuse_verification or not getattr(self.model, "can_fuse_prefill", False):
            return None
        targets = [p for p in self._partitions if "mask" in p.state.extra and "record" not in p.state.extra]
        target = fused.target if fused is not None else (targets[0] if targets else None)
        if target is not None and target not in targets:
            return None
        ready = [g for g in self._speculative if g.fusable]
        if target is None and len(ready) < 2:  # no forward to share
            return None
        entries = []
        for group in ready:
            try:
                block = group.prepare()
            except Exception as error:
                group.error = model_error(self.model, "a speculative step", error)
                continue
            if block is not None:
                entries.append((group, block))
        return FusedBlocks(target, entries) if entries else None

    def _step_speculative(self, blocks: FusedBlocks | None = None) -> None:
        prepared = {id(group): (i, block) for i, (group, block) in enumerate(blocks.entries)} if blocks is not None else {}
        still = []
        for group in self._speculative:
            before = group.run.model_seconds
            try:
                if group.error is not None:
                    raise group.error
                if id(group) not in prepared:
                    finished = group.advance()
                elif blocks.error is not None:
                    raise blocks.error
                elif blocks.logits is None:  # the plain rows' forward did not run
                    finished = group.verify_alone(prepared[id(group)][1])
                else:
                    i, block = prepared[id(group)]
                    finished = group.complete(block, blocks.logits[i], blocks.seconds)
                    before = group.run.model_seconds  # the forward is the plain rows' (counted)
                finished = finished or all(h.done for h in group.handles)
            except Exception as error:
                group.error, finished = error if error is group.error else model_error(self.model, "a speculative step", error), True
            self.clock.model_seconds += group.run.model_seconds - before
            if finished:
                self._busy.discard(group.key)
                deliver(group)
            else:
                still.append(group)
        self._speculative = still

    def _fail_all(self, error: BaseException) -> None:
        for partition in self._partitions:
            for group in partition.groups:
                deliver_error(group.handles, error)
        for group in self._speculative:
            deliver_error(group.handles, error)
        self._partitions, self._speculative, self._busy = [], [], set()
