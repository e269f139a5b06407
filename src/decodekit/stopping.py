"""Stop strings: a sequence ends as soon as its text contains one of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class StopStrings:
    """Check each row's recent text for stop strings. Only the last ``window`` tokens are
    decoded per row (a stop string of c characters spans at most c tokens plus split bytes)."""

    def __init__(self, tokenizer, stop: Sequence[str], keep: bool = False):
        self.tokenizer, self.stop, self.keep = tokenizer, tuple(stop), keep
        self.window = 4 * max(len(s) for s in self.stop) + 4

    def __call__(self, generated: torch.Tensor) -> torch.Tensor:
        """``(rows, t)`` generated ids -> ``(rows,)`` bool."""
        tails = generated[:, -self.window :].tolist()
        hits = [any(s in self.tokenizer.decode(tail) for s in self.stop) for tail in tails]
        return torch.tensor(hits, dtype=torch.bool, device=generated.device)

    def trim(self, text: str) -> str:
        """Cut ``text`` at the first stop string: before it, or after it with ``keep``."""
        found = [(i, len(s)) for s in self.stop if (i := text.find(s)) >= 0]
        if not found:
            return text
        at, length = min(found)
        return text[: at + length] if self.keep else text[:at]

    def shown(self, text: str) -> str:
        """What of a row's text so far can be streamed: all but its longest ending that
        begins a stop string (it may yet become one, and then it is cut)."""
        text = self.trim(text)
        held = max((k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0)
        return text[: len(text) - held]
