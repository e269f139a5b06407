"""Speculative decoding on scripted models: suffix tree, proposers, verifier, losslessness of
greedy (exact tokens) and sampling (chi-square against the exact distribution), errors."""

from __future__ import annotations

import pytest
import torch
from speculative_models import _exact_distribution, _proposer, chisquare_pvalue, markov_model

from decodekit.engine import decode
from decodekit.errors import ConfigError
from decodekit.options import DecodeOptions
from decodekit.search.sampling import Greedy, Sampling
from decodekit.speculative import (
    PromptLookupConfig,
    RecyclingConfig,
    Speculative,
    SuffixConfig,
    check_supported,
    make_proposer,
    speculative_decode,
)
from decodekit.speculative.suffix_tree import SuffixTree
from decodekit.speculative.verify import accept_greedy

ALPHA = 0.001
"""Significance level of the distribution tests (their seeds are fixed, so they never flake)."""


# -- suffix tree --------------------------------------------------------------------------------


def test_suffix_tree_counts_match_and_eviction():
    tree = SuffixTree(max_depth=4)
    tree.extend(0, [1, 2, 3, 1, 2, 4])
    assert tree.count_at(tree.locate([1, 2])) == 2
    assert tree.count_at(tree.locate([1, 2, 3])) == 1
    assert tree.locate([2, 4]) is not None and tree.locate([3, 4]) is None
    position, m = tree.match([9, 3, 1, 2], longest=3)
    assert m == 3 and position == tree.locate([3, 1, 2])
    assert tree.best_path(position, budget=3, min_prob=0.0)[:2] == ([4], 1.0)
    position, m = tree.match([1, 2, 4], longest=3)  # "2 4", "4" end the text: no continuation
    assert m == 0
    position, m = tree.match([5, 1, 2], longest=3)
    assert m == 2 and tree.best_path(position, budget=3, min_prob=0.0)[1] == pytest.approx(0.5 + 0.5)
    # incremental = built at once
    again = SuffixTree(max_depth=4)
    for t in [1, 2, 3, 1, 2, 4]:
        again.extend(0, [t])
    assert again.count.tolist() == tree.count.tolist()
    tree.extend(1, [7, 7])
    tree.remove(1)
    assert tree.locate([7]) is None and len(tree) == len(again)


def test_suffix_drafts_from_the_match_length_that_scores_best():
    """The longest match ("8 2", seen once, then 9) has a worse draft than the shorter "2"
    (seen four times, three of them followed by the 3 4 5 cycle): SuffixDecoding scores every
    match length and drafts from the best. By hand: "2" is followed by 3 three times in four,
    "2 3" by 4 and "2 3 4" by 5 always, "2 3 4 5" by 2 twice in three, so the path 3 4 5 2
    scores 0.75 + 0.75 + 0.75 + 0.5 = 2.75 against "9"'s 1.0."""
    from decodekit.speculative.suffix import SuffixTreeProposer

    sequence = [2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5, 8, 2, 9, 8, 2]
    proposer = SuffixTreeProposer(SuffixConfig(max_depth=12, max_spec_factor=4.0, max_tokens=4, min_token_prob=0.0))
    tree = SuffixTree(max_depth=12)
    tree.extend(0, sequence[:-2])  # the context's own last two tokens are the query
    assert tree.match(sequence, longest=6)[1] == 2  # the longest match: "8 2"
    tokens, parents, score = proposer._draft(tree, sequence, limit=4)
    assert tokens == [3, 4, 5, 2] and parents == [-1, 0, 1, 2]
    assert score == pytest.approx(2.75)


def test_best_tree_is_best_first():
    tree = SuffixTree(max_depth=5)
    tree.extend(0, [1, 2, 1, 2, 1, 3, 1, 2])
    node, _ = tree.match([1], longest=1)
    tokens, parents, _ = tree.best_tree(node, budget=3, min_prob=0.0)
    assert tokens[0] == 2 and parents[0] == -1  # "1 2" (3 of 4) before "1 3"
    assert all(p < i for i, p in enumerate(parents))


# -- verifier -----------------------------------------------------------------------------------


def test_greedy_acceptance_picks_longest_agreeing_tree_path():
    vocab = 6
    # block: root(5) -> a(1) -> b(2); root -> c(3) -> d(4)
    tokens = torch.tensor([[5, 1, 2, 3, 4]])
    parents = torch.tensor([[-1, 0, 1, 0, 3]])
    argmax = torch.tensor([3, 0, 0, 4, 2])  # after root: 3 (so c), after c: 4 (so d), after d: 2
    logits = torch.nn.functional.one_hot(argmax, vocab).float()[None] * 5
    result = accept_greedy(logits, tokens, parents, torch.ones_like(tokens, dtype=torch.bool))
    assert result.kept.tolist() == [3]
    assert result.path.tolist() == [[0, 3, 4]]
    assert result.tokens.tolist() == [[3, 4, 2]]  # accepted c, d; bonus 2


# -- losslessness: greedy -----------------------------------------------------------------------


def _speculations(model):
    draft = markov_model(model.vocab_size, seed=7, sharp=1.0)
    return [
        Speculative("ngram", PromptLookupConfig(num_tokens=5)),
        Speculative("suffix"),
        Speculative("suffix", SuffixConfig(tree=True, max_tokens=12)),
        Speculative("recycling", RecyclingConfig(top_k=3, branching=(3, 2, 1, 1))),
        ("draft", draft),
    ]


