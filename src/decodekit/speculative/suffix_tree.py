"""A depth-limited, path-compressed suffix tree with occurrence counts, updated one token at a time.

The tree holds every substring of length ``<= max_depth`` of the sequences added to it; the
count of a string is how many times it occurs, so ``count(s + t) / count(s)`` estimates the
probability that ``s`` is followed by ``t``, the estimate SuffixDecoding drafts from (Oliaro
et al., NeurIPS 2025, Sec. 3).

**Compression.** A node stands for the end of an edge whose label is a run of tokens in one
of the stored sequences (``ref_seq``, ending at ``ref_end``), so a string's position in the
tree is ``(node, offset)`` with ``1 <= offset <= length[node]``. Every position on an edge has
the node's count: nodes exist only where the tree branches or where an occurrence ends (a
suffix cut at ``max_depth``, or the end of a sequence). Nodes live in parallel ``array``
columns (9 int32 per node); children are a linked list of siblings, or a dict once a node has
more than ``WIDE`` of them. The tree has O(stored tokens) nodes, not O(tokens x depth).

**Updates.** A sequence being extended keeps its *open suffixes*: the nodes where its last
``max_depth`` suffixes end. Appending token ``t`` moves each one edge position down:

- no edge starts with ``t``: a leaf that only this suffix reaches grows by one token;
  otherwise a new one-token leaf hangs below;
- only this suffix ends at the node, and its one child starts with ``t``: the boundary between
  them slides one token down (or the two fuse when the child has one token left) -- a repeat
  of earlier text therefore costs no new nodes;
- otherwise the suffix moves into the child, splitting its edge after ``t`` when it is longer.

**Removal** (FIFO eviction of the global tree) walks the sequence's suffixes and counts them
out; empty nodes are unlinked and a node left with one child of its own count is fused into it.
Edge labels may still point into a removed sequence, so removed sequences' tokens (4 bytes
each) are kept until they outnumber the live ones, and then the tree is rebuilt from the live
sequences (amortised O(1) per removed token).

Drafting from the tree (matches, the greedy path, the best-first tree) is in
:mod:`decodekit.speculative.suffix_search`.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator

from decodekit.speculative.suffix_search import Position, TreeSearch

WIDE = 8
"""A node with more children than this keeps them in a dict instead of a sibling list."""

_COLUMNS = ("parent", "count", "length", "depth", "ref_seq", "ref_end", "token", "first", "sibling")
_WIDE_LIST = -2  # ``first[node]`` of a node whose children are in ``_wide``


class SuffixTree(TreeSearch):
    """Suffix tree over several sequences (see module docstring). Node 0 is the root."""

    def __init__(self, max_depth: int):
        self.max_depth = max_depth
        self._reset()

    def _reset(self) -> None:
        for name in _COLUMNS:
            setattr(self, name, array("i", [0]))
        self._columns = tuple(getattr(self, name) for name in _COLUMNS)
        self.parent[0] = self.sibling[0] = -1
        self.first[0] = _WIDE_LIST
        self._wide: dict[int, dict[int, int]] = {0: {}}
        self._free: list[int] = []
        self._seqs: dict[int, array] = {}
        self._open: dict[int, list[int]] = {}  # sequence id -> nodes of its open suffixes
        self._removed: set[int] = set()
        self._removed_tokens = 0

    def __len__(self) -> int:
        """Nodes in use, the root included."""
        return len(self.count) - len(self._free)

    @property
    def empty(self) -> bool:
        return self.count[0] == 0

    @property
    def stored_tokens(self) -> int:
        """Tokens of the live (not removed) sequences: one suffix starts at each of them."""
        return self.count[0]

    def length_of(self, sequence: int) -> int:
        """Tokens of sequence ``sequence`` (0 if the tree does not hold it)."""
        return 0 if sequence in self._removed else len(self._seqs.get(sequence, ()))

    # -- structure ------------------------------------------------------------------------------

    def _new(self, parent: int, count: int, length: int, depth: int, seq: int, end: int, token: int) -> int:
        # Subtle: one statement per column, no tuple and zip: this runs for most new tokens
        if self._free:
            node = self._free.pop()
            self.parent[node], self.count[node], self.length[node], self.depth[node] = parent, count, length, depth
            self.ref_seq[node], self.ref_end[node], self.token[node] = seq, end, token
            self.first[node] = self.sibling[node] = -1
            return node
        self.parent.append(parent)
        self.count.append(count)
        self.length.append(length)
        self.depth.append(depth)
        self.ref_seq.append(seq)
        self.ref_end.append(end)
        self.token.append(token)
        self.first.append(-1)
        self.sibling.append(-1)
        return len(self.count) - 1

    def _child(self, node: int, token: int) -> int:
        child = self.first[node]
        if child == _WIDE_LIST:
            return self._wide[node].get(token, -1)
        tokens, sibling = self.token, self.sibling
        while child >= 0 and tokens[child] != token:
            child = sibling[child]
        return child

    def children(self, node: int) -> Iterator[int]:
        child = self.first[node]
        if child == _WIDE_LIST:
            yield from self._wide[node].values()
            return
        while child >= 0:
            yield child
            child = self.sibling[child]

    def _add_child(self, node: int, child: int) -> None:
        first, sibling = self.first, self.sibling
        if first[node] == _WIDE_LIST:
            self._wide[node][self.token[child]] = child
            return
        listed = list(self.children(node))
        if len(listed) >= WIDE:
            self._wide[node] = {self.token[c]: c for c in listed + [child]}
            first[node] = _WIDE_LIST
        else:
            sibling[child], first[node] = first[node], child

    def _replace_child(self, node: int, old: int, new: int) -> None:
        """Put ``new`` where ``old`` hangs below ``node`` (both start with ``token[old]``)."""
        first, sibling = self.first, self.sibling
        if first[node] == _WIDE_LIST:
            self._wide[node][self.token[old]] = new
            return
        sibling[new] = sibling[old]
        if first[node] == old:
            first[node] = new
            return
        at = first[node]
        while sibling[at] != old:
            at = sibling[at]
        sibling[at] = new

    def _unlink(self, node: int, child: int) -> None:
        first, sibling = self.first, self.sibling
        if first[node] == _WIDE_LIST:
            del self._wide[node][self.token[child]]
        elif first[node] == child:
            first[node] = sibling[child]
        else:
            at = first[node]
            while sibling[at] != child:
                at = sibling[at]
            sibling[at] = sibling[child]

    def _rekey(self, node: int, child: int, token: int) -> None:
        """``child`` (below ``node``) lost its edge's first token; ``token`` is the new first one."""
        if self.first[node] == _WIDE_LIST:
            wide = self._wide[node]
            del wide[self.token[child]]
            wide[token] = child
        self.token[child] = token

    def _release(self, node: int) -> None:
        self._wide.pop(node, None)
        self.first[node] = self.sibling[node] = -1
        self.count[node] = 0
        self._free.append(node)

    def _label(self, node: int, offset: int) -> int:
        """The token ``offset`` (0-based) into ``node``'s edge."""
        return self._seqs[self.ref_seq[node]][self.ref_end[node] - self.length[node] + offset]

    # -- updates --------------------------------------------------------------------------------

    def extend(self, sequence: int, tokens: Iterable[int]) -> None:
        """Append ``tokens`` to sequence ``sequence`` (created on first use). Mutates the tree."""
        seq = self._seqs.get(sequence)
        if seq is None:
            seq = self._seqs[sequence] = array("i")
            self._open[sequence] = []
        elif sequence not in self._open:
            raise ValueError(f"sequence {sequence} is closed or removed")
        suffixes, limit = self._open[sequence], self.max_depth
        count, length, depth = self.count, self.length, self.depth
        ref_seq, ref_end, token_of = self.ref_seq, self.ref_end, self.token
        first, sibling, wide = self.first, self.sibling, self._wide
        for token in tokens:
            suffixes.append(0)  # the empty suffix, at the root
            if len(suffixes) > limit:
                del suffixes[0]  # reached max_depth at the previous token
            seq.append(token)
            end = len(seq)
            count[0] += 1
            for i, node in enumerate(suffixes):
                child = first[node]  # inlined _child: this loop is the proposer's hot path
                if child == _WIDE_LIST:
                    child = wide[node].get(token, -1)
                else:
                    while child >= 0 and token_of[child] != token:
                        child = sibling[child]
                if child < 0:
                    if node and count[node] == 1:  # a leaf only this suffix reaches: grow it
                        length[node] += 1
                        depth[node] += 1
                        ref_seq[node], ref_end[node] = sequence, end
                    else:
                        leaf = self._new(node, 1, 1, depth[node] + 1, sequence, end, token)
                        self._add_child(node, leaf)
                        suffixes[i] = leaf
                elif node and count[node] == count[child] + 1:
                    # Only this suffix ends at ``node`` and its one child starts with ``token``.
                    if length[child] == 1:  # the child's string is this suffix now: fuse
                        count[child] += 1
                        length[child] += length[node]
                        token_of[child] = token_of[node]
                        ref_seq[child], ref_end[child] = sequence, end
                        self.parent[child] = self.parent[node]
                        self._replace_child(self.parent[node], node, child)
                        self._release(node)
                        suffixes[i] = child
                    else:  # slide the boundary one token down
                        length[node] += 1
                        depth[node] += 1
                        ref_seq[node], ref_end[node] = sequence, end
                        length[child] -= 1
                        self._rekey(node, child, self._label(child, 0))
                elif length[child] == 1:
                    count[child] += 1
                    suffixes[i] = child
                else:  # split the child's edge after ``token``
                    middle = self._new(node, count[child] + 1, 1, depth[node] + 1, sequence, end, token)
                    self._replace_child(node, child, middle)
                    self.parent[child] = middle
                    length[child] -= 1
                    token_of[child] = self._label(child, 0)
                    first[middle] = child
                    sibling[child] = -1
                    suffixes[i] = middle

    def close(self, sequence: int) -> None:
        """Stop extending ``sequence`` (its substrings stay in the tree)."""
        self._open.pop(sequence, None)

    def remove(self, sequence: int) -> None:
        """Take sequence ``sequence`` out again (counts down; empty nodes freed)."""
        if sequence not in self._seqs or sequence in self._removed:
            raise KeyError(f"no sequence {sequence} in the tree")
        self._open.pop(sequence, None)
        seq, limit, count, length = self._seqs[sequence], self.max_depth, self.count, self.length
        for start in range(len(seq)):
            stop, at, node = min(len(seq), start + limit), start, 0
            count[0] -= 1
            path, emptied = [], []
            while at < stop:
                child = self._child(node, seq[at])
                count[child] -= 1
                if count[child] == 0:
                    self._unlink(node, child)  # its edges stay readable for the rest of the walk
                    emptied.append(child)
                else:
                    path.append(child)
                node, at = child, at + length[child]
            for node in emptied:
                self._release(node)
            for node in path:
                only = self._only_child(node)
                if only >= 0 and count[only] == count[node]:  # no occurrence ends at ``node``
                    self._fuse(node, only)
        self._removed.add(sequence)
        self._removed_tokens += len(seq)
        if self._removed_tokens > max(self.stored_tokens, 4096):
            self._rebuild()

    def discard(self, sequence: int) -> None:
        """Remove ``sequence`` if the tree holds it."""
        if sequence in self._seqs and sequence not in self._removed:
            self.remove(sequence)

    def _only_child(self, node: int) -> int:
        first = self.first[node]
        if first == _WIDE_LIST:
            wide = self._wide[node]
            return next(iter(wide.values())) if len(wide) == 1 else -1
        return first if first >= 0 and self.sibling[first] < 0 else -1

    def _fuse(self, node: int, child: int) -> None:
        """``child`` takes ``node``'s place, its edge lengthened by ``node``'s."""
        parent = self.parent[node]
        self.length[child] += self.length[node]
        self.token[child] = self.token[node]
        self.parent[child] = parent
        self._replace_child(parent, node, child)
        self._release(node)

    def _rebuild(self) -> None:
        live = [(i, s, i in self._open) for i, s in self._seqs.items() if i not in self._removed]
        self._reset()
        for sequence, tokens, still_open in live:
            self.extend(sequence, tokens)
            if not still_open:
                self.close(sequence)

    def memory_bytes(self) -> int:
        """Bytes held by the tree's columns, child dicts, stored sequences and open suffixes."""
        total = sum(sys.getsizeof(getattr(self, name)) for name in _COLUMNS)
        for wide in self._wide.values():
            total += sys.getsizeof(wide) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in wide.items() if k > 256 or v > 256)
        total += sys.getsizeof(self._seqs) + sum(sys.getsizeof(s) for s in self._seqs.values())
        total += sys.getsizeof(self._open) + sum(sys.getsizeof(s) for s in self._open.values())
        return total + sys.getsizeof(self._free) + 8 * len(self._free)

    # -- queries --------------------------------------------------------------------------------

    def locate(self, tokens: Iterable[int]) -> Position | None:
        """The position of string ``tokens``, or None if it does not occur."""
        node = offset = 0
        length, first, sibling, token_of = self.length, self.first, self.sibling, self.token
        edge, start = None, 0  # the stored tokens of the current node's edge, from ``start``
        for token in tokens:
            if offset == length[node]:
                child = first[node]
                if child == _WIDE_LIST:
                    child = self._wide[node].get(token, -1)
                else:
                    while child >= 0 and token_of[child] != token:
                        child = sibling[child]
                if child < 0:
                    return None
                node, offset, edge = child, 1, None
            else:
                if edge is None:
                    edge, start = self._seqs[self.ref_seq[node]], self.ref_end[node] - length[node]
                if edge[start + offset] != token:
                    return None
                offset += 1
        return node, offset

    def count_at(self, position: Position) -> int:
        return self.count[position[0]]

    def depth_at(self, position: Position) -> int:
        node, offset = position
        return self.depth[node] - self.length[node] + offset

    def continues(self, position: Position) -> bool:
        """Whether the string at ``position`` occurs followed by something."""
        node, offset = position
        return offset < self.length[node] or self.first[node] != -1 and any(True for _ in self.children(node))
