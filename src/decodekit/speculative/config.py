"""Config objects of speculative decoding: :class:`Speculative` names a proposer and carries
its own config. Each config validates itself and names the offending field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decodekit import validation as v
from decodekit.errors import ConfigError, check

MAX_DRAFT = 256
"""Draft tokens (chain length or tree nodes) one verification may hold."""


def _positive(value: Any) -> bool:
    return v.is_integer(value) and value >= 1


def _check_length(field: str, value: Any) -> None:
    v.integer(field, value, 1, MAX_DRAFT, "speculation length")


def template_size(branching: tuple[int, ...]) -> int:
    """Nodes of Token Recycling's tree template (see ``recycling.tree_template``), counted by
    sibling rank without building it."""
    counts, total = {0: 1}, 0  # rank -> nodes of the current level with that rank
    for width in branching:
        following: dict[int, int] = {}
        for rank, count in counts.items():
            for child in range(max(0, width - rank)):
                following[child] = following.get(child, 0) + count
        total += sum(following.values())
        counts = following
        if total > MAX_DRAFT:
            break
    return total


@dataclass(frozen=True)
class PromptLookupConfig:
    """n-gram prompt lookup (Saxena, 2023): find the most recent earlier occurrence of the
    context's last ``n`` tokens, longest ``n`` in ``[min_ngram, max_ngram]`` first, and draft
    the ``num_tokens`` tokens that followed it."""

    num_tokens: int = 10
    min_ngram: int = 1
    max_ngram: int = 4

    def validate(self) -> None:
        _check_length("num_tokens", self.num_tokens)
        v.integer("min_ngram", self.min_ngram, 1, 1024)
        v.integer("max_ngram", self.max_ngram, self.min_ngram, 1024, f"at least min_ngram={self.min_ngram}")


@dataclass(frozen=True)
class SuffixConfig:
    """SuffixDecoding (Oliaro et al., NeurIPS 2025). A match of ``m`` context tokens in a suffix
    tree allows up to ``max_spec_factor * m + max_spec_offset`` draft tokens (at most
    ``max_tokens``); a path stops where its estimated probability falls below
    ``min_token_prob``. ``max_depth`` bounds the trees' depth (match + continuation);
    ``max_cached_requests`` bounds the global tree over previous outputs (FIFO eviction;
    0 turns it off). ``tree``: best-first tree drafts instead of a single path. Defaults are
    tuned on bench/bench_speculative.py (CPU, where a longer draft costs little extra)."""

    max_tokens: int = 32
    max_depth: int = 24
    max_spec_factor: float = 4.0
    max_spec_offset: float = 0.0
    min_token_prob: float = 0.1
    max_cached_requests: int = 256
    tree: bool = False

    def validate(self) -> None:
        _check_length("max_tokens", self.max_tokens)
        v.integer("max_depth", self.max_depth, 2, 4096)
        v.number("max_spec_factor", self.max_spec_factor, 0.0, 1e3, low_open=True)
        v.number("max_spec_offset", self.max_spec_offset, 0.0, 1e3)
        v.number("min_token_prob", self.min_token_prob, 0.0, 1.0)
        check(self.min_token_prob < 1, "min_token_prob", self.min_token_prob, "a number in [0, 1)")
        v.integer("max_cached_requests", self.max_cached_requests, 0, 1 << 20)
        v.flag("tree", self.tree)


def draft_tree_size(widths: tuple[int, ...]) -> int:
    """Nodes of a draft tree whose nodes at depth ``d`` have ``widths[d]`` children each."""
    total, level = 0, 1
    for width in widths:
        level *= width
        total += level
        if total > MAX_DRAFT:
            break
    return total


@dataclass(frozen=True)
class DraftModelConfig:
    """A small causal LM with the target's vocabulary drafts ``num_tokens`` tokens on every path
    (Leviathan et al., 2023). ``model``: an embedded model name, a checkpoint directory, a
    transformers module or a :class:`~decodekit.model.hf.HFLanguageModel`.

    ``branching``: a draft *tree* instead of a chain, Recursive Speculative Decoding with
    constant branching (RSD-C, Jeon et al., 2024): every node at depth ``d`` gets
    ``branching[d]`` distinct children, drawn without replacement from the draft model (its
    top ``branching[d]`` tokens for greedy), and one child below ``len(branching)``, down to
    depth ``num_tokens``. Empty (the default): a chain."""

    model: Any = "stdlib-code-draft"
    num_tokens: int = 4
    branching: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.branching, list):  # configs are hashed (the engine keys proposers)
            object.__setattr__(self, "branching", tuple(self.branching))

    @property
    def widths(self) -> tuple[int, ...]:
        """Children per node at each depth ``0 .. num_tokens - 1`` (all 1: a chain)."""
        return tuple(self.branching) + (1,) * (self.num_tokens - len(self.branching))

    def validate(self) -> None:
        _check_length("num_tokens", self.num_tokens)
        check(
            isinstance(self.branching, tuple)
            and len(self.branching) <= self.num_tokens
            and all(_positive(b) and b <= MAX_DRAFT for b in self.branching),
            "branching",
            self.branching,
            f"a tuple of at most num_tokens={self.num_tokens} integers >= 1 (children per node "
            "at each draft depth; empty: a chain)",
        )
        size = draft_tree_size(self.widths)
        check(
            size <= MAX_DRAFT,
            "branching",
            self.branching,
            f"a tree of at most {MAX_DRAFT} draft nodes with num_tokens={self.num_tokens} "
            f"(this one has {size if size <= MAX_DRAFT else 'more'})",
        )
        check(
            self.model is not None and (not isinstance(self.model, str | Path) or str(self.model)),
            "model",
            self.model,
            "an embedded model name, a checkpoint directory or a model object",
        )


@dataclass(frozen=True)
class RecyclingConfig:
    """Token Recycling (Luo et al., 2024): a ``(vocab, top_k)`` matrix of each token's top-k
    successors under the target, refreshed at every verification and kept across calls; drafts
    follow a static breadth-first tree template. ``branching[d]``: children of the best node at
    depth ``d``; the sibling ranked ``r`` gets ``r`` fewer. The default, a chain of 8, is
    tuned on bench/bench_speculative.py on the CPU, where verifying a node costs about as much
    as it saves: the paper-sized tree ``(6, 3, 2, 2, 1, 1, 1, 1)`` was 0.8x plain greedy there
    and the chain 1.5-2x. On a GPU, where a wider block costs little more, use the tree."""

    top_k: int = 8
    branching: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 1, 1)

    def validate(self) -> None:
        v.integer("top_k", self.top_k, 1, MAX_DRAFT)
        check(
            isinstance(self.branching, tuple | list)
            and len(self.branching) >= 1
            and all(_positive(b) and b <= self.top_k for b in self.branching),
            "branching",
            self.branching,
            f"speculation depth >= 1: a non-empty tuple of integers in [1, top_k={self.top_k}]",
        )
        size = template_size(tuple(self.branching))
        check(size <= MAX_DRAFT, "branching", self.branching, f"a tree of at most {MAX_DRAFT} draft nodes (this one has {size if size <= MAX_DRAFT else 'more'})")


CONFIGS: dict[str, type] = {
    "ngram": PromptLookupConfig,
    "suffix": SuffixConfig,
    "draft": DraftModelConfig,
    "recycling": RecyclingConfig,
}
"""Proposer name -> its config class."""


@dataclass(frozen=True)
class Speculative:
    """Speculative decoding with the proposer ``proposer`` (one of :data:`CONFIGS`) configured
    by ``config`` (that proposer's config object; None: its defaults). Lossless: greedy output
    is exactly plain greedy's, sampled output has exactly plain sampling's distribution."""

    proposer: str = "suffix"
    config: Any = None

    def validate(self) -> None:
        check(
            isinstance(self.proposer, str) and self.proposer in CONFIGS,
            "speculative.proposer",
            self.proposer,
            f"one of {', '.join(CONFIGS)}",
        )
        expected = CONFIGS[self.proposer]
        if self.config is not None and not isinstance(self.config, expected):
            raise ConfigError(
                "speculative.config",
                self.config,
                f"a {expected.__name__} for proposer {self.proposer!r}",
            )
        try:
            self.resolved().validate()
        except ConfigError as error:
            raise ConfigError(
                f"speculative.config.{error.field}", error.value, error.allowed
            ) from None

    def resolved(self) -> Any:
        """The proposer config, defaults filled in."""
        return self.config if self.config is not None else CONFIGS[self.proposer]()
