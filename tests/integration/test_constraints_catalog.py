"""Catalog and corpus constraints on a tiny random Llama with the embedded model's real
tokenizer: beam search over a 10k-entry catalog, an exhaustive oracle for a small catalog,
entries a tokenizer cannot encode, and corpus substrings with their occurrence counts."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
from constraint_models import tiny_llama, tokenizer

import decodekit
from decodekit.constraints import Catalog, CorpusSubstring
from decodekit.errors import InputError

MODULES = sorted(m for m in sys.stdlib_module_names if not m.startswith("_"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def decoder() -> decodekit.Decoder:
    return decodekit.load(tiny_llama(seed=1), tokenizer())


def big_catalog(size: int) -> list[str]:
    words = MODULES[:120]
    names = (f"{a}.{b}" for a, b in itertools.product(words, repeat=2) if a != b)
    return list(itertools.islice(names, size))


def exhaustive_scores(model, prompt: list[int], entries: list[list[int]], eos: int) -> list[float]:
    """Each entry's log-probability (its tokens, then EOS) after ``prompt``, one forward each."""
    scores = []
    with torch.no_grad():
        for entry in entries:
            ids = prompt + entry + [eos]
            logprobs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
            positions = torch.arange(len(prompt) - 1, len(ids) - 1)
            scores.append(float(logprobs[positions, torch.tensor(ids[len(prompt) :])].sum()))
    return scores


def test_beam_search_over_a_10k_catalog_returns_members_in_score_order(decoder):
    catalog = big_catalog(10_000)
    assert len(catalog) == 10_000
    members = set(catalog)
    strategy = decodekit.BeamSearch(num_beams=8, num_return_sequences=8)
    result = decoder.generate("import ", strategy, constraint=Catalog(catalog), max_new_tokens=16)
    texts = [s.text for s in result.sequences]
    assert all(text in members for text in texts) and len(set(texts)) == 8
    assert all(s.finish_reason == "eos" and catalog[s.constraint["entry"]] == s.text for s in result.sequences)
    scores = [s.score for s in result.sequences]
    assert scores == sorted(scores, reverse=True)


def test_catalog_beam_search_matches_an_exhaustive_scoring(decoder):
    catalog = MODULES[::8][:24]
    tok = tokenizer()
    k, prompt = 5, "import "
    strategy = decodekit.BeamSearch(num_beams=len(catalog), num_return_sequences=k, length_penalty=0.0)
    result = decoder.generate(prompt, strategy, constraint=Catalog(catalog), max_new_tokens=12)
    entries = [tok(entry, add_special_tokens=False)["input_ids"] for entry in catalog]
    prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
    scores = exhaustive_scores(decoder.model.model, prompt_ids, entries, tok.eos_token_id)
    best = sorted(range(len(catalog)), key=lambda i: scores[i], reverse=True)[:k]
    assert [s.text for s in result.sequences] == [catalog[i] for i in best]
    assert [s.score for s in result.sequences] == pytest.approx([scores[i] for i in best], abs=1e-4)


@pytest.mark.parametrize("strategy", [decodekit.Greedy(), decodekit.Sampling(n=4, seed=7)])
def test_row_strategies_return_catalog_members(decoder, strategy):
    catalog = MODULES[:300]
    result = decoder.generate("import ", strategy, constraint=Catalog(catalog), max_new_tokens=12)
    assert all(s.text in catalog and s.finish_reason == "eos" for s in result.sequences)


def test_entries_a_tokenizer_cannot_encode_are_named():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1, "a": 2, "b": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="<eos>")
    assert Catalog(["a", "b"]).compile(tok, 4, (1,)).num_entries == 2
    with pytest.raises(InputError, match=r"catalog entry 1 \('c'\) cannot be encoded"):
        Catalog(["a", "c"]).compile(tok, 4, (1,))


def test_corpus_substrings_come_with_their_occurrence_count(decoder):
    text = "\n".join(f"def {name}(self):\n    return self.{name}" for name in MODULES[:40])
    tok = tokenizer()
    corpus = tok(text, add_special_tokens=False)["input_ids"]
    strategy = decodekit.BeamSearch(num_beams=4, num_return_sequences=4)
    result = decoder.generate("def ", strategy, constraint=CorpusSubstring(text), max_new_tokens=6)
    for sequence in result.sequences:
        ngram = sequence.token_ids[:-1]
        count = sum(corpus[i : i + len(ngram)] == ngram for i in range(len(corpus)))
        assert sequence.finish_reason == "eos" and count >= 1 and sequence.text in text
        assert sequence.constraint["occurrences"] == count
