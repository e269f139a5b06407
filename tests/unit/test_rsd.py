"""Recursive Speculative Decoding (RSD-C, Jeon et al., 2024): a draft model's tree whose siblings
are drawn without replacement, verified by recursive rejection sampling.

The verifier against its exact output distribution by enumeration; Gumbel-top-k draws against
the exact without-replacement probabilities; sampled outputs against the target's exact
distribution (chi-square); siblings distinct; greedy equal to plain greedy (scripted and real
transformers models); same seed, same output; batch = single; bad ``branching`` values."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from speculative_models import _exact_distribution, chisquare_pvalue, markov_model

from decodekit.engine import decode
from decodekit.errors import ConfigError
from decodekit.options import DecodeOptions
from decodekit.search.base import race
from decodekit.search.sampling import Greedy, Sampling
from decodekit.speculative import (
    DraftModelConfig,
    Speculative,
    check_supported,
    drafts_trees,
    speculative_decode,
)
from decodekit.speculative import verify as verify_module
from decodekit.speculative.base import SpeculationContext
from decodekit.speculative.draft_model import DraftModelProposer
from decodekit.speculative.rsd import (
    TreeLayout,
    gumbel_noise,
    recursive_rejection,
    rejection_chain,
    without_replacement,
)

ALPHA = 0.001
"""Significance level of the distribution tests (their seeds are fixed, so they never flake)."""


# -- the verifier by enumeration ----------------------------------------------------------------


def _reference_tests(p: list[float], q: list[float], draws: tuple[int, ...]):
    """Plain-Python recursive rejection sampling: the acceptance probability of each draw given
    the earlier ones were rejected, and the final residual."""
    accept = []
    for x in draws:
        accept.append(min(1.0, p[x] / q[x]))
        residual = [max(0.0, a - b) for a, b in zip(p, q)]
        total = sum(residual)
        p = [r / total for r in residual] if total > 0 else p
        rest = [0.0 if i == x else b for i, b in enumerate(q)]
        q = [b / sum(rest) for b in rest] if sum(rest) > 0 else rest
    return accept, p


def _ordered_draws(q: list[float], width: int):
    """Every ordered draw of ``width`` tokens without replacement from ``q`` (fewer when the
    support is smaller) with its probability."""
    support = [i for i, b in enumerate(q) if b > 0]
    for draws in itertools.permutations(support, min(width, len(support))):
        prob, left = 1.0, 1.0
        for x in draws:
            prob *= q[x] / left
            left -= q[x]
        yield draws, prob


CASES = [
    # (p, q, width)
    ([0.5, 0.2, 0.2, 0.1, 0.0], [0.1, 0.4, 0.3, 0.1, 0.1], 3),
    ([0.05, 0.05, 0.3, 0.6, 0.0], [0.7, 0.1, 0.1, 0.05, 0.05], 2),
    ([0.2, 0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2, 0.2], 4),  # p == q: nothing is rejected
    ([0.0, 0.0, 0.5, 0.5, 0.0], [0.6, 0.4, 0.0, 0.0, 0.0], 3),  # disjoint; q's support < width
    ([0.1, 0.3, 0.2, 0.25, 0.15], [0.3, 0.1, 0.25, 0.15, 0.2], 5),  # every token drafted
]


@pytest.mark.parametrize("p, q, width", CASES)
def test_recursive_rejection_output_is_the_target_distribution(p, q, width):
    """No sampling: every ordered without-replacement draw, weighted by its probability, times
    the analytic outcome probabilities of the implementation's tests, sums to ``p``."""
    draws = list(_ordered_draws(q, width))
    s = max(len(d) for d, _ in draws)
    tokens = torch.tensor([list(d) + [0] * (s - len(d)) for d, _ in draws])
    tried = torch.tensor([[i < len(d) for i in range(s)] for d, _ in draws])
    rows = len(draws)
    p64, q64 = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    target, draft, residual = rejection_chain(
        p64.expand(rows, -1), q64.expand(rows, -1), tokens, tried
    )
    out = torch.zeros(len(p), dtype=torch.float64)
    for r, (d, prob) in enumerate(draws):
        accept = [min(1.0, float(target[r, i] / draft[r, i])) for i in range(len(d))]
        want_accept, want_residual = _reference_tests(p, q, d)
        assert accept == pytest.approx(want_accept, abs=1e-12)
        reached = prob
        for i, x in enumerate(d):
            out[x] += reached * accept[i]
            reached *= 1 - accept[i]
        if reached > 0:
            torch.testing.assert_close(
                residual[r], torch.tensor(want_residual, dtype=torch.float64)
            )
        out += reached * residual[r]
    torch.testing.assert_close(out, p64, atol=1e-12, rtol=0)


