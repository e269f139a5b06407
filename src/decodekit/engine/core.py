"""The engine: one loop for every request (continuous batching).

Requests are submitted in groups (the requests of one call share a strategy, options and
processors); between steps the scheduler admits pending groups (prefill once, fan out to beams or
samples, then their rows join a running state) and retires finished ones (their rows leave, the
cache slots are reused). Per step:

1. admit pending groups (prefill; merge their rows into the shared state where the model allows);
2. every group decides its rows from its slice of the state's logits (vectorised per group:
   one ``search.step`` for all its requests);
3. one host sync for every group's ``[non-finite, done]`` flags;
4. finished and aborted groups are retired and their outputs delivered; a group whose logits
   were not finite fails with :class:`~decodekit.errors.NumericalError`, alone;
5. one forward per state advances every remaining row (``advance(parents, tokens)``);
6. speculative groups take one draft-and-verify step each.

Threads: callers only ``submit`` and wait on handles; waiting drives the engine, and a lock
makes sure one thread at a time runs steps. Nothing is patched per call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from decodekit.engine.checks import check_group, check_prompts
from decodekit.engine.group import PlainGroup, deliver, deliver_error
from decodekit.engine.limits import check_memory, model_error
from decodekit.engine.placement import place, pool_key, prefill, started, target_partition
from decodekit.engine.request import AbortedError, Request, RequestHandle, same_group
from decodekit.engine.speculative import SpeculativeGroup
from decodekit.engine.step import Clock, FusedPrefill, Partition, drop_aborted, step_partitions
from decodekit.errors import ConfigError


class Engine:
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
            request = self._resolved(request)
            if batches and same_group(batches[-1][0], request):
                batches[-1].append(request)
            else:
                batches.append([request])
        entries = [self._entry([RequestHandle(self, r) for r in batch]) for batch in batches]
        with self._lock:
            self._pending.extend(entries)
        with self._changed:
            self._changed.notify_all()
        return [h for entry in entries for h in (entry.handles if isinstance(entry, PlainGroup) else entry)]

    def _resolved(self, request: Request) -> Request:
        """The request with a ``max_length`` turned into its own ``max_new_tokens``."""
        options = request.options
        if getattr(options, "max_length", None) is None:
            return request
        options.validate(self.model.vocab_size)
        if not isinstance(request.prompt, Sequence):
            return request  # refused by check_prompts in _entry
        return dataclasses.replace(request, options=options.for_prompt(len(request.prompt), self.model.is_encoder_decoder))

    def _entry(self, handles: list[RequestHandle]):
        first = handles[0].request
        strategy, options, model = first.strategy, first.options, self.model
        if not hasattr(strategy, "begin") or not hasattr(strategy, "validate"):
            raise ConfigError("strategy", strategy, "a strategy config object (Greedy(), Sampling(...), BeamSearch(...), ...)")
        if not hasattr(options, "validate"):
            raise ConfigError("options", options, "a DecodeOptions object")
        prompts = [h.request.prompt for h in handles]
        if getattr(strategy, "speculative", None) is not None:
            from decodekit.speculative import check_supported

            check_supported(strategy, options)
            if options.guidance_scale != 1.0:
                raise ConfigError("guidance_scale", options.guidance_scale, "1 with speculative decoding (the unconditional rows cannot follow a draft)")
            strategy.validate()
            options.validate(model.vocab_size)
            check_prompts(model, prompts, options)
            check_memory(model, strategy, prompts, options)
            from decodekit.speculative import check_target, drafts_trees

            check_target(model, strategy, options)

            if first.stopping is not None:
                raise ConfigError("stopping", first.stopping, "None with speculative decoding (custom stopping criteria run with plain decoding)")
            if first.processors is not None and drafts_trees(strategy.speculative):
                raise ConfigError("constraint", "...", "chain drafts with speculative decoding (ngram, draft, suffix without tree): tree drafts are not supported with a constraint")
            config = strategy.speculative.resolved()
            if strategy.speculative.proposer == "recycling" and config.top_k > model.vocab_size:
                raise ConfigError("speculative.config.top_k", config.top_k, f"at most the vocabulary size {model.vocab_size}")
            return handles
        strategy.validate()
        options.validate(model.vocab_size)
        check_prompts(model, prompts, options)
        check_memory(model, strategy, prompts, options)
        if options.dry_multiplier > 0 and any(isinstance(b, str) for b in options.dry_sequence_breakers):
            raise ConfigError("dry_sequence_breakers", options.dry_sequence_breakers, "token ids here (Decoder.generate resolves strings with its tokenizer)")
        group = PlainGroup(model, handles)
        check_group(model, group)
        if options.max_time is not None and not hasattr(group.search, "time_out"):
            raise ConfigError("max_time", options.max_time, f"None with {strategy.name!r}: a time limit ends per-row strategies (greedy, sample) only")
        if first.stopping is not None and not group.search.supports_stop_strings:
            raise ConfigError("stopping", first.stopping, f"None with {strategy.name!r}: stopping criteria end single rows of per-row strategies (greedy, sample)")
        ends_at_stop = group.search.supports_stop_strings or getattr(group.search, "ends_candidates_at_stop_strings", False)
        if options.stop and not ends_at_stop:
            raise ConfigError("stop", options.stop, f"stop strings work with greedy, sample and beam, not {strategy.name!r}; use EOS ids")
        return group

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
            self._partitions = step_partitions(self.model, self._partitions, self.clock, self.steps, fused)
            if fused is not None:
                self._place_fused(fused)
            self._step_speculative()
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

    # -- admission --------------------------------------------------------------------------

    def _admit(self) -> None:
        """Admit pending entries in arrival order while rows are free. Greedy/sampling groups
        of one kind are prefilled together (one forward per kind), whatever their order."""
        with self._lock:
            pending = list(self._pending)
        admitted = []
        pooled: dict[tuple, list[PlainGroup]] = {}
        plain: list[PlainGroup] = []
        for entry in pending:
            handles = entry if isinstance(entry, list) else entry.handles
            if all(h.done for h in handles):  # aborted while queued
                admitted.append(entry)
                continue
            rows = self.running_rows + sum(g.rows for group in pooled.values() for g in group) + sum(g.rows for g in plain)
            need = entry.rows if isinstance(entry, PlainGroup) else len(handles) * getattr(handles[0].request.strategy, "n", 1)
            if rows and rows + need > self.max_rows:
                break
            if isinstance(entry, PlainGroup):
                if entry.poolable:
                    pooled.setdefault(pool_key(entry), []).append(entry)
                else:
                    plain.append(entry)
                admitted.append(entry)
            elif self._admit_speculative(handles):
                admitted.append(entry)
        # Subtle: where the lean step can, greedy/sampling groups are prefilled in the forward of
        # the partition they join (one set of kernel calls per step, not two); they decide their
        # first token in the next step.
        target = target_partition(self.model, self._partitions) if getattr(self.model, "can_fuse_prefill", False) else None
        if target is not None and pooled:
            self._fused = FusedPrefill(target, list(pooled.values()))
        else:
            for groups in pooled.values():
                self._admit_groups(groups)
        for group in plain:
            self._admit_groups([group])
        if admitted:
            with self._lock:
                self._pending = [e for e in self._pending if not any(e is a for a in admitted)]

    def _admit_groups(self, groups: list[PlainGroup]) -> None:
        """Prefill groups in one forward (greedy/sampling groups of one kind, or one group),
        then their rows join the running state (:mod:`decodekit.engine.placement`)."""
        state = prefill(self.model, groups, self.clock)
        if state is not None:
            place(self.model, self._partitions, groups, state)

    def _place_fused(self, fused: FusedPrefill) -> None:
        """After a step whose forward prefilled ``fused``'s prompts: set their groups up and
        place their rows, one pool kind at a time (prefilled apart if the forward did not run)."""
        if fused.state is None:
            for groups in fused.kinds:
                self._admit_groups(groups)
            return
        at = 0
        for groups in fused.kinds:
            count = sum(len(g.prompts) for g in groups)
            rows = torch.arange(at, at + count, device=fused.state.logits.device)
            part = fused.state if len(fused.kinds) == 1 else self.model.fork(fused.state, rows)
            at += count
            try:
                started(self.model, groups, part)
            except Exception as error:
                for group in groups:
                    deliver_error(group.handles, model_error(self.model, "prefill", error))
                continue
            place(self.model, self._partitions, groups, part)

    def _admit_speculative(self, handles: list[RequestHandle]) -> bool:
        """Start a speculative group if its proposer is free, or join the running group that
        holds it where it accepts these requests; else they stay queued."""
        from decodekit.speculative import make_proposer

        key = handles[0].request.strategy.speculative
        if key in self._busy:
            group = next((g for g in self._speculative if g.key == key), None)
            if group is None or not group.accepts(handles):
                return False
            try:
                group.join(handles)
            except Exception as error:  # these requests fail alone; the run goes on
                deliver_error(handles, model_error(self.model, "prefill", error))
            return True
        try:
            if key not in self._proposers:
                self._proposers[key] = make_proposer(key, self.model)
                while len(self._proposers) > self.max_proposers:
                    oldest = next(k for k in self._proposers if k not in self._busy and k != key)
                    del self._proposers[oldest]
            self._proposers.move_to_end(key)
            group = SpeculativeGroup(self.model, handles, self._proposers[key])
        except Exception as error:
            deliver_error(handles, model_error(self.model, "speculative set-up", error))
            return True
        group.key = key
        self._busy.add(key)
        self._speculative.append(group)
        return True

    # -- speculative groups -----------------------------------------------------------------

    def _step_speculative(self) -> None:
        still = []
        for group in self._speculative:
            before = group.run.model_seconds
            try:
                finished = group.advance() or all(h.done for h in group.handles)
            except Exception as error:
                group.error, finished = model_error(self.model, "a speculative step", error), True
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
