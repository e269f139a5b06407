"""Catalog and corpus-substring constraints on scripted models: the compiled structures, the
cursors (fork, rollback, budget), the processor's masking and honesty, and an exhaustive
oracle for catalog beam search."""

from __future__ import annotations

import math

import pytest
import torch

import decodekit
from decodekit.constraints import Catalog, CorpusSubstring, constraint_processor
from decodekit.constraints.catalog import CatalogTrie
from decodekit.constraints.corpus import SuffixArrayIndex
from decodekit.constraints.processor import ConstraintProcessor
from decodekit.errors import ConfigError, InputError
from decodekit.model.scripted import ScriptedModel

EOS, VOCAB = 0, 12
PROMPT = [5, 6]


def hashed(vocab: int = VOCAB, sharpness: float = 2.0):
    """Deterministic, varied next-token log-probs keyed by the whole sequence."""

    def next_logprobs(sequence):
        generator = torch.Generator().manual_seed(hash(tuple(sequence)) % (2**31))
        return (torch.randn(vocab, generator=generator) * sharpness).log_softmax(-1)

    return next_logprobs


def decoder(vocab: int = VOCAB) -> decodekit.Decoder:
    return decodekit.load(ScriptedModel(vocab, hashed(vocab), eos_token_ids=(EOS,)))


def oracle_score(entry, prompt=PROMPT) -> float:
    scorer, sequence, total = hashed(), list(prompt), 0.0
    for token in [*entry, EOS]:
        total += float(scorer(sequence)[token])
        sequence.append(token)
    return total


# -- the compiled trie ----------------------------------------------------------------------------


def test_trie_children_terminals_and_entries():
    trie = CatalogTrie([[3, 4], [3, 4, 5], [3, 6], [7], [3, 4]], vocab_size=10)
    assert trie.num_entries == 4  # the duplicate [3, 4] shares a node
    assert trie.check([3, 4]).info == {"entry": 0} and trie.check([3, 4, 5]).info == {"entry": 1}
    assert not trie.check([3]).valid and not trie.check([3, 9]).valid and not trie.check([]).valid
    cursor = trie.cursor(2)
    mask = torch.zeros((2, 10), dtype=torch.bool)
    cursor.allowed(mask)
    assert mask.nonzero().tolist() == [[0, 3], [0, 7], [1, 3], [1, 7]]


def test_catalog_cursor_budget_fork_and_rollback():
    trie = CatalogTrie([[1, 2, 3, 4], [1, 5]], vocab_size=8)
    cursor = trie.cursor(1)
    cursor.advance(torch.tensor([1]), torch.tensor([True]))
    mask = torch.zeros((1, 8), dtype=torch.bool)
    cursor.allowed(mask, remaining=3)  # [1, 2, 3, 4] needs 3 more tokens + EOS: only 5 fits
    assert mask.nonzero()[:, 1].tolist() == [5]
    cursor.fork(torch.tensor([0, 0, 0]))
    cursor.advance(torch.tensor([2, 5, 7]), torch.tensor([True, True, True]))  # 7: no edge
    assert cursor.depth.tolist() == [2, 2, 1]
    assert cursor.is_accepting().tolist() == [False, True, False]
    cursor.rollback(torch.tensor([1, 0, 5]))
    assert cursor.node().tolist()[2] == 0 and cursor.depth.tolist() == [1, 2, 0]


def test_100k_catalog_compiles_in_seconds():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 12, (100_000,), generator=generator).tolist()
    entries = [torch.randint(1, 6000, (n,), generator=generator).tolist() for n in lengths]
    import time

    start = time.perf_counter()
    trie = Catalog(entries).compile(None, 6144, (EOS,))
    assert time.perf_counter() - start < 10
    assert all(trie.check(entries[i]).valid for i in range(0, 100_000, 997))


# -- the corpus suffix array ----------------------------------------------------------------------


def test_corpus_counts_and_allowed_continuations():
    index = SuffixArrayIndex([[1, 2, 3, 1, 2], [2, 3, 4]], vocab_size=8)
    assert index.count([1, 2]) == 2 and index.count([2, 3]) == 2 and index.count([2, 3, 4]) == 1
    assert index.count([2, 1]) == 0 and index.count([2, 3, 1, 2]) == 1
    assert index.count([3, 4, 2]) == 0  # would cross the end of a document
    cursor = index.cursor(1)
    cursor.advance(torch.tensor([2]), torch.tensor([True]))
    mask = torch.zeros((1, 8), dtype=torch.bool)
    cursor.allowed(mask)
    assert mask.nonzero()[:, 1].tolist() == [3]  # "2" is followed by 3 (twice) or a boundary
    cursor.advance(torch.tensor([3]), torch.tensor([True]))
    mask.zero_()
    cursor.allowed(mask)
    assert mask.nonzero()[:, 1].tolist() == [1, 4]
    assert cursor.occurrences().tolist() == [2] and cursor.is_accepting().tolist() == [True]
    cursor.rollback(1)
    assert cursor.occurrences().tolist() == [3] and cursor.depth.tolist() == [1]