def test_recursive_rejection_follows_its_numbers():
    """A child is accepted iff its number is below its acceptance probability; the first such
    child wins; with none, the recovered token is the residual's inverse-CDF draw."""
    p = torch.tensor([[0.3, 0.1, 0.35, 0.25, 0.0]])
    q = torch.tensor([[0.25, 0.3, 0.3, 0.05, 0.1]])
    tokens, tried = torch.tensor([[1, 2, 0]]), torch.ones((1, 3), dtype=torch.bool)
    target, draft, residual = rejection_chain(p, q, tokens, tried)
    accept = (target / draft).clamp(max=1)[0]
    # x1 = 1: 0.1 / 0.3; then p = (1/6, 0, 1/6, 2/3, 0), q = (.25, 0, .3, .05, .1) / .7, so
    # x2 = 2: (1/6) / (3/7); then p = (0, 0, 0, 1, 0): x3 = 0 is never accepted
    torch.testing.assert_close(accept, torch.tensor([1 / 3, 7 / 18, 0.0]))
    torch.testing.assert_close(residual[0], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
    below, above = accept - 1e-4, accept + 1e-4
    cases = [
        (torch.stack([below[0], above[1], above[2]]), 0, 1),
        (torch.stack([above[0], below[1], above[2]]), 1, 2),
        (torch.stack([above[0], above[1], above[2]]), -1, 3),
    ]
    for tests, rank, token in cases:
        got_rank, got_token = recursive_rejection(
            p, q, tokens, tried, tests[None], torch.tensor([0.3])
        )
        assert (int(got_rank), int(got_token)) == (rank, token)
    # only the first child tried: its residual is the one drawn from
    tried = torch.tensor([[True, False, False]])
    _, _, residual = rejection_chain(p, q, tokens, tried)
    for u in (0.0, 0.2, 0.5, 0.99):
        rank, token = recursive_rejection(
            p, q, tokens, tried, torch.tensor([[0.99, 0.0, 0.0]]), torch.tensor([u])
        )
        assert int(rank) == -1 and int(token) == int(race(residual.log(), torch.tensor([u]))[0])
        assert residual[0, int(token)] > 0


def test_gumbel_top_k_draws_without_replacement_exactly():
    q = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    n = 40000
    g = torch.Generator().manual_seed(3)
    tokens, drawn = without_replacement(
        q.expand(n, -1), gumbel_noise(torch.rand((n, 5), generator=g)), 2
    )
    assert bool(drawn.all()) and bool((tokens[:, 0] != tokens[:, 1]).all())
    pairs = torch.zeros((5, 5))
    pairs.index_put_((tokens[:, 0], tokens[:, 1]), torch.ones(n), accumulate=True)
    for a, b in itertools.permutations(range(5), 2):
        exact = float(q[a] * q[b] / (1 - q[a]))
        sigma = math.sqrt(exact * (1 - exact) / n)
        assert abs(float(pairs[a, b]) / n - exact) < 5 * sigma, (a, b)
    # fewer tokens of positive probability than the width: the extra slots are not drawn
    _, drawn = without_replacement(torch.tensor([[0.5, 0.5, 0.0]]), torch.zeros((1, 3)), 3)
    assert drawn.tolist() == [[True, True, False]]


# -- the draft tree -------------------------------------------------------------------------------


def test_tree_layout_is_breadth_first_with_consecutive_siblings():
    tree = TreeLayout.of((3, 2, 1))
    assert tree.starts == (0, 3, 9, 15)
    assert tree.parents.tolist() == [-1, -1, -1, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8]
    assert tree.depth.tolist() == [0] * 3 + [1] * 6 + [2] * 6
    slots, counts = tree.noise_slots()  # Gumbel noise above levels 0 and 1, a number above 2
    assert slots == [slice(0, 1), slice(1, 4), slice(0, 6)] and counts == (4, 6)


def _top2(logits: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(logits < logits.topk(2, -1).values[..., -1:], -torch.inf)


WARPS = {"greedy": None, "temperature": lambda x: x / 0.9, "top-k-2": _top2}


@pytest.mark.parametrize("warp", list(WARPS))
def test_siblings_are_distinct(warp):
    draft = markov_model(6, seed=5, sharp=1.0)
    config = DraftModelConfig(model=draft, num_tokens=3, branching=(3, 2))
    proposer = DraftModelProposer(config, draft)
    tree = TreeLayout.of((3, 2, 1))
    sequences = [[1, 2, 3, 1], [4, 5], [2, 2, 2]]
    g = torch.Generator().manual_seed(0)
    proposer.begin([list(s) for s in sequences], WARPS[warp], (g,) * 3)
    limits = torch.tensor([3, 2, 1])
    for _ in range(20):
        for seq in sequences:  # one more token per step, as verification would append
            seq.append(int(torch.randint(1, 6, (1,), generator=g)))
        out = proposer.propose(SpeculationContext([0, 1, 2], sequences, limits.tolist()))
        assert out.tokens.shape == (3, 3 + 6 + 6)
        assert out.parents[0].tolist() == tree.parents.tolist()
        assert not bool((out.valid & (tree.depth[None] >= limits[:, None])).any())
        for r in range(3):
            for parent in range(-1, out.tokens.shape[1]):
                kids = [
                    i
                    for i in range(out.tokens.shape[1])
                    if out.parents[r, i] == parent and out.valid[r, i]
                ]
                tokens = [int(out.tokens[r, i]) for i in kids]
                assert len(set(tokens)) == len(tokens)
                if out.probs is not None:  # drawn from the distribution the draft states
                    assert all(float(out.probs[r, i, int(out.tokens[r, i])]) > 0 for i in kids)
        if warp == "top-k-2":  # two tokens of positive probability: no third child
            assert not bool(out.valid[:, 2].any()) and bool(out.valid[:, :2].all())
        # the tree never stays in the draft cache: the next catch-up starts after the context
        assert [proposer._seen[r] for r in range(3)] == [len(s) for s in sequences]


# -- exactness of sampling ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, branching",
    [
        ({"temperature": 0.9}, (3, 2)),
        ({"temperature": 0.8, "top_k": 2}, (3, 2)),
        ({"temperature": 0.9}, (2,)),  # then one child per node (a single draw, no noise)
    ],
    ids=["temperature", "top-k-2", "one-child-below"],
)
def test_tree_sampling_has_the_target_distribution(settings, branching, monkeypatch):
    """4000 rows (each with its own draws), 4 tokens: the first from the prefill, then trees of
    depth 2 that can emit all three others. Chi-square against the exact distribution of the
    4-token continuations."""
    model = markov_model(vocab=4, seed=11, sharp=1.5)
    draft = markov_model(vocab=4, seed=5, sharp=1.0)
    config = DraftModelConfig(model=draft, num_tokens=2, branching=branching)
    speculative = Speculative("draft", config)
    n = 4000
    sampler = Sampling(**settings)
    strategy = Sampling(**settings, n=n, speculative=speculative)
    ranks = []

    def recording(*args):
        rank, token = recursive_rejection(*args)
        ranks.append(rank)
        return rank, token

    monkeypatch.setattr(verify_module, "recursive_rejection", recording)
    prompt = [1, 2, 3, 1, 2]
    hyps, stats = speculative_decode(
        model,
        [prompt],
        strategy,
        DecodeOptions(max_new_tokens=4),
        DraftModelProposer(config, draft),
        generator=torch.Generator().manual_seed(2024),
    )
    rank = torch.cat(ranks)
    assert stats[0].accepted > 0 and bool((rank >= 1).any())  # later siblings were accepted
    warpers = sampler.warpers()
    exact = _exact_distribution(model, prompt, 4, lambda x: warpers(None, x))
    assert chisquare_pvalue([h.token_ids for h in hyps[0]], exact, n) > ALPHA
    # the first two tokens of the first verification (output positions 2 and 3), 5 sigma
    seen = Counter(tuple(h.token_ids[1:3]) for h in hyps[0] if len(h.token_ids) > 2)
    pairs = Counter()
    for sequence, prob in exact.items():
        if len(sequence) > 2:
            pairs[sequence[1:3]] += prob
    for key, prob in pairs.items():
        assert abs(seen[key] / n - prob) < 5 * math.sqrt(prob * (1 - prob) / n) + 1e-9, key


# -- greedy, determinism, batch = single ----------------------------------------------------------


def test_scripted_greedy_with_branching_equals_plain_greedy():
    model = markov_model(vocab=12, seed=3)
    draft = markov_model(vocab=12, seed=7, sharp=1.0)
    g = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(1, 12, (int(k),), generator=g).tolist()
        for k in torch.randint(2, 9, (8,), generator=g)
    ]
    options = DecodeOptions(max_new_tokens=20)
    plain = [h[0] for h in decode(model, prompts, Greedy(), options)]
    config = DraftModelConfig(model=draft, num_tokens=4, branching=(3, 2))
    for batch in (1, 8):
        for start in range(0, len(prompts), batch):
            hyps, _ = speculative_decode(
                model,
                prompts[start : start + batch],
                Greedy(speculative=Speculative("draft", config)),
                options,
                DraftModelProposer(config, draft),
            )
            for h, want in zip(hyps, plain[start : start + batch]):
                assert h[0].token_ids == want.token_ids
                assert h[0].token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "branching, num_tokens",
    [
        ((0,), 4),
        ((3, -1), 4),
        ((2.5,), 4),
        ((True, 2), 4),
        ("32", 4),
        (3, 4),
        ((2, 2, 2), 2),  # deeper than num_tokens
        ((16, 16), 2),  # 16 + 256 nodes
        ((2,) * 8, 8),  # 510 nodes
    ],
)
def test_bad_branching_raises_config_error_naming_the_field(branching, num_tokens):
    config = DraftModelConfig(num_tokens=num_tokens, branching=branching)
    with pytest.raises(ConfigError) as error:
        config.validate()
    assert error.value.field == "branching"
    strategy = Sampling(speculative=Speculative("draft", config))
    with pytest.raises(ConfigError) as error:
        check_supported(strategy, DecodeOptions())
    assert error.value.field == "speculative.config.branching"
    assert "branching" in str(error.value)


def test_good_branching_values_and_tree_drafts():
    for branching, num_tokens in [((), 4), ((1,), 1), ((4, 2), 4), ((255,), 1), ([2, 2], 3)]:
        config = DraftModelConfig(num_tokens=num_tokens, branching=branching)
        config.validate()
        hash(Speculative("draft", config))  # the engine keys proposers by their config
    assert DraftModelConfig(num_tokens=4, branching=(3, 2)).widths == (3, 2, 1, 1)
    assert drafts_trees(Speculative("draft", DraftModelConfig(branching=(2,))))
    assert not drafts_trees(Speculative("draft", DraftModelConfig(branching=(1, 1))))
    small = markov_model(vocab=4, seed=0)
    with pytest.raises(ConfigError) as error:
        DraftModelProposer(DraftModelConfig(model=small, num_tokens=2, branching=(5,)), small)
    assert error.value.field == "speculative.config.branching"
