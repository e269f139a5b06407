"""The path-compressed suffix tree against a brute-force count of substrings.

The oracle is independent of the tree: ``count(s)`` is the number of positions where ``s``
occurs in the live sequences, for every ``s`` up to ``max_depth`` long; the greedy path and the
best-first tree are recomputed from those counts with the documented tie rules.
"""

from __future__ import annotations

import heapq
import tracemalloc
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decodekit.speculative import suffix_tree
from decodekit.speculative.suffix_tree import SuffixTree


def substring_counts(sequences: list[list[int]], depth: int) -> Counter:
    counts: Counter = Counter()
    for seq in sequences:
        for start in range(len(seq)):
            for end in range(start + 1, min(len(seq), start + depth) + 1):
                counts[tuple(seq[start:end])] += 1
    return counts


def followers(counts: Counter, string: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(token, count(string + token))`` for every token that follows ``string``."""
    return sorted((s[-1], c) for s, c in counts.items() if len(s) == len(string) + 1 and s[:-1] == string)


def oracle_path(counts: Counter, string: tuple[int, ...], budget: int, min_prob: float):
    tokens, score, prob = [], 0.0, 1.0
    while len(tokens) < budget:
        options = followers(counts, string)
        if not options:
            break
        token, count = max(options, key=lambda o: (o[1], -o[0]))
        if prob * count / counts[string] < min_prob:
            break
        prob *= count / counts[string]
        tokens.append(token)
        score += prob
        string += (token,)
    return tokens, score


def oracle_tree(counts: Counter, string: tuple[int, ...], budget: int, min_prob: float):
    tokens, parents, score, frontier = [], [], 0.0, []

    def push(s, prob, index):
        for token, count in followers(counts, s):
            p = prob * count / counts[s]
            if p >= min_prob:
                heapq.heappush(frontier, (-p, index, token, s + (token,)))

    push(string, 1.0, -1)
    while frontier and len(tokens) < budget:
        neg, parent, token, s = heapq.heappop(frontier)
        tokens.append(token)
        parents.append(parent)
        score -= neg
        push(s, -neg, len(tokens) - 1)
    return tokens, parents, score


def assert_tree_matches(tree: SuffixTree, sequences: list[list[int]], depth: int, alphabet: int):
    counts = substring_counts(sequences, depth)
    for string, count in counts.items():
        position = tree.locate(string)
        assert position is not None, string
        assert tree.count_at(position) == count, string
        assert tree.depth_at(position) == len(string)
        assert tree.continues(position) == bool(followers(counts, string))
    assert tree.count[0] == sum(len(s) for s in sequences)
    for string in list(counts)[:40]:
        for token in range(alphabet):
            missing = string + (token,)
            if len(missing) <= depth and missing not in counts:
                assert tree.locate(missing) is None, missing
        if len(string) < depth:
            position = tree.locate(string)
            tokens, score, _, _ = tree.best_path(position, 6, 0.2)
            want_tokens, want_score = oracle_path(counts, string, 6, 0.2)
            assert (tokens, score) == (want_tokens, pytest.approx(want_score))
            tokens, parents, score = tree.best_tree(position, 5, 0.05)
            want_tokens, want_parents, want_score = oracle_tree(counts, string, 5, 0.05)
            assert (tokens, parents, score) == (want_tokens, want_parents, pytest.approx(want_score))


operations = st.lists(
    st.tuples(st.sampled_from(["extend", "extend", "extend", "close", "remove"]), st.integers(0, 3), st.lists(st.integers(0, 3), max_size=12)),
    min_size=1,
    max_size=14,
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(ops=operations, depth=st.integers(2, 7), wide=st.sampled_from([2, suffix_tree.WIDE]))
def test_counts_positions_and_drafts_equal_a_brute_force_count(ops, depth, wide):
    """Interleaved appends to several sequences, closes and removals, on a 4-token alphabet
    (so text repeats and every update case is hit), with children in sibling lists or dicts
    (``wide``): after each operation every substring's count, depth and continuation, and the
    drafts, equal the brute-force ones."""
    default, suffix_tree.WIDE = suffix_tree.WIDE, wide
    try:
        _replay(ops, depth)
    finally:
        suffix_tree.WIDE = default


def _replay(ops, depth):
    tree, live, closed = SuffixTree(depth), {}, set()
    for op, sid, tokens in ops:
        if op == "extend" and sid not in closed:
            tree.extend(sid, tokens)
            live.setdefault(sid, []).extend(tokens)
        elif op == "close" and sid in live:
            tree.close(sid)
            closed.add(sid)
        elif op == "remove" and sid in live:
            tree.remove(sid)
            del live[sid]
            closed.add(sid)  # a removed id is not reused
        assert_tree_matches(tree, list(live.values()), depth, alphabet=4)


def test_repeated_text_costs_no_new_nodes():
    """A second copy of a text slides node boundaries instead of adding nodes (compression),
    and the node count stays linear in the stored tokens at any depth."""
    text = list(range(100, 400))
    tree = SuffixTree(max_depth=24)
    tree.extend(0, text)
    once = len(tree)
    tree.extend(0, text)
    assert len(tree) <= once + 2 * 24  # only the seam between the copies branches
    deep = SuffixTree(max_depth=256)
    deep.extend(0, [t % 37 for t in range(5000)] + list(range(40, 2000)))
    assert len(deep) <= 2 * deep.stored_tokens + 1


def test_removed_sequences_are_dropped_by_a_rebuild_and_counts_stay_exact():
    tree = SuffixTree(max_depth=6)
    kept = [1, 2, 3, 1, 2, 4] * 3
    tree.extend(0, kept)
    tree.close(0)
    for sid in range(1, 40):  # 39 x 200 removed tokens: the tree rebuilds itself on the way
        tree.extend(sid, [(sid * 7 + i) % 11 for i in range(200)])
        tree.close(sid)
        tree.remove(sid)
    assert tree.stored_tokens == len(kept)
    assert sum(len(s) for s in tree._seqs.values()) <= len(kept) + 4096 + 200  # removed ones dropped
    assert_tree_matches(tree, [kept], 6, alphabet=5)
    with pytest.raises(ValueError, match="closed"):
        tree.extend(0, [1])
    with pytest.raises(KeyError):
        tree.remove(5)


def test_memory_bytes_accounts_for_what_building_the_tree_allocates():
    tokens = [(i * 7919) % 5000 + (i // 50) % 3 for i in range(20000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tree = SuffixTree(max_depth=24)
    tree.extend(0, tokens)
    tree.close(0)
    allocated = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert abs(tree.memory_bytes() - allocated) <= 0.1 * allocated
    assert tree.memory_bytes() / len(tokens) < 200  # 9 int32 columns, ~2 nodes per token


# -- the proposer's use of the trees ------------------------------------------------------------


def _propose(proposer, rows, sequences):
    from decodekit.speculative import SpeculationContext

    draft = proposer.propose(SpeculationContext(rows, sequences, [8] * len(rows)))
    return [draft.tokens[i][draft.valid[i]].tolist() for i in range(len(rows))]


def test_rows_decoding_together_draft_from_each_other_and_the_cache_stays_bounded():
    from decodekit.speculative import SuffixConfig
    from decodekit.speculative.suffix import SuffixTreeProposer

    proposer = SuffixTreeProposer(SuffixConfig(max_depth=8, max_cached_requests=2, min_token_prob=0.0))
    text = [5, 6, 7, 8, 9, 10, 11]
    proposer.begin([[1], [2]], None)
    _propose(proposer, [1], [[2] + text])  # row 1 has generated ``text`` so far
    assert proposer.global_tree.locate(text) is not None  # in the global tree while decoding
    # row 0 (whose own prompt and output never held this text) drafts it from row 1's output
    assert _propose(proposer, [0], [[1, 3, 5, 6]]) == [[7, 8, 9, 10, 11]]
    proposer.finish([[3, 5, 6], text])
    assert proposer.global_tree.stored_tokens == 3 + len(text)  # the last tokens joined at finish
    proposer.begin([[4]], None)  # a third output: the oldest (row 0's) is evicted
    assert proposer.global_tree.stored_tokens == len(text)
    assert proposer.global_tree.locate([3, 5]) is None
    proposer.finish([[]])


def test_tree_mode_proposes_the_path_that_goes_past_the_depth_limit_when_it_scores_higher():
    """A long repeated span: the best-first tree stops at the depth limit, the path re-matches
    and goes on, so it scores higher and is proposed instead of the tree."""
    from decodekit.speculative import SuffixConfig
    from decodekit.speculative.suffix import SuffixTreeProposer

    span = list(range(10, 40))
    for tree in (False, True):
        proposer = SuffixTreeProposer(SuffixConfig(max_depth=6, max_tokens=20, max_spec_factor=8.0, max_cached_requests=0, tree=tree))
        proposer.begin([span + [1]], None)
        assert _propose(proposer, [0], [span + [1] + span[:3]]) == [span[3:11]]  # 8: the limit
