"""Speculative requests in the engine: one speculative run per proposer, that later requests
join between steps when nothing in it depends on the batch (continuous batching).

A :class:`SpeculativeGroup` drives a :class:`~decodekit.speculative.loop.SpeculativeDecoding`:
its first requests start it (the prefill is the group's first step), then one
draft-and-verify step per engine step for every live row. A request submitted later with the
same proposer config and options (its seed, ``n``, ``max_new_tokens`` and stop strings may
differ; its processors and its constraint are its own) and, where drafts are deterministic, any sampler (greedy,
or sampling with its own settings; a draft model's tree run takes only its own sampler) joins the
running state at admission, if the run is joinable (see
:attr:`~decodekit.speculative.loop.SpeculativeDecoding.joinable`); otherwise it waits for the
proposer. Each request is delivered as soon as its rows finish, and fails alone if its logits
are not finite.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from decodekit.engine.group import request_generator
from decodekit.engine.request import EngineEvent, Request, RequestHandle, RequestOutput
from decodekit.errors import NumericalError

_PER_REQUEST = {"seed", "n", "max_new_tokens", "stop"}
"""Settings that may differ between requests of one run (each row keeps its own)."""


def join_key(request: Request) -> tuple:
    """What requests of one speculative run must share: the options, less the settings each
    row keeps for itself, and the strategy: only its proposer where drafts are deterministic
    or a draft model drafts chains (each row is drafted and verified with its own request's
    sampler, greedy or sampling with any settings), all of it for a draft model's trees (drawn
    with the run's sampler)."""

    def settings(config) -> tuple:
        return (type(config), tuple((f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.name not in _PER_REQUEST))

    from decodekit.speculative import drafts_trees

    speculative = request.strategy.speculative
    own = speculative.proposer != "draft" or not drafts_trees(speculative)  # a draft model's chains: by each row's sampler
    strategy = ("own sampler", speculative) if own else settings(request.strategy)
    return strategy, settings(request.options)


class _Member:
    """One request of the group: its handle, its row ids in the run, its first row's index
    in the entry it was submitted with (for error messages)."""

    def __init__(self, handle: RequestHandle, rows: list[int], first_row: int, processors: tuple = ()):
        self.handle, self.rows, self.first_row, self.processors = handle, rows, first_row, processors
        self.streaming = handle.request.stream
        self.shown = dict.fromkeys(rows, 0)
        self.closed: set[int] = set()


class SpeculativeGroup:
    """Requests decoded speculatively (greedy or sampling with ``strategy.speculative``) with
    the engine's ``proposer``, held by this group while it runs (cross-request state such as a
    global suffix tree stays on it)."""

    def __init__(self, model, handles: list[RequestHandle], proposer):
        from decodekit.speculative import speculative_run

        first = handles[0].request
        self.model, self.key = model, None
        self.device = getattr(model, "device", torch.device("cpu"))
        generators = tuple(request_generator(h.request, self.device) for h in handles)
        self.processors = tuple(first.processors()) if first.processors is not None else ()
        self.run = speculative_run(
            model,
            [h.request.prompt for h in handles],
            first.strategy,
            first.options,
            proposer,
            generators=generators,
            stop_check=first.stop_check if first.options.stop else None,
            constraint=self.processors[0] if self.processors else None,
        )
        self.join_key = join_key(first)
        self._warps = {}  # a joining strategy's settings -> its sampler (the run's own included)
        self._warps[self._sampler_key(first.strategy)] = self.run.warp
        self._waiting = handles  # until the first step prefills them
        self.members: list[_Member] = []
        self.error: BaseException | None = None

    @property
    def handles(self) -> list[RequestHandle]:
        return self._waiting + [m.handle for m in self.members]

    @property
    def rows(self) -> int:
        return len(self._waiting) * self.run.width + sum(len(m.rows) for m in self.members)

    # -- admission ------------------------------------------------------------------------------

    def accepts(self, handles: list[RequestHandle]) -> bool:
        """Whether these requests (submitted together) can join the running state now."""
        first = handles[0].request
        return (
            not self._waiting
            and bool(self.run.live)
            and self.run.joinable
            and first.stopping is None
            and join_key(first) == self.join_key
        )

    def join(self, handles: list[RequestHandle]) -> None:
        """Prefill ``handles``' prompts and add their rows to the running state."""
        from decodekit.speculative import row_processors

        first = handles[0].request
        warp = self._warp(first.strategy)
        width = getattr(first.strategy, "n", 1) if warp is not None else 1
        generators = tuple(request_generator(h.request, self.device) for h in handles)
        stop = first.stop_check if first.options.stop else None
        prompts = [h.request.prompt for h in handles]
        processors = row_processors(self.model, prompts, first.options)
        own = tuple(first.processors()) if first.processors is not None else ()  # a constraint: theirs alone
        rows = self.run.admit(prompts, width, first.options.max_new_tokens, generators, stop, processors, warp, own[0] if own else None)
        self._add(handles, rows, width, own)
        self._settle()

    @staticmethod
    def _sampler_key(strategy) -> tuple:
        return type(strategy), tuple((f.name, getattr(strategy, f.name)) for f in dataclasses.fields(strategy) if f.name not in ("seed", "n"))

    def _warp(self, strategy):
        """The sampler of a joining request's ``strategy``: the run's own when its settings are
        the run's (so rows of equal settings are verified together), else one built for it
        and kept for later requests with the same settings."""
        from decodekit.speculative import strategy_warp

        key = self._sampler_key(strategy)
        if key not in self._warps:
            self._warps[key] = strategy_warp(strategy)
        return self._warps[key]

    def _add(self, handles: list[RequestHandle], rows: list[int], width: int, processors: tuple = ()) -> None:
        for i, handle in enumerate(handles):
            self.members.append(_Member(handle, rows[i * width : (i + 1) * width], i * width, processors))

    # -- one step -------------------------------------------------------------------------------

    def advance(self) -> bool:
        """One speculative step (the first call prefills). True when the group has finished."""
        if self._waiting:
            handles, self._waiting = self._waiting, []
            run = self.run
            rows = run.admit(run.prompts, run.width, run.max_new, run.generators, run.stop_check)
            self._add(handles, rows, run.width, self.processors)
        elif self.run.live:
            self.run.step()
        return self._settle()

    @property
    def fusable(self) -> bool:
        """Whether this step's block can verify in a shared forward (:meth:`prepare`)."""
        return not self._waiting and self.run.fusable

    def prepare(self):
        """This step's block, for verification in the forward of the engine's plain rows
        (:meth:`complete` then takes its logits); None when the step is the prefill or the run
        cannot fuse (:attr:`~decodekit.speculative.loop.SpeculativeDecoding.fusable`)."""
        return self.run.prepare() if self.fusable else None

    def complete(self, block, logits, seconds: float) -> bool:
        """The rest of the step of :meth:`prepare`'s ``block``, given its logits. True when the
        group has finished."""
        self.run.complete(block, logits, seconds)
        return self._settle()

    def verify_alone(self, block) -> bool:
        """:meth:`complete` with a verification forward of the run's own."""
        began = time.perf_counter()
        logits = self.model.verify(self.run.state, block.inputs, block.parents)
        return self.complete(block, logits, time.perf_counter() - began)

    def prune(self) -> bool:
        """Rows of aborted requests leave now. True when no request is left."""
        if self._waiting:
            if all(h.done for h in self._waiting):
                self._waiting = []
                self.run.end()
                return True
            return False
        return self._settle(emit=False)

    def _settle(self, emit: bool = True) -> bool:
        """Deliver the requests whose rows have all finished, fail those whose logits were
        not finite, drop aborted ones. True when no request is left."""
        run = self.run
        if emit and any(m.streaming for m in self.members):
            self._emit()
        still = []
        for member in self.members:
            rows = member.rows
            failed = [j for j, r in enumerate(rows) if r in run.failed]
            if member.handle.done:  # aborted
                pass
            elif failed:
                j = failed[0]
                member.handle._finish(None, NumericalError(step=run.failed[rows[j]], row=member.first_row + j))
            elif all(run.reason[r] is not None for r in rows):
                member.handle._finish(RequestOutput(run.hypotheses(rows), run.stats(rows), member.processors))
            else:
                still.append(member)
                continue
            run.drop(rows)
            run.forget(rows)
        self.members = still
        if not still:
            run.end()
        return not still

    def _emit(self) -> None:
        run = self.run
        for member in self.members:
            if not member.streaming:
                continue
            for j, r in enumerate(member.rows):
                out, reason, shown = run.out[r], run.reason[r], member.shown[r]
                if r in member.closed or (shown == len(out) and reason is None):
                    continue
                if r in run.failed:
                    continue
                event = EngineEvent("tokens", j, shown, tuple(out[shown:]), tuple(run.logprobs[r][shown:]), reason)
                member.handle._emit(event)
                member.shown[r] = len(out)
                if reason is not None:
                    member.closed.add(r)

    def outputs(self) -> list[RequestOutput]:  # every request is delivered by _settle
        return []
