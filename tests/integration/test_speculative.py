"""Speculative decoding on real transformers models: greedy output token-for-token equal to
plain greedy for every proposer, batch sizes 1 and 8; the cache after a tree verification
holds exactly the accepted path; draft models with another vocabulary are refused."""

from __future__ import annotations

import pytest
import torch
from speculative_models import motif_prompts, tiny_llama

import decodekit
from decodekit.errors import ConfigError
from decodekit.model.hf import HFLanguageModel
from decodekit.speculative import (
    DraftModelConfig,
    PromptLookupConfig,
    RecyclingConfig,
    Speculative,
    SuffixConfig,
)


@pytest.fixture(scope="module")
def target():
    return decodekit.load(tiny_llama(0))


@pytest.fixture(scope="module")
def prompts():
    return motif_prompts(8, motif=(2, 6), length=(3, 20))


@pytest.fixture(scope="module")
def plain(target, prompts):
    return target.generate(prompts, "greedy", max_new_tokens=20)


SPECULATIONS = [
    Speculative("ngram", PromptLookupConfig(num_tokens=6)),
    Speculative("suffix", SuffixConfig(max_cached_requests=0)),
    Speculative("suffix", SuffixConfig(tree=True, max_tokens=16)),
    Speculative("recycling", RecyclingConfig(top_k=4, branching=(4, 2, 2, 1, 1))),
    Speculative("draft", DraftModelConfig(model=tiny_llama(1, hidden=16, layers=1), num_tokens=3)),
]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize(
    "speculative",
    SPECULATIONS,
    ids=lambda s: s.proposer + ("-tree" if getattr(s.config, "tree", False) else ""),
)
def test_greedy_is_lossless(target, prompts, plain, speculative, batch):
    accepted = 0
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        results = target.generate(
            chunk, decodekit.Greedy(speculative=speculative), max_new_tokens=20
        )
        for got, want in zip(results, plain[start : start + batch]):
            assert got.best.token_ids == want.best.token_ids
            assert got.best.finish_reason == want.best.finish_reason
            assert got.best.logprob == pytest.approx(want.best.logprob, abs=1e-3)
            accepted += got.stats.accepted
    assert accepted > 0


def test_tree_verify_then_keep_leaves_exactly_the_path():
    model = HFLanguageModel(tiny_llama(2))
    prompts = [[5, 6, 7, 8], [9, 10]]
    state = model.start(prompts, 16)
    # block: root x, two children a and b, a grandchild c under b; row 0 keeps x,b,c; row 1 keeps x
    tokens = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 18]])
    parents = torch.tensor([[-1, 0, 0, 2], [-1, 0, 0, 2]])
    logits = model.verify(state, tokens, parents)
    model.keep(state, torch.tensor([[0, 2, 3], [0, 0, 0]]), torch.tensor([3, 1]))
    for row, kept in ((0, [11, 13, 14]), (1, [15])):
        reference = model.start([prompts[row] + kept], 4).logits[0]
        torch.testing.assert_close(
            logits[row, len(kept) - 1 if row else 3], reference, atol=1e-4, rtol=1e-4
        )
    # the next step after the holes continues both rows exactly
    model.advance(state, None, torch.tensor([20, 21]))
    for row, kept in ((0, [11, 13, 14, 20]), (1, [15, 21])):
        torch.testing.assert_close(
            state.logits[row], model.start([prompts[row] + kept], 4).logits[0], atol=1e-4, rtol=1e-4
        )
    model.compact(state)
    model.advance(state, None, torch.tensor([22, 23]))
    for row, kept in ((0, [11, 13, 14, 20, 22]), (1, [15, 21, 23])):
        torch.testing.assert_close(
            state.logits[row], model.start([prompts[row] + kept], 4).logits[0], atol=1e-4, rtol=1e-4
        )


def test_draft_model_with_another_vocabulary_is_refused(target):
    other = Speculative("draft", DraftModelConfig(model=tiny_llama(3, vocab=40)))
    before = target.model.forward_count
    with pytest.raises(ConfigError) as error:
        target.generate([1, 2, 3], decodekit.Greedy(speculative=other), max_new_tokens=4)
    assert error.value.field == "speculative.config.model"
    assert target.model.forward_count == before


