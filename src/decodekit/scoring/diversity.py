"""Diversity functions of Diverse Beam Search: how much a candidate resembles earlier groups.

Vijayakumar et al., "Diverse Beam Search: Decoding Diverse Solutions from Neural Sequence
Models" (AAAI 2018, arXiv:1610.02424). At step ``t`` group ``g`` ranks its candidates by
``log p(token) - lambda_g * similarity(candidate, groups < g)`` (the paper's Eq. 5 with the
diversity term Delta written as a similarity to subtract). The paper's section
"Sensitivity Analysis and Effect of Diversity Functions" names four forms of Delta; each class
below implements one and cites it. All of them are vectorised over prompts and beams: a call
returns a ``(batch, 1 or K, vocab)`` tensor, where ``K`` is the group's beam count (a row of 1
means the same penalty for every beam of the group), or, when only a few tokens are penalised,
a :class:`TokenPenalty`.

Subtle: a group that has finished emits padding, and that padding counts as its token (as in
transformers 4.55's ``HammingDiversityLogitsProcessor``, which Hamming reproduces exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from decodekit.errors import check


@dataclass(frozen=True)
class EarlierGroups:
    """What a group's penalty is computed from, at step ``step`` (0-based) of group ``group``.

    ``tokens``: ``(batch, E)`` tokens the ``E = group * K`` rows of earlier groups appended at
    this step. ``history``: ``(batch, E, step + 1)`` those rows' generated tokens, this step's
    included. ``own_history``: ``(batch, K, step)`` the generated tokens of the group's own rows
    before this step. The two histories are ``None`` unless the function ``needs_history``.
    """

    group: int
    step: int
    vocab_size: int
    tokens: torch.Tensor
    history: torch.Tensor | None = None
    own_history: torch.Tensor | None = None


@dataclass(frozen=True)
class TokenPenalty:
    """A similarity that is zero except at a few tokens, the same for every beam of the group:
    ``amounts[b, e]`` at token ``tokens[b, e]`` (both ``(batch, E)``; a token listed twice
    carries its full amount both times). Lets the search touch E entries instead of the vocab."""

    tokens: torch.Tensor
    amounts: torch.Tensor

    def dense(self, vocab_size: int) -> torch.Tensor:
        """The same similarity as a ``(batch, 1, vocab)`` tensor."""
        out = torch.zeros((self.tokens.shape[0], vocab_size), device=self.tokens.device)
        return out.scatter_(1, self.tokens, self.amounts)[:, None, :]


class DiversityFunction(Protocol):
    """``similarity(earlier)``: what the group's candidates would share with earlier groups,
    as a ``(batch, 1 or K, vocab)`` tensor or a :class:`TokenPenalty`; the search subtracts
    ``lambda_g`` times it from the log-probs. Pure (no state)."""

    needs_history: ClassVar[bool]
    """True when the function reads ``EarlierGroups.history``/``own_history``."""

    def __call__(self, earlier: EarlierGroups) -> torch.Tensor | TokenPenalty: ...


def token_counts(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(batch, n)`` token ids -> ``(batch, vocab)`` float32 occurrence counts."""
    counts = torch.zeros((tokens.shape[0], vocab_size), dtype=torch.float32, device=tokens.device)
    return counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=torch.float32))


@dataclass(frozen=True)
class Hamming:
    """Hamming diversity (the paper's "Hamming Diversity"): a token is penalised by the number
    of earlier-group beams that chose it at the current step. Identical, to the last float
    operation, to transformers 4.55's ``HammingDiversityLogitsProcessor``."""

    needs_history: ClassVar[bool] = False

    def __call__(self, earlier: EarlierGroups) -> TokenPenalty:
        tokens = earlier.tokens  # (B, E)
        counts = (tokens[:, :, None] == tokens[:, None, :]).sum(-1, dtype=torch.float32)  # (B, E)
        return TokenPenalty(tokens, counts)


@dataclass(frozen=True)
class Cumulative:
    """Cumulative diversity (the paper's "Cumulative Diversity"): once sequences have diverged
    they need not be pushed further apart. For beam ``b`` of group ``g`` extended by token ``v``
    and each earlier group ``h``:

        delta_h(b, v) = exp(-mismatches_h(b, v) / temperature)

    where ``mismatches_h`` counts, over every generated step up to and including this one and
    every beam ``b'`` of ``h``, the positions where ``b + v`` and ``b'`` differ. The similarity is
    ``sum_h delta_h``: 1 per group when identical, decaying towards 0 as they diverge."""

    temperature: float = 1.0
    needs_history: ClassVar[bool] = True

    def __call__(self, earlier: EarlierGroups) -> torch.Tensor:
        own, history = earlier.own_history, earlier.history
        batch, width, t = own.shape
        groups = earlier.group
        # 1. mismatches before this step: (B, K, groups) summed over the earlier group's beams
        past = history[:, :, :t].reshape(batch, 1, groups, width, t)
        before = (own[:, :, None, None, :] != past).sum((-1, -2)).float()  # (B, K, G')
        # 2. this step: of group h's K beams, K - count_h(v) differ from candidate token v
        chosen = earlier.tokens.reshape(batch * groups, width)
        same_now = token_counts(chosen, earlier.vocab_size).view(batch, 1, groups, -1)
        mismatches = before[..., None] + (width - same_now)  # (B, K, G', V)
        return torch.exp(-mismatches / self.temperature).sum(2)


