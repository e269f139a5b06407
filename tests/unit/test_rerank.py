"""Re-ranking n-best lists with an external scorer."""

from __future__ import annotations

import pytest
import tiny_models as tm

from decodekit.errors import ConfigError, InputError
from decodekit.results import GeneratedSequence, GenerationResult
from decodekit.scoring import EmbeddingScorer, rerank


def result(texts_scores, prompt="p") -> GenerationResult:
    seqs = [GeneratedSequence([i], text, [score], score, score, "eos") for i, (text, score) in enumerate(texts_scores)]
    return GenerationResult(prompt, [1], seqs, "beam")


def test_weight_mixes_the_decoders_score_with_the_scorers():
    r = result([("a", -1.0), ("bb", -2.0), ("ccc", -3.0)])
    by_length = lambda prompt, text: float(len(text))  # noqa: E731
    assert [s.text for s in rerank(r, by_length, weight=1.0).sequences] == ["ccc", "bb", "a"]
    assert [s.text for s in rerank(r, by_length, weight=0.0).sequences] == ["a", "bb", "ccc"]
    mixed = rerank(r, by_length, weight=0.5)
    assert [s.score for s in mixed.sequences] == sorted((0.5 * s + 0.5 * len(t) for t, s in [("a", -1.0), ("bb", -2.0), ("ccc", -3.0)]), reverse=True)
    original = {s.text: s.logprob for s in r.sequences}
    assert all(s.logprob == original[s.text] for s in mixed.sequences)  # the decoder's log-prob stays
    assert r.sequences[0].text == "a"  # the input is not changed


def test_ties_keep_the_decoders_order_and_lists_give_lists():
    r = result([("x", 0.0), ("y", 0.0), ("z", 0.0)])
    assert [s.text for s in rerank(r, lambda p, t: 1.0).sequences] == ["x", "y", "z"]
    both = rerank([r, result([("q", 0.0), ("qq", 0.0)])], lambda p, t: len(t))
    assert isinstance(both, list) and [s.text for s in both[1].sequences] == ["qq", "q"]


def test_bad_inputs_are_named():
    r = result([("a", 0.0)])
    with pytest.raises(ConfigError) as caught:
        rerank(r, lambda p, t: 0.0, weight=1.5)
    assert caught.value.field == "weight"
    with pytest.raises(ConfigError):
        rerank(r, 5)
    with pytest.raises(InputError):
        rerank(r, type("Bad", (), {"score": lambda self, p, t: []})())


def test_embedding_scorer_ranks_the_prompt_itself_first(one_thread):
    scorer = EmbeddingScorer(tm.text_model(), tm.byte_tokenizer())
    prompt = "def read(path):"
    values = scorer.score(prompt, ["x = [1, 2, 3] * 7", prompt, "class Z: pass"])
    assert values[1] == pytest.approx(1.0, abs=1e-5) and values[1] > max(values[0], values[2])
    r = result([("x = [1, 2, 3] * 7", 0.0), (prompt, -5.0)], prompt=prompt)
    assert rerank(r, scorer).sequences[0].text == prompt
