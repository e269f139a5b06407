"""A pool of per-row requests decided together: the vectorised greedy / sampling step.

Requests that decode greedily, or that sample (with any temperature, top-k, top-p, min-p,
typical-p), and need no processors but a minimum length (stop strings are checked per request)
share one :class:`RowPool` of their kind,
whatever their arrival time, prompt, settings or length limit: every row carries its own step
count, length limit, sampler settings and random numbers (drawn at admission from its
request's own generator), so one set of ``(rows, vocab)`` tensor ops decides for all of them and
a request's output is exactly what it would be alone. A request leaves the pool the
step its last row finishes; its result is delivered then.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decodekit.engine.group import PlainGroup
from decodekit.engine.request import EngineEvent, RequestHandle, RequestOutput
from decodekit.errors import NumericalError
from decodekit.logits.warpers import warp_rows
from decodekit.search.base import Hypothesis, TopTokens, inverse_cdf
from decodekit.search.sampling import EOS, LENGTH, NO_TOKEN, REASONS, STOP

WARPER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p")


@dataclass
class Member:
    handle: RequestHandle
    width: int
    streaming: bool
    first_row: int  # the request's first row in the call it came with (errors name it)
    stop_check: object = None  # its stop strings: (rows, t) generated ids -> (rows,) bool


class RowPool:
    """Rows of greedy (``sampler`` None) or sampling requests, in member order."""

    def __init__(self, key, sampling: bool, eos: torch.Tensor, pad: int, device, top_logprobs: int = 0):
        self.key, self.eos, self.pad, self.device = key, eos, pad, device
        self.top_n = top_logprobs  # every member's (the pool key includes it)
        self.top_values = torch.zeros((0, 1, top_logprobs), device=device)
        self.top_ids = torch.zeros((0, 1, top_logprobs), dtype=torch.long, device=device)
        self.sampling = sampling
        # per-row sampler settings (neutral values where a request does not use a warper)
        self.settings = {name: torch.zeros(0, device=device) for name in WARPER_FIELDS}
        self.members: list[Member] = []
        self.rows = 0
        self.columns = 1
        self.tokens = torch.zeros((0, 1), dtype=torch.long, device=device)
        self.logprobs = torch.zeros((0, 1), device=device)
        self.uniforms = torch.zeros((0, 1), device=device)
        self.t = torch.zeros(0, dtype=torch.long, device=device)
        self.limit = torch.zeros(0, dtype=torch.long, device=device)
        self.min_new = torch.zeros(0, dtype=torch.long, device=device)  # EOS banned before it
        self.reason = torch.zeros(0, dtype=torch.int8, device=device)
        self.finished = torch.zeros(0, dtype=torch.bool, device=device)
        self.step_tokens = torch.zeros(0, dtype=torch.long, device=device)
        self.error = None

    @property
    def handles(self) -> list[RequestHandle]:
        return [m.handle for m in self.members]

    # -- membership -------------------------------------------------------------------------

    def add(self, group: PlainGroup) -> None:
        """Take over ``group``'s requests (their rows are appended to this pool's rows)."""
        search, rows = group.search, group.rows
        m = group.options.max_new_tokens
        columns = max(self.columns, m + 1)  # +1: a spare column finished rows write padding to

        def widen(tensor: torch.Tensor, fill) -> torch.Tensor:
            if tensor.shape[1] == columns:
                return tensor
            wider = torch.full((tensor.shape[0], columns, *tensor.shape[2:]), fill, dtype=tensor.dtype, device=self.device)
            wider[:, : tensor.shape[1]] = tensor
            return wider

        self.columns = columns
        new_tokens = torch.full((rows, m), self.pad, dtype=torch.long, device=self.device)
        self.tokens = torch.cat([widen(self.tokens, self.pad), widen(new_tokens, self.pad)])
        self.logprobs = torch.cat([widen(self.logprobs, 0.0), widen(torch.zeros((rows, m), device=self.device), 0.0)])
        new_uniforms = search.uniforms if search.uniforms is not None else torch.zeros((rows, m), device=self.device)
        self.uniforms = torch.cat([widen(self.uniforms, 0.0), widen(new_uniforms, 0.0)])
        if self.top_n:
            n = self.top_n
            self.top_values = torch.cat([widen(self.top_values, 0.0), widen(torch.zeros((rows, m, n), device=self.device), 0.0)])
            self.top_ids = torch.cat([widen(self.top_ids, 0), widen(torch.zeros((rows, m, n), dtype=torch.long, device=self.device), 0)])
        self.t = torch.cat([self.t, torch.zeros(rows, dtype=torch.long, device=self.device)])
        self.limit = torch.cat([self.limit, torch.full((rows,), m, dtype=torch.long, device=self.device)])
        minimum = group.options.min_new_tokens if len(group.processors) else 0
        self.min_new = torch.cat([self.min_new, torch.full((rows,), minimum, dtype=torch.long, device=self.device)])
        self.reason = torch.cat([self.reason, torch.zeros(rows, dtype=torch.int8, device=self.device)])
        self.finished = torch.cat([self.finished, torch.zeros(rows, dtype=torch.bool, device=self.device)])
        if self.sampling:
            config = group.strategy
            values = {"temperature": config.temperature, "top_k": config.top_k or 0, "top_p": config.top_p, "min_p": config.min_p, "typical_p": config.typical_p}
            for name in WARPER_FIELDS:
                dtype = torch.long if name == "top_k" else torch.float32
                self.settings[name] = torch.cat([self.settings[name].to(dtype), torch.full((rows,), values[name], dtype=dtype, device=self.device)])
        for i, handle in enumerate(group.handles):
            self.members.append(Member(handle, group.width, handle.request.stream, i * group.width, group.stop_check))
        self.rows += rows
        self.min_new_any = bool((self.min_new > 0).any())

    def _keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        names = ("tokens", "logprobs", "uniforms", "t", "limit", "min_new", "reason", "finished", "step_tokens")
        for name in names + (("top_values", "top_ids") if self.top_n else ()):
            setattr(self, name, getattr(self, name).index_select(0, index))
        if self.sampling:
            self.settings = {name: value.index_select(0, index) for name, value in self.settings.items()}
        self.rows = len(rows)

    # -- one step ---------------------------------------------------------------------------

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """Decide every row from ``(rows, vocab)`` logits. Returns ``(2 * rows,)`` bool flags:
        each row's non-finite logits, then whether it has finished."""
        # Subtle: the log-normaliser is NaN if any logit is NaN, +inf if one is +inf and -inf if
        # all are -inf, so it is both the log-prob denominator and the finiteness check.
        normaliser = torch.logsumexp(logits, -1)
        nonfinite = ~torch.isfinite(normaliser)
        stuck = None
        if self.min_new_any:  # as MinNewTokens: no EOS before a row's minimum length
            early = self.t < self.min_new
            logits = logits.clone()
            logits[:, self.eos] = logits[:, self.eos].masked_fill(early[:, None], -float("inf"))
            normaliser = torch.logsumexp(logits, -1)
            stuck = (normaliser == -float("inf")) & ~nonfinite  # only EOS was possible
        rows = torch.arange(self.rows, device=self.device)
        if self.sampling:
            warped = warp_rows(logits, *(self.settings[name] for name in WARPER_FIELDS))
            tokens = inverse_cdf(warped.softmax(-1), self.uniforms[rows, self.t.clamp(max=self.columns - 1)])
        else:
            tokens = logits.max(-1).indices  # the first maximum, as argmax; faster on the CPU
        if stuck is not None:  # ends with nothing appended: finish reason "constraint"
            stuck &= ~self.finished
            self.reason.masked_fill_(stuck, NO_TOKEN)
            self.finished |= stuck
        running = ~self.finished
        tokens = tokens.masked_fill(self.finished, self.pad)
        self.tokens[rows, self.t] = tokens
        chosen = logits.gather(1, tokens[:, None]).squeeze(1) - normaliser
        self.logprobs[rows, self.t] = chosen.masked_fill(self.finished, 0.0)
        if self.top_n:
            values, ids = torch.topk(logits, self.top_n, dim=-1)
            self.top_values[rows, self.t], self.top_ids[rows, self.t] = values - normaliser[:, None], ids
        self.t += running
        hit_eos = torch.isin(tokens, self.eos) & running
        self.reason.masked_fill_(hit_eos, EOS)
        ended = hit_eos
        if any(m.stop_check is not None for m in self.members):
            stopped = self._stop_hits() & running & ~hit_eos
            self.reason.masked_fill_(stopped, STOP)
            ended = ended | stopped
        at_limit = (self.t >= self.limit) & running & ~ended
        self.reason.masked_fill_(at_limit, LENGTH)
        self.finished |= ended | at_limit
        self.step_tokens = tokens
        self._running_before = running
        return torch.cat([nonfinite, self.finished])

    def _stop_hits(self) -> torch.Tensor:
        """``(rows,)``: rows whose generated text now holds one of their request's stop
        strings (one check per request that has them, on its rows' tokens so far)."""
        hits = torch.zeros(self.rows, dtype=torch.bool, device=self.device)
        row = 0
        for member in self.members:
            if member.stop_check is not None:
                span = slice(row, row + member.width)
                length = int(self.t[span].max())
                if length:
                    hits[span] = member.stop_check(self.tokens[span, :length])
            row += member.width
        return hits

    def settle(self, values: list[bool]) -> list[int] | None:
        """Deliver the requests whose rows have all finished (or whose logits were not
        finite: :class:`NumericalError` for that request alone); returns the rows that stay."""
        bad, finished = values[: self.rows], values[self.rows :]
        if any(m.streaming for m in self.members):
            self._emit()
        keep, members, row = [], [], 0
        for member in self.members:
            span = range(row, row + member.width)
            row += member.width
            if any(bad[r] for r in span):
                t = int(self.t[span.start]) - 1
                bad_row = next(r for r in span if bad[r]) - span.start
                member.handle._finish(None, NumericalError(step=max(t, 0), row=member.first_row + bad_row))
                continue
            if member.handle.done:  # aborted
                continue
            if all(finished[r] for r in span):
                member.handle._finish(self._output(span))
                continue
            keep.extend(span)
            members.append(member)
        if len(keep) == self.rows:
            return None
        self.members = members
        self._keep(keep)
        self.min_new_any = bool((self.min_new > 0).any())
        return keep

    def live_rows(self) -> list[int] | None:
        """The rows of members not done (None: all of them), for dropping aborted ones."""
        rows, row = [], 0
        for member in self.members:
            if not member.handle.done:
                rows.extend(range(row, row + member.width))
            row += member.width
        return None if len(rows) == self.rows else rows

    def keep_rows(self, rows: list[int]) -> None:
        """Keep these rows (whole members), as :meth:`live_rows` gave them."""
        self.members = [m for m in self.members if not m.handle.done]
        self._keep(rows)
        self.min_new_any = bool((self.min_new > 0).any())

    def _emit(self) -> None:
        tokens, logprobs, tops = self.step_tokens.tolist(), None, None
        running = self._running_before.tolist()
        steps = (self.t - 1).tolist()
        reasons = self.reason.tolist()
        row = 0
        for member in self.members:
            for j in range(member.width):
                r = row + j
                if member.streaming and running[r]:
                    if logprobs is None:
                        logprobs = self.logprobs.gather(1, (self.t - 1).clamp(min=0)[:, None]).squeeze(1).tolist()
                    reason = REASONS.get(reasons[r])
                    top = None
                    if self.top_n:
                        if tops is None:
                            at = (self.t - 1).clamp(min=0)
                            rows = torch.arange(self.rows, device=self.device)
                            tops = (self.top_ids[rows, at].tolist(), self.top_values[rows, at].tolist())
                        top = ((tops[0][r], tops[1][r]),)
                    member.handle._emit(EngineEvent("tokens", j, steps[r], (tokens[r],), (logprobs[r],), reason, top=top))
            row += member.width

    def _output(self, span: range) -> RequestOutput:
        rows = torch.tensor(list(span), dtype=torch.long, device=self.device)
        lengths = self.t.index_select(0, rows).tolist()
        tokens = self.tokens.index_select(0, rows).tolist()
        logprobs = self.logprobs.index_select(0, rows).tolist()
        reasons = self.reason.index_select(0, rows).tolist()
        tops = [None] * len(span)
        if self.top_n:
            values, ids = self.top_values.index_select(0, rows).tolist(), self.top_ids.index_select(0, rows).tolist()
            tops = [TopTokens.host(values[i], ids[i], n) for i, n in enumerate(lengths)]
        hypotheses = []
        for n, ids, lps, reason, top in zip(lengths, tokens, logprobs, reasons, tops):
            total = float(sum(lps[:n]))
            hypotheses.append(Hypothesis(ids[:n], lps[:n], total, total, REASONS.get(reason, "length"), top_logprobs=top))
        return RequestOutput(hypotheses)

    def keep_parents(self) -> None:
        return None

    def fed(self) -> int:
        """Generated tokens in the cache, the most of any row."""
        return int(self.t.max()) if self.rows else 0

    def next_tokens(self) -> torch.Tensor:
        return self.step_tokens