def _ngram_windows(history: torch.Tensor, n: int) -> torch.Tensor:
    """``(batch, rows, length)`` -> ``(batch, rows * (length - n + 1), n)`` every n-gram."""
    windows = history.unfold(-1, n, 1)  # (B, R, P, n)
    return windows.reshape(history.shape[0], -1, n)


@dataclass(frozen=True)
class NGram:
    """n-gram diversity (the paper's "n-gram Diversity", after Gimpel et al. 2013): a candidate
    is penalised by how often its last ``n`` generated tokens occur as an n-gram anywhere in
    earlier groups' hypotheses, regardless of position. Candidates with fewer than ``n``
    generated tokens have no n-gram yet and are not penalised."""

    n: int = 2
    needs_history: ClassVar[bool] = True

    def __call__(self, earlier: EarlierGroups) -> torch.Tensor:
        own, history, n = earlier.own_history, earlier.history, self.n
        batch, width, t = own.shape
        if t + 1 < n:
            return own.new_zeros((batch, 1, earlier.vocab_size), dtype=torch.float32)
        grams = _ngram_windows(history, n)  # (B, N, n)
        prefix = own[:, :, t - n + 1 :]  # (B, K, n - 1): the candidate's n-gram without v
        # (B, K, N): earlier n-grams whose first n - 1 tokens equal the candidate's prefix
        match = (grams[:, None, :, : n - 1] == prefix[:, :, None, :]).all(-1).float()
        last = grams[:, None, :, n - 1].expand(batch, width, -1)
        counts = own.new_zeros((batch, width, earlier.vocab_size), dtype=torch.float32)
        return counts.scatter_add_(2, last, match)


@dataclass(frozen=True)
class Embedding:
    """Neural-embedding diversity (the paper's "Neural-embedding Diversity"): exact matches are
    replaced by the cosine similarity of token embeddings, so near-synonyms are penalised too.

    ``n = 1``: the soft version of Hamming, ``sum_b' cos(e_v, e_{y_b'})`` over the tokens earlier
    groups chose at this step. ``n >= 2``: the soft version of n-gram diversity; an n-gram's
    vector is the sum of its tokens' vectors (as the paper does), and a candidate's last n-gram
    is compared with every n-gram of earlier groups' hypotheses. ``embeddings`` is a
    ``(vocab, dim)`` matrix (the model's input embeddings unless the user gives one); rows past
    its end (padded logits) count as zero vectors."""

    embeddings: torch.Tensor
    n: int = 1
    needs_history: ClassVar[bool] = True
    _tables: dict = field(default_factory=dict, compare=False, repr=False)

    def _table(self, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, D)`` float32 vectors and their unit-length versions, built once per call site."""
        key = (vocab_size, device)
        if key not in self._tables:
            table = self.embeddings.detach().to(device=device, dtype=torch.float32)
            if table.shape[0] < vocab_size:
                table = torch.cat([table, table.new_zeros((vocab_size - table.shape[0], table.shape[1]))])
            table = table[:vocab_size]
            self._tables[key] = (table, torch.nn.functional.normalize(table, dim=-1))
        return self._tables[key]

    def __call__(self, earlier: EarlierGroups) -> torch.Tensor:
        table, unit = self._table(earlier.vocab_size, earlier.tokens.device)  # (V, D) each
        if self.n == 1:
            total = unit[earlier.tokens].sum(1)  # (B, D): sum of earlier tokens' unit vectors
            return (total @ unit.T)[:, None, :]  # (B, 1, V)
        own, n = earlier.own_history, self.n
        batch, width, t = own.shape
        if t + 1 < n:
            return own.new_zeros((batch, 1, earlier.vocab_size), dtype=torch.float32)
        grams = _ngram_windows(earlier.history, n)  # (B, N, n)
        total = torch.nn.functional.normalize(table[grams].sum(2), dim=-1).sum(1)  # (B, D)
        prefix = table[own[:, :, t - n + 1 :]].sum(2)  # (B, K, D): a, the candidate minus v
        # cos(a + e_v, u) summed over u = (a + e_v) . total / |a + e_v|, with
        # |a + e_v|^2 = |a|^2 + 2 a.e_v + |e_v|^2, all (B, K, V) by matrix products
        dot = (prefix * total[:, None, :]).sum(-1, keepdim=True) + (table @ total.T).T[:, None, :]
        norm2 = (prefix * prefix).sum(-1, keepdim=True) + 2 * prefix @ table.T + (table * table).sum(-1)
        return dot / norm2.clamp_min(1e-12).sqrt()


DIVERSITY_FUNCTIONS = ("hamming", "cumulative", "ngram", "embedding")


def make_diversity(
    name: str, *, temperature: float = 1.0, ngram: int = 2, embeddings: torch.Tensor | None = None
) -> DiversityFunction:
    """The diversity function called ``name`` with its parameters."""
    check(name in DIVERSITY_FUNCTIONS, "diversity", name, f"one of {', '.join(DIVERSITY_FUNCTIONS)}")
    if name == "hamming":
        return Hamming()
    if name == "cumulative":
        return Cumulative(temperature)
    if name == "ngram":
        return NGram(ngram)
    check(
        embeddings is not None,
        "embeddings",
        None,
        "a (vocab, dim) matrix for diversity='embedding': pass embeddings=... or use a model "
        "that exposes its input embeddings",
    )
    return Embedding(embeddings, ngram)
