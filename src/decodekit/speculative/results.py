"""What a speculative run's rows have produced: finish reasons, hypotheses, statistics.

Mixed into :class:`~decodekit.speculative.loop.SpeculativeDecoding`, whose per-row tables
(``out``, ``logprobs``, ``reason``, ``limit``, ``stops``, counters) these read and, for the
finish reason, write.
"""

from __future__ import annotations

import torch

from decodekit.search.base import Hypothesis
from decodekit.speculative.stats import SpeculationStats


class RowResults:
    # -- finishing ------------------------------------------------------------------------------

    def _check_finished(self, r: int, first_new: int) -> None:
        """Set row ``r``'s finish reason from its tokens ``out[r][first_new - 1:]``."""
        out = self.out[r]
        if out[-1] in self.eos:
            self.reason[r] = "eos"
            return
        stop_check = self.stops[r]
        if stop_check is not None:
            for end in range(first_new, len(out) + 1):
                if bool(stop_check(torch.tensor([out[:end]], dtype=torch.long))[0]):
                    del out[end:]
                    del self.logprobs[r][end:]
                    self.reason[r] = "stop"
                    return
        if len(out) >= self.limit[r]:
            self.reason[r] = "length"

    # -- results --------------------------------------------------------------------------------

    def hypotheses(self, rows: list[int]) -> list[Hypothesis]:
        """The hypotheses of ``rows`` (the rows of one prompt)."""
        out = []
        for r in rows:
            total = float(sum(self.logprobs[r]))
            out.append(Hypothesis(self.out[r], self.logprobs[r], total, total, self.reason[r] or "length"))
        return out

    def stats(self, rows: list[int]) -> SpeculationStats:
        """Acceptance statistics of ``rows`` (the rows of one prompt), summed."""
        return SpeculationStats(
            self.proposer.name,
            sum(self.forwards[r] for r in rows),
            sum(self.drafted[r] for r in rows),
            sum(self.accepted[r] for r in rows),
            sum(len(self.out[r]) for r in rows),
        )

    def _prompt_rows(self) -> list[list[int]]:
        w = self.width
        return [list(range(p * w, (p + 1) * w)) for p in range(len(self.prompts))]

    def _hypotheses(self) -> list[list[Hypothesis]]:
        return [self.hypotheses(rows) for rows in self._prompt_rows()]

    def _stats(self) -> list[SpeculationStats]:
        return [self.stats(rows) for rows in self._prompt_rows()]
