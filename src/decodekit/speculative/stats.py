"""Acceptance statistics of a speculative decoding."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeculationStats:
    """Acceptance statistics of one prompt (summed over its rows when ``n > 1``).

    ``target_forwards``: verification forwards the prompt's rows took part in (the prefill is
    not counted). ``drafted``: draft tokens proposed; ``accepted``: draft tokens accepted;
    ``generated``: tokens emitted (accepted + recovered/bonus, + the first token, which comes
    from the prefill)."""

    proposer: str
    target_forwards: int
    drafted: int
    accepted: int
    generated: int

    @property
    def accepted_per_forward(self) -> float:
        return self.accepted / max(1, self.target_forwards)

    @property
    def forwards_per_token(self) -> float:
        return self.target_forwards / max(1, self.generated)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(1, self.drafted)