def test_corpus_cursor_fast_advance_matches_the_binary_search():
    generator = torch.Generator().manual_seed(1)
    documents = [torch.randint(1, 5, (n,), generator=generator).tolist() for n in (40, 25, 60)]
    index = SuffixArrayIndex(documents, vocab_size=6)
    fast, slow = index.cursor(3), index.cursor(3)
    for _ in range(6):
        mask = torch.zeros((3, 6), dtype=torch.bool)
        fast.allowed(mask)  # fills the keys the fast advance uses
        if not mask.any():
            break
        parents = torch.randint(0, 3, (3,), generator=generator)
        parents = torch.where(mask.any(1)[parents], parents, mask.any(1).nonzero()[0, 0])
        fast.fork(parents)
        slow.fork(parents)
        choices = mask[parents].float()
        tokens = torch.multinomial(choices, 1, generator=generator).squeeze(1)
        live = torch.ones(3, dtype=torch.bool)
        fast.advance(tokens, live)
        slow.advance(tokens, live)
        assert torch.equal(fast.lo, slow.lo) and torch.equal(fast.hi, slow.hi)
        assert bool((fast.occurrences() > 0).all())


# -- the processor ---------------------------------------------------------------------------------


def test_processor_allows_eos_only_when_accepting_and_leaves_finished_rows_alone():
    processor = ConstraintProcessor(CatalogTrie([[1], [1, 2]], vocab_size=4), (EOS,), max_new_tokens=5)
    processor.reset(2)
    scores = processor(None, torch.zeros((2, 4)))
    assert torch.isinf(scores).tolist() == [[True, False, True, True]] * 2
    processor.advance(None, torch.tensor([1, 1]))
    scores = processor(None, torch.zeros((2, 4)))
    assert torch.isfinite(scores).tolist() == [[True, False, True, False]] * 2
    processor.advance(None, torch.tensor([EOS, 2]))
    scores = processor(None, torch.zeros((2, 4)))
    assert torch.isfinite(scores[0]).all()  # row 0 is done: its padding is not masked
    assert torch.isfinite(scores[1]).tolist() == [True, False, False, False]


def test_processor_ends_a_row_whose_allowed_tokens_were_all_banned():
    processor = ConstraintProcessor(CatalogTrie([[1, 2]], vocab_size=4), (EOS,), max_new_tokens=5)
    processor.reset(1)
    scores = torch.tensor([[0.0, -math.inf, 0.0, 0.0]])  # another processor banned token 1
    out = processor(None, scores)
    assert out.argmax().item() == EOS and torch.isfinite(out).sum() == 1


def test_processor_rollback_revives_rows_that_ended_in_the_undone_steps():
    processor = ConstraintProcessor(CatalogTrie([[1, 2], [1]], vocab_size=4), (EOS,), max_new_tokens=9)
    processor.reset(2)
    for tokens in ([1, 1], [2, EOS]):
        processor(None, torch.zeros((2, 4)))
        processor.advance(None, torch.tensor(tokens))
    processor.rollback(1)
    assert processor.status.tolist() == [0, 0] and processor.cursor.depth.tolist() == [1, 1]
    processor.rollback(1)
    assert processor.cursor.depth.tolist() == [0, 0] and processor.step == 0


# -- decoding ------------------------------------------------------------------------------------------

CATALOG = [[3], [3, 4], [3, 4, 8], [7, 1, 2], [9, 9], [10, 2, 3, 4], [1, 11], [4], [6, 5, 4, 3]]


@pytest.mark.parametrize("strategy", [decodekit.Greedy(), decodekit.Sampling(n=4, seed=3)])
def test_row_strategies_return_catalog_members(strategy):
    result = decoder().generate(PROMPT, strategy, constraint=Catalog(CATALOG), max_new_tokens=6)
    for sequence in result.sequences:
        assert sequence.finish_reason == "eos"
        assert sequence.token_ids[:-1] in CATALOG
        assert sequence.constraint["entry"] == CATALOG.index(sequence.token_ids[:-1])


