"""The nodes of a search tree and what a search spends: :class:`Node`, :class:`Compute`, and
the check of a sampler a tree draws with."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from decodekit.errors import ConfigError
from decodekit.search.sampling import Sampling

TERMINAL = ("eos", "stop", "length", "cut")
"""Finish reasons of a node that cannot grow: end of sequence, a stop string, the tree's token
limit, or cut short by its search (First Finish Search ends the samples still running)."""


@dataclass
class Compute:
    """What a search spent, counted the same way for every strategy.

    ``forwards``: model calls (the prefill and every batched step). ``row_forwards``: rows
    times steps, i.e. the tokens the model computed after the prefill (the fair x-axis: a
    batched forward of 16 rows costs 16). ``tokens_generated``: every token drawn, kept or
    not; ``tokens_kept``: those of the returned completion. ``reward_calls``: completions or
    prefixes scored; ``reward_batches``: calls into the reward. ``nodes_expanded``: distinct
    nodes extended. ``wall_seconds``: the whole search."""

    forwards: int = 0
    row_forwards: int = 0
    prefill_tokens: int = 0
    tokens_generated: int = 0
    tokens_kept: int = 0
    reward_calls: int = 0
    reward_batches: int = 0
    nodes_expanded: int = 0
    wall_seconds: float = 0.0

    @property
    def tokens_discarded(self) -> int:
        return self.tokens_generated - self.tokens_kept

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["tokens_discarded"] = self.tokens_discarded
        return out


@dataclass(eq=False)
class Node:
    """A partial or finished completion. ``tokens``: generated ids (prompt excluded);
    ``logprob``: their summed log-probability under the model (raw logits); ``text``: their
    text, cut before a stop string; ``finish``: None while it may grow, else a
    :data:`TERMINAL` reason or ``"step"``/``"budget"``/``"pause"`` (open again: a step boundary, the
    extension's token budget or a ``pause`` ended it); ``depth``: extensions from the root. ``value`` and
    ``data`` belong to the search that grows the tree."""

    tokens: tuple[int, ...]
    logprob: float
    parent: Node | None
    text: str
    finish: str | None = None
    depth: int = 0
    value: float | None = None
    data: dict = field(default_factory=dict)
    token_logprobs: tuple[float, ...] = ()
    """Each generated token's log-probability (the summands of ``logprob``)."""
    _state: object = field(default=None, repr=False)
    _row: int = field(default=0, repr=False)

    @property
    def finished(self) -> bool:
        """True when the node cannot grow (a :data:`TERMINAL` reason)."""
        return self.finish in TERMINAL

    @property
    def open(self) -> bool:
        """True when the node holds a cache row and can be extended."""
        return self._state is not None and not self.finished


def check_sampler(sampler: Sampling | None, field_name: str = "sampler") -> None:
    """A tree samples with the warpers of a :class:`~decodekit.Sampling` config; its seed,
    ``n`` and stateful samplers belong elsewhere, so they are refused rather than ignored."""
    if sampler is None:
        return
    if not isinstance(sampler, Sampling):
        raise ConfigError(field_name, sampler, "a decodekit.Sampling config, or None for greedy")
    sampler.validate()
    if sampler.seed is not None:
        raise ConfigError(f"{field_name}.seed", sampler.seed, "None: the search's own seed seeds every draw")
    if sampler.n != 1:
        raise ConfigError(f"{field_name}.n", sampler.n, "1: the search decides how many branches to draw")
    for name in ("xtc_probability", "mirostat_tau"):
        if getattr(sampler, name):
            raise ConfigError(f"{field_name}.{name}", getattr(sampler, name), "0 in test-time search")
    if sampler.speculative is not None:
        raise ConfigError(f"{field_name}.speculative", sampler.speculative, "None in test-time search")
