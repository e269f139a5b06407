"""Catalog constraint: every output is one entry of a list of strings or token sequences.

The entries compile into a token trie stored as flat CSR arrays (nodes numbered breadth-first,
so node n's children are the contiguous edges ``offsets[n]:offsets[n+1]``, sorted by token):

- ``edge_token[e]``: the token of edge ``e``; its child node is ``e + 1`` (every node but the
  root has exactly one incoming edge, and edges are numbered in child order);
- ``edge_key[e] = parent * vocab + token``, sorted, so one ``searchsorted`` finds every row's
  child at once;
- ``terminal[n]``: node n ends an entry (``entry[n]`` is its index in the catalog);
- ``to_end[n]``: the fewest tokens from n to the end of an entry, to keep rows on entries
  that still fit in the length budget.

Building is a lexicographic sort plus vectorised numpy (a 100k-entry catalog takes about a
second); a step costs one gather over the children of the rows' nodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from decodekit.constraints.base import Cursor, Verdict
from decodekit.errors import ConfigError, InputError
from decodekit.validation import is_integer


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: entries can be huge
class Catalog:
    """Outputs are exactly one of ``entries``: strings (encoded with the model's tokenizer,
    without special tokens; each must decode back to itself) or token-id sequences."""

    entries: Sequence[str] | Sequence[Sequence[int]]
    name = "catalog"

    def compile(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int] = ()) -> CatalogTrie:
        return CatalogTrie(encode_entries(self.entries, tokenizer), vocab_size, eos_token_ids)


def encode_entries(entries: Sequence[str] | Sequence[Sequence[int]], tokenizer) -> list[list[int]]:
    """Token ids of every entry; raises :class:`InputError` for one the tokenizer cannot
    encode (it does not decode back to itself) and :class:`ConfigError` for an empty catalog."""
    allowed = "a non-empty list of strings or token-id sequences"
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence | set | frozenset):
        raise ConfigError("catalog", entries, allowed)
    entries = list(entries)
    if not entries:
        raise ConfigError("catalog", entries, allowed)
    if not all(isinstance(e, str) for e in entries):
        if any(isinstance(e, str) for e in entries):
            raise ConfigError("catalog", type(entries[0]).__name__, "all strings or all token-id sequences, not a mix")
        for i, entry in enumerate(entries):
            if isinstance(entry, bytes) or not isinstance(entry, Sequence) or not all(is_integer(t) for t in entry):
                raise ConfigError(f"catalog[{i}]", entry, "a sequence of integer token ids (or all entries strings)")
        return [[int(t) for t in e] for e in entries]
    if tokenizer is None:
        raise InputError("catalog: string entries need the model's tokenizer; pass token-id sequences or load() one")
    encoded = tokenizer(entries, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.batch_decode(encoded, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for i, (entry, text) in enumerate(zip(entries, decoded, strict=True)):
        if text != entry:
            raise InputError(f"catalog entry {i} ({entry!r}) cannot be encoded by the tokenizer: it decodes back as {text!r}")
    return [list(ids) for ids in encoded]


class CatalogTrie:
    """The compiled catalog (immutable). ``vocab_size``: width of the masks it fills."""

    name = "catalog"

    def __init__(self, sequences: list[list[int]], vocab_size: int, eos_token_ids: Sequence[int] = ()):
        self.vocab_size = vocab_size
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(len(sequences)), lengths)
        _check_sequences(flat, rows, lengths, vocab_size, eos_token_ids)
        self.max_length = int(lengths.max())
        # 1. pad to (N, L) with -1 (sorts before every token, so a prefix precedes its extensions)
        padded = np.full((len(sequences), self.max_length), -1, dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        padded[rows, np.arange(flat.size) - np.repeat(starts, lengths)] = flat
        order = np.lexsort(padded.T[::-1])
        padded, lengths = padded[order], lengths[order]
        # 2. lcp[i]: leading tokens entry i shares with entry i-1; it opens nodes at depths lcp+1..len
        same = padded[1:] == padded[:-1]
        lcp = np.where(same.all(1), self.max_length, np.argmin(same, axis=1)) if len(padded) > 1 else np.zeros(0, np.int64)
        lcp = np.concatenate([[0], lcp])
        depth = np.arange(1, self.max_length + 1)
        opens = (lcp[:, None] < depth) & (lengths[:, None] >= depth)  # (N, L)
        # 3. breadth-first ids: depth d's new nodes are numbered in sorted entry order
        per_depth = opens.sum(0)
        first_id = 1 + np.concatenate([[0], np.cumsum(per_depth)[:-1]])
        path = first_id[None, :] + np.cumsum(opens, axis=0) - 1  # (N, L): node at each depth
        nodes = 1 + int(per_depth.sum())
        entry_row, entry_depth = np.nonzero(opens)
        child = path[entry_row, entry_depth]
        parent = np.where(entry_depth > 0, path[entry_row, np.maximum(entry_depth - 1, 0)], 0)
        edge_parent = np.zeros(nodes - 1, dtype=np.int64)
        edge_token = np.zeros(nodes - 1, dtype=np.int64)
        edge_parent[child - 1], edge_token[child - 1] = parent, padded[entry_row, entry_depth]
        # 4. terminals, entry index per terminal node (the first listed of equal entries)
        end_node = path[np.arange(len(lengths)), lengths - 1]
        unset = np.iinfo(np.int64).max
        entry = np.full(nodes, unset, dtype=np.int64)
        np.minimum.at(entry, end_node, order)
        entry[entry == unset] = -1
        self.num_entries = len(np.unique(end_node))
        # 5. fewest tokens to an entry's end, deepest nodes first
        to_end = np.where(entry >= 0, 0, np.iinfo(np.int32).max).astype(np.int64)
        for d in range(self.max_length, 0, -1):
            block = slice(first_id[d - 1] - 1, first_id[d - 1] - 1 + per_depth[d - 1])
            np.minimum.at(to_end, edge_parent[block], to_end[block.start + 1 : block.stop + 1] + 1)
        # host arrays: the cursors' bookkeeping is a handful of small numpy ops per step, far
        # cheaper than as many torch dispatches; only the final mask write is a torch op
        self.offsets = np.searchsorted(edge_parent, np.arange(nodes + 1), side="left")
        self.edge_token, self.edge_key = edge_token, edge_parent * vocab_size + edge_token
        self.terminal, self.entry, self.to_end = entry >= 0, entry, to_end
        self.num_nodes = nodes

    def cursor(self, rows: int) -> CatalogCursor:
        return CatalogCursor(self, rows)

    def child(self, node: np.ndarray, token: np.ndarray) -> np.ndarray:
        """``(rows,)`` child of each node by each token, -1 where there is none."""
        if self.edge_key.size == 0:
            return np.full_like(node, -1)
        key = node * self.vocab_size + token
        index = np.minimum(np.searchsorted(self.edge_key, key), self.edge_key.size - 1)
        return np.where(self.edge_key[index] == key, index + 1, -1)

    def check(self, token_ids: Sequence[int]) -> Verdict:
        node = np.zeros(1, dtype=np.int64)
        for token in token_ids:
            if not 0 <= int(token) < self.vocab_size:
                return Verdict(False)
            node = self.child(node, np.array([int(token)]))
            if int(node[0]) < 0:
                return Verdict(False)
        index = int(self.entry[node[0]])
        return Verdict(index >= 0, {"entry": index} if index >= 0 else {})


def _check_sequences(flat: np.ndarray, rows: np.ndarray, lengths: np.ndarray, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
    """Raise :class:`InputError` naming the first empty entry, out-of-vocabulary token or EOS
    inside an entry (``flat``: every token, ``rows``: the entry of each)."""
    if (lengths == 0).any():
        raise InputError(f"catalog entry {int(np.argmax(lengths == 0))} is empty (encodes to no tokens)")
    outside = (flat < 0) | (flat >= vocab_size)
    if outside.any():
        raise InputError(f"catalog entry {int(rows[np.argmax(outside)])} has token ids outside [0, {vocab_size})")
    has_eos = np.isin(flat, np.asarray(list(eos_token_ids), dtype=np.int64))
    if has_eos.any():
        raise InputError(f"catalog entry {int(rows[np.argmax(has_eos)])} contains an EOS token; outputs end with EOS after their entry")


class CatalogCursor(Cursor):
    """Each row's trie node, plus the nodes it passed (for rollback); host numpy arrays.

    ``path``: ``(rows, max_length + 1)`` int64 node after each consumed token (column 0 is the
    root); ``depth``: ``(rows,)`` tokens consumed; ``current``: ``path[i, depth[i]]``.
    """

    def __init__(self, trie: CatalogTrie, rows: int):
        self.trie, self.rows = trie, rows
        self.path = np.zeros((rows, trie.max_length + 1), dtype=np.int64)
        self.depth = np.zeros(rows, dtype=np.int64)
        self.current = np.zeros(rows, dtype=np.int64)

    def node(self) -> np.ndarray:
        """``(rows,)`` each row's trie node."""
        return self.current

    def allowed(self, mask: torch.Tensor, remaining: int | None = None) -> None:
        """Set each row's child tokens; with a budget, only children from which an entry
        (and its EOS) fits in the ``remaining`` tokens."""
        trie, node = self.trie, self.current
        start = trie.offsets[node]
        count = trie.offsets[node + 1] - start
        total = int(count.sum())
        if total == 0:
            return
        # (rows,) segments -> (total,) flat edges: the row of each, then its edge index
        row = np.repeat(np.arange(self.rows), count)
        edge = np.arange(total) + np.repeat(start - (np.cumsum(count) - count), count)
        if remaining is not None:
            keep = trie.to_end[edge + 1] + 2 <= remaining  # this token, the rest, then EOS
            row, edge = row[keep], edge[keep]
        mask[torch.from_numpy(row).to(mask.device), torch.from_numpy(trie.edge_token[edge]).to(mask.device)] = True

    def advance(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        child = self.trie.child(self.current, tokens.cpu().numpy())
        move = live.cpu().numpy() & (child >= 0)
        self.depth = self.depth + move
        self.current = np.where(move, child, self.current)
        self.path[np.arange(self.rows), self.depth] = self.current

    def fork(self, parents: torch.Tensor) -> None:
        parents = parents.cpu().numpy()
        self.path, self.depth, self.current = self.path[parents], self.depth[parents], self.current[parents]
        self.rows = len(parents)

    def rollback(self, count: int | torch.Tensor) -> None:
        count = count.cpu().numpy() if isinstance(count, torch.Tensor) else np.asarray(count)
        if (count < 0).any():
            raise ValueError(f"rollback count must be >= 0, got {count.tolist()}")
        self.depth = np.maximum(self.depth - count, 0)
        self.current = self.path[np.arange(self.rows), self.depth]

    def is_accepting(self) -> torch.Tensor:
        return torch.from_numpy(self.trie.terminal[self.current])