def test_bad_speculation_settings_name_the_field(target):
    cases = [
        (
            decodekit.Greedy(speculative=Speculative("draft", DraftModelConfig(num_tokens=0))),
            "speculative.config.num_tokens",
        ),
        (
            decodekit.Sampling(speculative=Speculative("ngram", PromptLookupConfig(num_tokens=-1))),
            "speculative.config.num_tokens",
        ),
    ]
    for strategy, field in cases:
        with pytest.raises(ConfigError) as error:
            target.generate([1, 2, 3], strategy, max_new_tokens=4)
        assert error.value.field == field
    with pytest.raises(ConfigError) as error:
        decodekit.make_strategy("beam", speculative=Speculative())
    assert error.value.field == "speculative"


def test_speculative_stream_yields_what_generate_returns(target):
    """Speculation streams each accepted block, token by token, inside the one engine."""
    strategy = decodekit.Greedy(speculative=Speculative("suffix"))
    events = list(target.stream([1, 2, 3], strategy, max_new_tokens=12))
    plain = target.generate([1, 2, 3], max_new_tokens=12).best
    assert [e.token_id for e in events if e.token_id is not None] == plain.token_ids
    assert events[-1].finish_reason == plain.finish_reason


def test_sampling_output_is_fixed_by_the_seed_whatever_the_draft(target, prompts):
    """Randomness is tied to output positions, so deterministic proposers (with cross-call
    state or not) all give the seed's one output."""
    outputs = []
    for speculative in [
        Speculative("suffix"),
        Speculative("suffix"),
        Speculative("ngram"),
        Speculative("recycling"),
    ]:
        strategy = decodekit.Sampling(n=2, seed=7, top_k=10, speculative=speculative)
        results = target.generate(prompts[:3], strategy, max_new_tokens=10)
        assert all(len(r.sequences) == 2 for r in results)
        outputs.append([[s.token_ids for s in r.sequences] for r in results])
    assert all(out == outputs[0] for out in outputs)


def test_cli_flag(capsys):
    from decodekit.cli import main

    assert main(["generate", "x", "--strategy", "beam", "--speculative", "ngram"]) == 2
    assert "--speculative" in capsys.readouterr().err


def test_embedded_models_greedy_is_lossless():
    """The embedded target with every proposer (its own draft model included), batch 1 and 3."""
    from decodekit.models import embedded_model_path

    if not (embedded_model_path("stdlib-code-draft") / "model.safetensors").is_file():
        pytest.skip("embedded models not built")
    target = decodekit.load("stdlib-code")
    draft = decodekit.load("stdlib-code-draft")
    prompts = [
        "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
        "import os\nimport sys\n",
        "class Point:\n    def __init__(self, x, y):\n",
    ]
    plain = target.generate(prompts, "greedy", max_new_tokens=12)
    for speculative in [
        Speculative("ngram"),
        Speculative("suffix"),
        Speculative("recycling"),
        Speculative("draft", DraftModelConfig(model=draft.model, num_tokens=3)),
    ]:
        for batch in (1, 3):
            got = []
            for start in range(0, 3, batch):
                got += target.generate(
                    prompts[start : start + batch],
                    decodekit.Greedy(speculative=speculative),
                    max_new_tokens=12,
                )
            assert [r.best.token_ids for r in got] == [r.best.token_ids for r in plain], (
                speculative.proposer
            )


def test_cli_draft_branching_is_reproducible_and_needs_the_draft_proposer():
    """A seeded sample through a draft tree on the command line is the same twice, and the flag
    is refused without ``--speculative draft``."""
    import json
    import subprocess
    import sys

    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "decodekit", "generate", "def f(x):", "--strategy", "sample", "--seed", "3", "--max-new-tokens", "12", "--output-format", "jsonl", *extra],
            capture_output=True, text=True, timeout=300,
        )

    first, second = run("--speculative", "draft", "--draft-branching", "3,2"), run("--speculative", "draft", "--draft-branching", "3,2")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert len(json.loads(first.stdout)["sequences"][0]["token_ids"]) == 12
    refused = run("--draft-branching", "3,2")
    assert refused.returncode != 0 and "--draft-branching" in refused.stderr and "Traceback" not in refused.stderr