@pytest.mark.parametrize("batch", [1, 8])
def test_speculative_greedy_equals_greedy(batch):
    model = markov_model(vocab=12, seed=3)
    g = torch.Generator().manual_seed(batch)
    prompts = [
        torch.randint(1, 12, (int(n),), generator=g).tolist()
        for n in torch.randint(2, 9, (16,), generator=g)
    ]
    options = DecodeOptions(max_new_tokens=20)
    plain = [h[0] for h in decode(model, prompts, Greedy(), options)]
    for speculation in _speculations(model):
        speculative, proposer = _proposer(speculation, model)
        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            hyps, stats = speculative_decode(
                model, chunk, Greedy(speculative=speculative), options, proposer
            )
            for h, want in zip(hyps, plain[start : start + batch]):
                assert h[0].token_ids == want.token_ids, speculative.proposer
                assert h[0].finish_reason == want.finish_reason
                assert h[0].token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)
            assert all(s.generated == len(h[0].token_ids) for s, h in zip(stats, hyps))


# -- losslessness: sampling ---------------------------------------------------------------------


@pytest.mark.parametrize("proposer_name", ["suffix-tree", "recycling", "draft"])
def test_speculative_sampling_has_sampling_distribution(proposer_name):
    model = markov_model(vocab=4, seed=11, sharp=1.5)
    sampler = Sampling(temperature=0.8, top_k=3, n=3000)
    prompt = [1, 2, 3, 1, 2]
    if proposer_name == "draft":
        speculative, proposer = _proposer(("draft", markov_model(4, seed=5, sharp=1.0)), model)
    elif proposer_name == "recycling":
        speculative = Speculative("recycling", RecyclingConfig(top_k=2, branching=(2, 1)))
        proposer = make_proposer(speculative, model)
        # the successor matrix persists across calls: let one call fill it
        speculative_decode(
            model,
            [prompt],
            Greedy(speculative=speculative),
            DecodeOptions(max_new_tokens=8),
            proposer,
        )
    else:
        speculative = Speculative("suffix", SuffixConfig(tree=True, min_token_prob=0.0))
        proposer = make_proposer(speculative, model)
    strategy = Sampling(temperature=0.8, top_k=3, n=3000, speculative=speculative)
    generator = torch.Generator().manual_seed(2024)
    hyps, stats = speculative_decode(
        model, [prompt], strategy, DecodeOptions(max_new_tokens=3), proposer, generator=generator
    )
    assert stats[0].accepted > 0  # the draft was used, so the test tests something
    warpers = sampler.warpers()
    exact = _exact_distribution(model, prompt, 3, lambda x: warpers(None, x))
    assert chisquare_pvalue([h.token_ids for h in hyps[0]], exact, sampler.n) > ALPHA


# -- errors -------------------------------------------------------------------------------------


def test_bad_settings_raise_before_any_model_call():
    model = markov_model(vocab=6, seed=1)
    cases = [
        (
            Greedy(speculative=Speculative("ngram", PromptLookupConfig(num_tokens=0))),
            DecodeOptions(),
            "speculative.config.num_tokens",
        ),
        (
            Greedy(speculative=Speculative("suffix", SuffixConfig(max_tokens=0))),
            DecodeOptions(),
            "speculative.config.max_tokens",
        ),
        (
            Greedy(speculative=Speculative("recycling", RecyclingConfig(branching=()))),
            DecodeOptions(),
            "speculative.config.branching",
        ),
        (Greedy(speculative=Speculative("medusa")), DecodeOptions(), "speculative.proposer"),
        (
            Greedy(speculative=Speculative("ngram", SuffixConfig())),
            DecodeOptions(),
            "speculative.config",
        ),
    ]
    for strategy, options, field in cases:
        with pytest.raises(ConfigError) as error:
            speculative_decode(
                model, [[1, 2]], strategy, options, make_proposer(Speculative("ngram"), model)
            )
        assert error.value.field == field
    assert model.forward_count == 0
    from decodekit.search.beam import BeamSearch

    with pytest.raises(ConfigError) as error:
        check_supported(BeamSearch(num_beams=2), DecodeOptions())
    assert error.value.field == "speculative"


def test_stop_strings_and_eos_end_rows_where_plain_greedy_does():
    from decodekit.engine import Decoding

    model = markov_model(vocab=10, seed=4)
    prompts = [[1, 2, 3, 1, 2], [4, 5, 4, 5], [7, 8, 9, 7]]

    def stop_check(generated: torch.Tensor) -> torch.Tensor:  # the "stop string" is token 8
        return (generated == 8).any(-1)

    options = DecodeOptions(max_new_tokens=30, stop=("8",))
    plain = Decoding(model, prompts, Greedy(), options, stop_check=stop_check).results()
    speculative = Speculative("suffix")
    hyps, _ = speculative_decode(
        model,
        prompts,
        Greedy(speculative=speculative),
        options,
        make_proposer(speculative, model),
        stop_check=stop_check,
    )
    assert [h[0].token_ids for h in hyps] == [h[0].token_ids for h in plain]
    assert (
        [h[0].finish_reason for h in hyps]
        == [h[0].finish_reason for h in plain]
        == ["stop", "stop", "eos"]
    )
