"""Groups: requests submitted together and decided together.

A :class:`PlainGroup` is a contiguous block of rows in a shared model state: its requests share
one strategy config, options and processors, so the strategy's ``step`` decides for all of them
at once (vectorised, ``(rows, vocab)``). Each request keeps its own random generator, so its
draws do not depend on its neighbours. Speculative requests are decoded by
:class:`~decodekit.engine.speculative.SpeculativeGroup`.

Both follow one protocol, used by :mod:`decodekit.engine.step` and :class:`~decodekit.engine.core.Engine`:
``decide(logits)`` (plain) or ``advance()`` (speculative), then ``settle(flags)``, then
``outputs()`` once finished.
"""

from __future__ import annotations

import time

import torch

from decodekit.engine.request import EngineEvent, Request, RequestHandle, RequestOutput
from decodekit.errors import NumericalError
from decodekit.logits.guidance import Guidance
from decodekit.logits.penalties import MinNewTokens
from decodekit.search.base import SearchContext, Step
from decodekit.search.sampling import REASONS, RowSearch


def request_seed(request: Request) -> int | None:
    """The request's seed, else its strategy's (``seed``, or its sampler's for beam sampling)."""
    if request.seed is not None:
        return request.seed
    seed = getattr(request.strategy, "seed", None)
    sampler = getattr(request.strategy, "sampler", None)
    return seed if seed is not None or sampler is None else getattr(sampler, "seed", None)


def request_generator(request: Request, device) -> torch.Generator:
    """The request's own generator: seeded with its seed, else from a fresh random seed."""
    generator = torch.Generator(device=device)
    seed = request_seed(request)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def deliver(group) -> None:
    """Finish every handle of ``group``: its outputs, or its error."""
    if group.error is not None:
        deliver_error(group.handles, group.error)
        return
    if all(h.done for h in group.handles):
        return
    try:
        outputs = group.outputs()
    except Exception as error:
        deliver_error(group.handles, error)
        return
    for handle, output in zip(group.handles, outputs):
        handle._finish(output)


def deliver_error(handles: list[RequestHandle], error: BaseException) -> None:
    for handle in handles:
        handle._finish(None, error)


