"""How many draft positions a batched verification step scores.

One forward verifies every live row's block, padded to the longest draft. On a CPU its cost
grows with the block's tokens (rows x width), so one row's long draft makes every row pay for
it. :class:`BlockWidth` picks the width that maximises the expected tokens per second of the
step, from two running estimates:

- the verification cost ``seconds = fixed + per_token * rows * (width + 1)``, fitted by least
  squares over the last steps' measured forwards;
- how many draft tokens a row gets accepted: each draft position is accepted with the run's
  acceptance rate ``p`` given its parent was (geometric), so a row whose draft is cut at ``k``
  tokens expects ``p (1 - p^k) / (1 - p)`` of them, plus its recovered or bonus token.

A deterministic draft cut to a width is still a draft: the verifier's output does not depend
on it (greedy: the target's tokens; sampling: the draws of each output position), so cutting
changes speed only. Stochastic drafts (a draft model sampling) take part in the draws and are
never cut. A single row, too little history, or a cost that does not grow with tokens (an
asynchronous GPU, where a forward's wall time is not known without a sync) keep the whole
draft.
"""

from __future__ import annotations

from collections import deque


class BlockWidth:
    def __init__(self, window: int = 64, least: int = 8):
        self.samples: deque[tuple[int, float]] = deque(maxlen=window)  # (block tokens, seconds)
        self.least = least
        self.drafted = self.accepted = 0.0  # decayed counts, for the acceptance rate

    def record(self, tokens: int, seconds: float, drafted: int, accepted: int) -> None:
        """One verification forward: its block tokens and seconds, the draft tokens it scored
        and how many were accepted."""
        self.samples.append((tokens, seconds))
        self.drafted = 0.95 * self.drafted + drafted
        self.accepted = 0.95 * self.accepted + accepted

    def _cost(self) -> tuple[float, float] | None:
        """``(fixed, per_token)`` seconds, or None while they are unknown or tokens are free."""
        if len(self.samples) < self.least:
            return None
        n = len(self.samples)
        mean_t = sum(t for t, _ in self.samples) / n
        mean_s = sum(s for _, s in self.samples) / n
        spread = sum((t - mean_t) ** 2 for t, _ in self.samples)
        if spread <= 0:
            return None
        slope = sum((t - mean_t) * (s - mean_s) for t, s in self.samples) / spread
        if slope <= 0:
            return None
        return max(mean_s - slope * mean_t, 0.0), slope

    def width(self, lengths: list[int]) -> int:
        """The draft positions to verify for rows whose drafts have ``lengths`` valid nodes."""
        widest = max(lengths, default=0)
        cost = self._cost()
        if len(lengths) < 2 or widest == 0 or cost is None or self.drafted <= 0:
            return widest
        fixed, per_token = cost
        p = min(max(self.accepted / self.drafted, 0.01), 0.99)
        rows = len(lengths)

        def rate(width: int) -> float:
            expected = sum(p * (1 - p ** min(k, width)) / (1 - p) for k in lengths)
            return (rows + expected) / (fixed + per_token * rows * (width + 1))

        return max(sorted(set(lengths) - {0}), key=lambda w: (rate(w), w))  # a draft keeps a node
