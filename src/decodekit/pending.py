"""Submitted prompts: waiting for their results, and their engine events as text stream events."""

from __future__ import annotations

from collections.abc import Iterator

from decodekit.results import GenerationResult, StreamEvent, TokenLogprob

BEST_STREAMING = ("beam", "diverse_beam", "stochastic_beam")
"""Strategies whose rows reorder: they stream their current best hypothesis, then the n-best."""


def stream_events(decoder, prompt, request, source, stop) -> Iterator[StreamEvent | None]:
    """Stream events from engine events (``source``: a handle, or its ``poll()``, whose
    ``None`` s — nothing new yet — pass through)."""
    tokens: dict[int, list[int]] = {}
    shown: dict[int, str] = {}
    ended: set[int] = set()
    for event in source:
        if event is None:
            yield None
            continue
        if event.kind == "best":
            ids = list(event.tokens)
            yield StreamEvent(0, event.step, ids[-1], decoder.decode_text(ids) or "", None, None, tuple(ids))
            continue
        if event.kind == "finished" and event.output is not None:
            result = decoder._result(prompt, request, event.output, stop)
            if event.output.hypotheses and request.strategy.name in BEST_STREAMING:
                best = result.best
                yield StreamEvent(0, len(best.token_ids), None, best.text or "", None, best.finish_reason, tuple(best.token_ids), result)
                continue
            for row, sequence in enumerate(result.sequences):  # rows that ran to the length limit
                if row not in ended:
                    text = sequence.text or ""
                    yield StreamEvent(row, len(sequence.token_ids), None, text[len(shown.get(row, "")) :], None, sequence.finish_reason)
            continue
        row = event.row
        for j, (token, logprob) in enumerate(zip(event.tokens, event.logprobs)):
            top = None
            if event.top is not None:
                ids, values = event.top[j]
                top = [TokenLogprob(i, lp, decoder.decode_text([i])) for i, lp in zip(ids, values)]
            ids = tokens.setdefault(row, [])
            ids.append(token)
            text = decoder.decode_text(ids) or ""
            last = j == len(event.tokens) - 1
            reason = event.finish_reason if last else None
            if stop is not None and reason == "stop":
                text = stop.trim(text)
            elif stop is not None and reason is None:  # text that may begin a stop string waits
                text = stop.shown(text)
            # hold back an incomplete multi-byte character until the row ends
            held = text.endswith("\ufffd") and reason is None
            before = shown.get(row, "")
            delta = "" if held else text[len(before) :]
            shown[row] = before + delta
            if reason is not None:
                ended.add(row)
            yield StreamEvent(row, event.step + j, token, delta, logprob, reason, top_logprobs=top)


class Pending:
    """A submitted prompt: ``result()`` waits for its :class:`GenerationResult`, ``events()``
    yields its :class:`StreamEvent` s (submitted with ``stream=True``), ``abort()`` stops it."""

    def __init__(self, decoder, prompt, request, handle, stop):
        self.decoder, self.prompt, self.request, self.handle, self.stop = decoder, prompt, request, handle, stop

    @property
    def done(self) -> bool:
        return self.handle.done

    def result(self, timeout: float | None = None) -> GenerationResult:
        return self.decoder._result(self.prompt, self.request, self.handle.result(timeout), self.stop)

    def events(self, wait: bool = True) -> Iterator[StreamEvent | None]:
        """Its stream events; ``wait=False``: never block, yield None when nothing is new."""
        source = self.handle if wait else self.handle.poll()
        return stream_events(self.decoder, self.prompt, self.request, source, self.stop)

    def abort(self) -> None:
        self.handle.abort()