class PlainGroup:
    """Requests decided by one search over their rows (``width`` rows per request)."""

    free: tuple[int, ...] = ()
    """Rows no request holds (a :class:`~decodekit.engine.pool.RowPool`'s free slots; a
    group's rows leave together, so it has none)."""

    def __init__(self, model, handles: list[RequestHandle]):
        first = handles[0].request
        self.model, self.handles = model, handles
        self.strategy, self.options = first.strategy, first.options
        self.prompts = [h.request.prompt for h in handles]
        self.eos = self.options.eos(model.eos_token_ids)
        self.stop_check = first.stop_check if self.options.stop else None
        self.stopping = first.stopping
        device = getattr(model, "device", torch.device("cpu"))
        pad = model.pad_token_id if model.pad_token_id is not None else (self.eos[0] if self.eos else 0)
        extras = dict(first.search_context or {})
        generators = extras.pop("generators", None)
        self._shared_generator = generators is not None
        generators = generators or tuple(request_generator(h.request, device) for h in handles)
        self.context = SearchContext(
            batch_size=len(handles),
            max_new_tokens=self.options.max_new_tokens,
            eos_token_ids=torch.tensor(self.eos, dtype=torch.long, device=device),
            pad_token_id=int(pad),
            device=device,
            generators=generators,
            vocab_size=int(model.vocab_size),
            top_logprobs=self.options.top_logprobs,
            stop_check=self.stop_check,
            prompt_lengths=tuple(len(p) for p in self.prompts),
            prompts=tuple(tuple(p) for p in self.prompts),
            output_head=getattr(model, "output_head", None),
            tied_embeddings=bool(getattr(model, "tied_embeddings", False)),
            prefixes=tuple((int(model.decoder_start_token_id),) if model.is_encoder_decoder else tuple(p) for p in self.prompts),
            **extras,
        )
        self.search = self.strategy.begin(self.context)
        self.attention = getattr(self.search, "attention", None)
        """``"cross"``/``"self"``: the search reads those attention weights every step."""
        self.width = self.search.width
        self.rows = len(handles) * self.width
        self.extra_processors = list(first.processors()) if first.processors is not None else []
        self.streaming = any(h.request.stream for h in handles)
        self._reported = [False] * self.rows  # rows whose finish was streamed
        self.t = 0  # tokens decided so far
        self.step: Step | None = None
        self.nonfinite: torch.Tensor | None = None
        self.error: BaseException | None = None

    # -- admission --------------------------------------------------------------------------

    def start(self, state, fanned: bool = False) -> None:
        """Set up after this group's prefill (``state``: its own, before any merge): fan out
        to ``width`` rows per prompt (unless ``fanned``: the caller did), build the history the
        processors read, reset them."""
        model = self.model
        self.prompt_length = state.prompt_length
        if self.width > 1 and not fanned:
            fan = torch.arange(len(self.prompts), device=state.logits.device).repeat_interleave(self.width)
            model.select(state, fan)
        total = self.prompt_length + self.options.max_new_tokens
        history = torch.full((len(self.prompts), total), -1, dtype=torch.long)
        for row, prompt in enumerate(self.prompts):
            if model.is_encoder_decoder:
                history[row, 0] = int(model.decoder_start_token_id)
            else:
                history[row, self.prompt_length - len(prompt) : self.prompt_length] = torch.tensor(prompt)
        self.history = history.to(state.logits.device).repeat_interleave(self.width, dim=0)
        encoder_ids = None
        if model.is_encoder_decoder:
            encoder_ids = torch.full((len(self.prompts), max(map(len, self.prompts))), -1, dtype=torch.long)
            for row, prompt in enumerate(self.prompts):
                encoder_ids[row, : len(prompt)] = torch.tensor(prompt)
            encoder_ids = encoder_ids.to(state.logits.device).repeat_interleave(self.width, dim=0)
        processors = self.options.processors(
            self.prompt_length, self.eos, model.vocab_size, encoder_ids=encoder_ids, extra=self.extra_processors
        )
        if self.options.guidance_scale != 1.0:  # classifier-free guidance: first, as transformers
            negative = self.options.negative_prompt
            unconditional = [list(negative) if negative is not None else list(prompt[-1:]) for prompt in self.prompts for _ in range(self.width)]
            processors.processors.insert(0, Guidance(model, self.options.guidance_scale, unconditional, self.options.max_new_tokens))
        self.processors = processors
        for processor in self.extra_processors:
            if hasattr(processor, "bind"):
                processor.bind([h.request.index for h in self.handles], self.width)
        self.stateful = processors.stateful
        for processor in self.stateful:
            processor.reset(self.rows)
        self.deadline = time.monotonic() + self.options.max_time if self.options.max_time is not None else None

    # -- one step ---------------------------------------------------------------------------

    def decide(self, logits: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        """Decide step ``t`` from this group's ``(rows, vocab)`` logits (and, for a search
        that reads them, the ``(rows, layers, heads, keys)`` attention weights of the same
        forward). Returns a ``(2,)`` bool tensor ``[non-finite logits anywhere, done]`` for
        the engine's one host sync."""
        search, t = self.search, self.t
        # NaN, +inf, or a row with no possible token; -inf alone is a legitimate "never".
        # Subtle: a row's max is NaN if any entry is NaN, so one reduction covers all three.
        self.nonfinite = ~torch.isfinite(logits.amax(-1))
        if attention is not None:  # a search that reads internals may contrast the logits first (DoLa)
            logits = search.attend(attention, logits)
        scores = logits.log_softmax(-1) if search.scores_are_logprobs else logits.clone()
        if len(self.processors):
            scores = self.processors(self.history[:, : self.prompt_length + t], scores)
        step = search.step(scores, t)
        if step.parents is not None:
            self.history = self.history.index_select(0, step.parents)
        self.history[:, self.prompt_length + t] = step.tokens
        for processor in self.stateful:
            processor.advance(step.parents, step.tokens)
        done = step.done
        if search.supports_stop_strings and (self.stop_check is not None or self.stopping is not None):
            end = self.prompt_length + t + 1
            hits = self.stop_check(self.history[:, self.prompt_length : end]) if self.stop_check is not None else None
            if self.stopping is not None:
                criteria = self.stopping(self.history[:, :end], scores)
                hits = criteria if hits is None else hits | criteria
            done = search.stop_rows(hits)
        self.step = step
        return torch.stack([self.nonfinite.any(), done])

    def settle(self, values: list[bool]) -> list[int] | None:
        """After the sync (``values``: this group's flags): record step ``t``, emit events,
        deliver outputs once finished. Returns the local rows that go on: None for all of
        them, ``[]`` when the group has finished (or every request was aborted)."""
        bad, done = values
        t = self.t
        self.t += 1
        if bad:
            row = int(self.nonfinite.nonzero()[0])
            self.error = NumericalError(step=t, row=row)
            deliver(self)
            return []
        if self.streaming:
            self._emit(t)
        if done or self.t == self.options.max_new_tokens:
            deliver(self)
            return []
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.search.time_out()  # its running rows end with finish reason "time"
            deliver(self)
            return []
        return [] if all(h.done for h in self.handles) else None

    def _emit(self, t: int) -> None:
        search = self.search
        best = search.current_best(t)
        if best is None:  # per-row search: each row's new token
            tokens, logprobs = self.step.tokens.tolist(), search.logprobs[:, t].tolist()
            reasons = search.reason.tolist()
            top = getattr(search, "top", None)
            tops = (top.ids[:, t].tolist(), top.values[:, t].tolist()) if top is not None else None
            for row in range(self.rows):
                if self._reported[row]:
                    continue
                reason = REASONS.get(reasons[row])
                self._reported[row] = reason is not None
                row_top = ((tops[0][row], tops[1][row]),) if tops is not None else None
                event = EngineEvent("tokens", row % self.width, t, (tokens[row],), (logprobs[row],), reason, top=row_top)
                self.handles[row // self.width]._emit(event)
        else:
            for handle, tokens in zip(self.handles, best):
                handle._emit(EngineEvent("best", 0, t, tuple(tokens)))

    def live_rows(self) -> list[int] | None:
        """None while a request of the group is live; [] once every one is done (aborted)."""
        return [] if all(h.done for h in self.handles) else None

    def keep_rows(self, rows: list[int]) -> None:  # a group leaves whole (live_rows)
        raise AssertionError("a plain group's rows leave together")

    def keep_parents(self) -> torch.Tensor | None:
        return self.step.parents

    def fed(self) -> int:
        """Generated tokens in the cache, the most of any row (all rows advance together)."""
        return self.t

    def next_tokens(self) -> torch.Tensor:
        return self.step.tokens

    @property
    def poolable(self) -> bool:
        """Greedy or sampling with no processors but a minimum length, no stopping criteria and
        no shared generator (stop strings are fine): its requests can join a :class:`~decodekit.engine.pool.RowPool`
        (known before the prefill, so several such groups can be prefilled together)."""
        processors = self.options.processors(1, self.eos, self.model.vocab_size).processors
        return (
            type(self.search) is RowSearch  # not its variants (momentum): the pool decides as RowSearch
            and getattr(self.strategy, "row_warpers_only", True)
            and self.options.max_time is None
            and self.options.guidance_scale == 1.0
            and all(isinstance(p, MinNewTokens) for p in processors)
            and not self.extra_processors
            and self.stopping is None
            and not self._shared_generator
        )

    @property
    def beam_poolable(self) -> bool:
        """Beam search (beam sampling and stop strings too) or Diverse Beam Search (Hamming
        diversity) with no processors but a minimum length, repetition penalty, no-repeat
        n-gram, bad words and suppressed tokens, no stopping criteria or time limit: its
        requests can join a :class:`~decodekit.engine.beam_pool.BeamPool` (decided with
        separately arrived searches of the same config)."""
        from decodekit.engine.beam_pool import SEQUENCE_PROCESSORS
        from decodekit.search.beam import BeamSearch, BeamSearchRun
        from decodekit.search.diverse import DiverseBeamSearch, DiverseBeamSearchRun

        processors = self.options.processors(1, self.eos, self.model.vocab_size).processors
        return (
            (type(self.strategy), type(self.search)) in ((BeamSearch, BeamSearchRun), (DiverseBeamSearch, DiverseBeamSearchRun))
            and self.search.joinable
            and self.attention is None
            and all(type(p) in (MinNewTokens, *SEQUENCE_PROCESSORS) for p in processors)
            and not self.extra_processors
            and self.stopping is None
            and self.options.max_time is None
            and self.options.guidance_scale == 1.0
            and not self._shared_generator
            and not self.model.is_encoder_decoder
        )

    def outputs(self) -> list[RequestOutput]:
        hypotheses = self.search.finish()
        processors = tuple(self.extra_processors)
        return [RequestOutput(h, None, processors, self.search.scores_are_logprobs) for h in hypotheses]
