"""A pool of per-row requests decided together: the vectorised greedy / sampling step.

Requests that decode greedily, or that sample (with any temperature, top-k, top-p, min-p,
typical-p), and need no processors but a minimum length (stop strings are checked per request)
share one :class:`RowPool`, greedy and sampled alike,
whatever their arrival time, prompt, settings or length limit: every row carries its own step
count, length limit, sampler settings and random numbers (drawn at admission from its
request's own generator), so one set of ``(rows, vocab)`` tensor ops decides for all of them
(the sampled rows' warpers and draws over those rows only) and a request's output is exactly
what it would be alone. A request leaves the pool the
step its last row finishes; its result is delivered then.

Rows are slots: a request that leaves frees its rows in place (nothing is copied), and a request
admitted later takes free slots (:meth:`add` with ``slots``; the model copies only its prefilled
rows in: ``insert``). Free slots decode padding until taken (the lean steps skip their
arithmetic: ``idle``); the pool squeezes them out (one row selection) only once they outnumber
the rows in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from decodekit.engine.group import PlainGroup
from decodekit.engine.request import EngineEvent, RequestHandle, RequestOutput
from decodekit.errors import NumericalError
from decodekit.logits.draw import draw_rows
from decodekit.search.base import Hypothesis, TopTokens
from decodekit.search.sampling import EOS, LENGTH, NO_TOKEN, REASONS, STOP

WARPER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p")


@dataclass
class Member:
    handle: RequestHandle
    width: int
    streaming: bool
    first_row: int  # the request's first row in the call it came with (errors name it)
    stop_check: object = None  # its stop strings: (rows, t) generated ids -> (rows,) bool
    rows: list[int] = field(default_factory=list)  # its slots in the pool, in row order
    index: torch.Tensor | None = None  # the same as a tensor


COMPACT_FREE = 8
"""Free slots a pool keeps before squeezing them out (it also squeezes once they outnumber the
rows in use)."""

ROW_FIELDS = ("tokens", "logprobs", "uniforms", "t", "limit", "min_new", "reason", "finished", "step_tokens", "sampled")


class RowPool:
    """Rows of greedy and sampling requests, in member order."""

    def __init__(self, key, eos: torch.Tensor, pad: int, device, top_logprobs: int = 0, reuse: bool = False):
        self.key, self.eos, self.pad, self.device = key, eos, pad, device
        self.reuse = reuse  # keep free slots for later requests (the model can insert rows)
        self.top_n = top_logprobs  # every member's (the pool key includes it)
        self.top_values = torch.zeros((0, 1, top_logprobs), device=device)
        self.top_ids = torch.zeros((0, 1, top_logprobs), dtype=torch.long, device=device)
        # per-row sampler settings (neutral values where a request does not use a warper, and
        # on greedy rows, which ``sampled`` tells apart)
        self.settings = {name: torch.zeros(0, dtype=torch.long if name == "top_k" else torch.float32, device=device) for name in WARPER_FIELDS}
        self.sampled = torch.zeros(0, dtype=torch.bool, device=device)
        self.sampled_rows = 0  # sampled.sum(), kept on the host: read every step, changed on (re)admission
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
        self.free: list[int] = []  # slots no member holds
        self.error = None

    @property
    def handles(self) -> list[RequestHandle]:
        return [m.handle for m in self.members]

    # -- membership -------------------------------------------------------------------------

    def add(self, group: PlainGroup, slots: list[int] | None = None) -> None:
        """Take over ``group``'s requests: their rows are appended to this pool's rows, or
        written into the free ``slots`` given (one per row, in row order)."""
        search, rows, device = group.search, group.rows, self.device
        m = group.options.max_new_tokens
        columns = max(self.columns, m + 1)  # +1: a spare column finished rows write padding to

        def widen(tensor: torch.Tensor, fill) -> torch.Tensor:
            if tensor.shape[1] == columns:
                return tensor
            wider = torch.full((tensor.shape[0], columns, *tensor.shape[2:]), fill, dtype=tensor.dtype, device=device)
            wider[:, : tensor.shape[1]] = tensor
            return wider

        self.columns = columns
        uniforms = search.uniforms if search.uniforms is not None else torch.zeros((rows, m), device=device)
        minimum = group.options.min_new_tokens if len(group.processors) else 0
        new = {
            "tokens": torch.full((rows, m), self.pad, dtype=torch.long, device=device),
            "logprobs": torch.zeros((rows, m), device=device),
            "uniforms": uniforms,
            "t": torch.zeros(rows, dtype=torch.long, device=device),
            "limit": torch.full((rows,), m, dtype=torch.long, device=device),
            "min_new": torch.full((rows,), minimum, dtype=torch.long, device=device),
            "reason": torch.zeros(rows, dtype=torch.int8, device=device),
            "finished": torch.zeros(rows, dtype=torch.bool, device=device),
            "step_tokens": torch.full((rows,), self.pad, dtype=torch.long, device=device),
            "sampled": torch.full((rows,), bool(group.search.sampling), dtype=torch.bool, device=device),
        }
        fills = {"tokens": self.pad, "logprobs": 0.0, "uniforms": 0.0}
        if self.top_n:
            n = self.top_n
            new["top_values"] = torch.zeros((rows, m, n), device=device)
            new["top_ids"] = torch.zeros((rows, m, n), dtype=torch.long, device=device)
            fills |= {"top_values": 0.0, "top_ids": 0}
        config = group.strategy
        values = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}
        if group.search.sampling:
            values = {"temperature": config.temperature, "top_k": config.top_k or 0, "top_p": config.top_p, "min_p": config.min_p, "typical_p": config.typical_p}
        for name in WARPER_FIELDS:
            new[name] = torch.full((rows,), values[name], dtype=self.settings[name].dtype, device=device)
        if slots is None:
            slots = list(range(self.rows, self.rows + rows))
            for name, value in new.items():
                old = self.settings[name] if name in WARPER_FIELDS else getattr(self, name)
                if name in fills:
                    old, value = widen(old, fills[name]), widen(value, fills[name])
                self._set(name, torch.cat([old, value]))
            self.rows += rows
        else:
            taken = set(slots)
            self.free = [r for r in self.free if r not in taken]
            index = torch.tensor(slots, dtype=torch.long, device=device)
            for name, value in new.items():
                old = self.settings[name] if name in WARPER_FIELDS else getattr(self, name)
                if name in fills:
                    old, value = widen(old, fills[name]), widen(value, fills[name])
                self._set(name, old.index_copy(0, index, value))
        for i, handle in enumerate(group.handles):
            mine = slots[i * group.width : (i + 1) * group.width]
            index = torch.tensor(mine, dtype=torch.long, device=device)
            self.members.append(Member(handle, group.width, handle.request.stream, i * group.width, group.stop_check, mine, index))
        self.min_new_any = bool((self.min_new > 0).any())
        self.sampled_rows = int(self.sampled.sum())

    def _set(self, name: str, value: torch.Tensor) -> None:
        if name in WARPER_FIELDS:
            self.settings[name] = value
        else:
            setattr(self, name, value)

    def _release(self, member: Member) -> None:
        """Free ``member``'s slots: they decode padding, finished, until a request takes them."""
        index = member.index
        self.finished.index_fill_(0, index, True)
        for name in ("t", "limit", "min_new", "reason"):
            getattr(self, name).index_fill_(0, index, 0)
        self.sampled.index_fill_(0, index, False)  # a free slot decodes padding: no draws
        self.sampled_rows = int(self.sampled.sum())
        self.free.extend(member.rows)

    def _keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        for name in ROW_FIELDS + (("top_values", "top_ids") if self.top_n else ()):
            setattr(self, name, getattr(self, name).index_select(0, index))
        self.settings = {name: value.index_select(0, index) for name, value in self.settings.items()}
        where = {old: new for new, old in enumerate(rows)}
        for member in self.members:
            member.rows = [where[r] for r in member.rows]
            member.index = torch.tensor(member.rows, dtype=torch.long, device=self.device)
        free = set(self.free)
        self.free = [where[r] for r in rows if r in free]
        self.rows = len(rows)

    # -- one step ---------------------------------------------------------------------------

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """Decide every row from ``(rows, vocab)`` logits. Returns ``(2 * rows,)`` bool flags:
        each row's non-finite logits, then whether it has finished."""
        # Subtle: a row's log-softmax is NaN everywhere if any logit is NaN or +inf, or if all
        # are -inf (its max is then NaN or infinite), and never NaN otherwise, so its first entry
        # is the finiteness check; one log_softmax is also cheaper than a logsumexp on the CPU.
        logprobs = logits.log_softmax(-1)
        nonfinite = logprobs[:, 0].isnan()
        stuck = None
        if self.min_new_any:  # as MinNewTokens: no EOS before a row's minimum length
            early = self.t < self.min_new
            logits = logits.masked_fill(early[:, None] & self._eos_columns(logits.shape[1]), -float("inf"))
            logprobs = logits.log_softmax(-1)
            stuck = logprobs[:, 0].isnan() & ~nonfinite  # only EOS was possible
        rows = self._arange()
        sampled = self.sampled_rows
        if sampled == 0:
            tokens = logits.max(-1).indices  # the first maximum, as argmax; faster on the CPU
        else:
            # each sampled row's warpers and draw depend on that row alone, so deciding them
            # apart from the greedy rows changes nothing
            uniforms = self.uniforms[rows, self.t.clamp(max=self.columns - 1)]
            if sampled == self.rows:
                tokens = draw_rows(logits, [self.settings[name] for name in WARPER_FIELDS], uniforms)
            else:
                which = self.sampled.nonzero().squeeze(1)
                drawn = draw_rows(logits.index_select(0, which), [self.settings[name].index_select(0, which) for name in WARPER_FIELDS], uniforms.index_select(0, which))
                tokens = logits.max(-1).indices.index_copy(0, which, drawn)
        if stuck is not None:  # ends with nothing appended: finish reason "constraint"
            stuck &= ~self.finished
            self.reason.masked_fill_(stuck, NO_TOKEN)
            self.finished |= stuck
        running = ~self.finished
        tokens = tokens.masked_fill(self.finished, self.pad)
        at = self.t[:, None]
        self.tokens.scatter_(1, at, tokens[:, None])
        chosen = logprobs.gather(1, tokens[:, None])
        self.logprobs.scatter_(1, at, chosen.masked_fill(self.finished[:, None], 0.0))
        if self.top_n:
            values, ids = torch.topk(logprobs, self.top_n, dim=-1)
            self.top_values[rows, self.t], self.top_ids[rows, self.t] = values, ids
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

    def _arange(self) -> torch.Tensor:
        """``arange(rows)``, made again only when the rows change."""
        cached = self.__dict__.get("_rows_index")
        if cached is None or cached.shape[0] != self.rows:
            cached = self._rows_index = torch.arange(self.rows, device=self.device)
        return cached

    def _eos_columns(self, vocab: int) -> torch.Tensor:
        """``(vocab,)`` bool: the EOS ids' columns."""
        cached = self.__dict__.get("_eos_mask")
        if cached is None or cached.shape[0] != vocab:
            cached = torch.zeros(vocab, dtype=torch.bool, device=self.device)
            cached[self.eos[self.eos < vocab]] = True
            self._eos_mask = cached
        return cached

    def _stop_hits(self) -> torch.Tensor:
        """``(rows,)``: rows whose generated text now holds one of their request's stop
        strings (one check per request that has them, on its rows' tokens so far)."""
        hits = torch.zeros(self.rows, dtype=torch.bool, device=self.device)
        for member in self.members:
            if member.stop_check is not None:
                length = int(self.t.index_select(0, member.index).max())
                if length:
                    hits[member.index] = member.stop_check(self.tokens.index_select(0, member.index)[:, :length])
        return hits

    def settle(self, values: list[bool]) -> list[int] | None:
        """Deliver the requests whose rows have all finished (or whose logits were not
        finite: :class:`NumericalError` for that request alone) and free their slots. Returns
        None (every row stays in the model state), or the rows that stay when the pool squeezes
        out its free slots: once they outnumber the rows in use (``[]``: no member is left)."""
        bad, finished = values[: self.rows], values[self.rows :]
        if any(m.streaming for m in self.members):
            self._emit()
        members = []
        for member in self.members:
            rows = member.rows
            if any(bad[r] for r in rows):
                t = int(self.t[rows[0]]) - 1
                bad_row = next(j for j, r in enumerate(rows) if bad[r])
                member.handle._finish(None, NumericalError(step=max(t, 0), row=member.first_row + bad_row))
            elif member.handle.done:  # aborted
                pass
            elif all(finished[r] for r in rows):
                member.handle._finish(self._output(member))
            else:
                members.append(member)
                continue
            self._release(member)
        self.members = members
        few_free = not self.free or self.reuse and len(self.free) <= max(COMPACT_FREE, self.rows - len(self.free))
        if members and few_free:
            self.min_new_any = bool((self.min_new > 0).any())
            return None
        keep = sorted(r for m in members for r in m.rows)
        self._keep(keep)
        self.min_new_any = bool((self.min_new > 0).any())
        self.sampled_rows = int(self.sampled.sum())
        return keep

    def live_rows(self) -> list[int] | None:
        """The rows of members not done (None: all of them, and no free slot), for dropping
        aborted ones; free slots go with them."""
        rows = sorted(r for m in self.members if not m.handle.done for r in m.rows)
        return None if len(rows) == self.rows else rows

    def keep_rows(self, rows: list[int]) -> None:
        """Keep these rows (whole members), as :meth:`live_rows` gave them."""
        self.members = [m for m in self.members if not m.handle.done]
        self._keep(rows)
        self.min_new_any = bool((self.min_new > 0).any())
        self.sampled_rows = int(self.sampled.sum())

    def _emit(self) -> None:
        tokens, logprobs, tops = self.step_tokens.tolist(), None, None
        running = self._running_before.tolist()
        steps = (self.t - 1).tolist()
        reasons = self.reason.tolist()
        for member in self.members:
            if not member.streaming:
                continue
            for j, r in enumerate(member.rows):
                if running[r]:
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

    def _output(self, member: Member) -> RequestOutput:
        rows = member.index
        lengths = self.t.index_select(0, rows).tolist()
        tokens = self.tokens.index_select(0, rows).tolist()
        logprobs = self.logprobs.index_select(0, rows).tolist()
        reasons = self.reason.index_select(0, rows).tolist()
        tops = [None] * len(lengths)
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