def test_beam_search_matches_an_exhaustive_scoring_of_the_catalog():
    k = 5
    strategy = decodekit.BeamSearch(num_beams=len(CATALOG), num_return_sequences=k, length_penalty=0.0)
    result = decoder().generate(PROMPT, strategy, constraint=Catalog(CATALOG), max_new_tokens=6)
    expected = sorted(CATALOG, key=oracle_score, reverse=True)[:k]
    assert [s.token_ids[:-1] for s in result.sequences] == expected
    assert [s.score for s in result.sequences] == pytest.approx([oracle_score(e) for e in expected], abs=1e-4)
    assert all(s.finish_reason == "eos" for s in result.sequences)


def test_diverse_beam_search_returns_catalog_members():
    strategy = decodekit.DiverseBeamSearch(num_beams=6, num_groups=3, num_return_sequences=6)
    result = decoder().generate(PROMPT, strategy, constraint=Catalog(CATALOG), max_new_tokens=6)
    assert {s.group for s in result.sequences} == {0, 1, 2}
    assert all(s.finish_reason == "eos" and s.token_ids[:-1] in CATALOG for s in result.sequences)


def test_a_prompt_s_constrained_result_does_not_depend_on_its_batch():
    strategy = decodekit.BeamSearch(num_beams=4, num_return_sequences=3)
    prompts = [PROMPT, [7, 8, 9], [4]]
    together = decoder().generate(prompts, strategy, constraint=Catalog(CATALOG), max_new_tokens=6)
    for prompt, result in zip(prompts, together, strict=True):
        alone = decoder().generate(prompt, strategy, constraint=Catalog(CATALOG), max_new_tokens=6)
        assert [s.token_ids for s in result.sequences] == [s.token_ids for s in alone.sequences]
        assert [s.score for s in result.sequences] == pytest.approx([s.score for s in alone.sequences])


def test_an_entry_that_cannot_fit_the_budget_finishes_as_constraint():
    result = decoder().generate(PROMPT, "greedy", constraint=Catalog([[1, 2, 3, 4, 5]]), max_new_tokens=3)
    assert result.best.finish_reason == "constraint" and result.best.constraint["valid"] is False


def test_beam_search_keeps_only_entries_that_fit_the_budget():
    strategy = decodekit.BeamSearch(num_beams=4, num_return_sequences=2)
    result = decoder().generate(PROMPT, strategy, constraint=Catalog(CATALOG), max_new_tokens=3)
    for sequence in result.sequences:
        assert sequence.finish_reason == "eos" and sequence.token_ids[:-1] in CATALOG
        assert len(sequence.token_ids) <= 3


def test_corpus_substring_outputs_are_ngrams_with_their_counts():
    corpus = [[1, 2, 3, 4, 5, 6, 7], [3, 4, 9, 10], [2, 3, 4, 5]]
    strategy = decodekit.BeamSearch(num_beams=4, num_return_sequences=4)
    result = decoder().generate(PROMPT, strategy, constraint=CorpusSubstring(corpus), max_new_tokens=5)
    text = [tuple(d) for d in corpus]
    for sequence in result.sequences:
        ngram = tuple(sequence.token_ids[:-1])
        count = sum(d[i : i + len(ngram)] == ngram for d in text for i in range(len(d)))
        assert sequence.finish_reason == "eos" and count >= 1
        assert sequence.constraint["occurrences"] == count


# -- errors, before any model call ----------------------------------------------------------------------


def test_bad_constraints_fail_before_the_model_is_called():
    model = ScriptedModel(VOCAB, hashed(), eos_token_ids=(EOS,))
    decoder = decodekit.load(model)
    with pytest.raises(ConfigError, match="catalog"):
        decoder.generate(PROMPT, "greedy", constraint=Catalog([]))
    with pytest.raises(InputError, match="entry 1 is empty"):
        decoder.generate(PROMPT, "greedy", constraint=Catalog([[1], []]))
    with pytest.raises(InputError, match="EOS"):
        decoder.generate(PROMPT, "greedy", constraint=Catalog([[1, EOS, 2]]))
    with pytest.raises(InputError, match="outside"):
        decoder.generate(PROMPT, "greedy", constraint=Catalog([[1, VOCAB]]))
    with pytest.raises(InputError, match="tokenizer"):
        decoder.generate(PROMPT, "greedy", constraint=Catalog(["text needs a tokenizer"]))
    with pytest.raises(ConfigError, match="constraint"):
        decoder.generate(PROMPT, "greedy", constraint="not a constraint")
    with pytest.raises(ConfigError, match="eos_token_ids"):
        decodekit.load(ScriptedModel(VOCAB, hashed(), eos_token_ids=())).generate(PROMPT, constraint=Catalog([[1]]))
    assert model.forward_count == 0


def test_a_strategy_that_cannot_follow_a_cursor_is_refused():
    with pytest.raises(ConfigError, match="speculative"):
        constraint_processor(Catalog([[1]]), "speculative", None, VOCAB, (EOS,), 8)
