"""Speculation with logits processors: every block position is processed with its own
history, so speculative greedy equals plain greedy with the same processors and speculative
sampling keeps plain sampling's (processed) distribution; non-finite logits are an error."""

from __future__ import annotations

import math

import pytest
import torch
from speculative_models import _exact_distribution, _proposer, chisquare_pvalue, markov_model

from decodekit.engine import decode
from decodekit.errors import NumericalError
from decodekit.model.scripted import ScriptedModel
from decodekit.options import DecodeOptions
from decodekit.search.sampling import Greedy, Sampling
from decodekit.speculative import (
    RecyclingConfig,
    Speculative,
    SuffixConfig,
    make_proposer,
    speculative_decode,
)

OPTIONS = {
    "repetition": DecodeOptions(max_new_tokens=14, repetition_penalty=1.6),
    "no-repeat": DecodeOptions(max_new_tokens=14, no_repeat_ngram_size=2),
    "bans": DecodeOptions(max_new_tokens=14, bad_words=((3,), (1, 2)), suppress_tokens=(4,)),
    "min-length": DecodeOptions(max_new_tokens=14, min_new_tokens=10),
    "force-eos": DecodeOptions(max_new_tokens=9, force_eos_at_max_length=True, repetition_penalty=1.2),
    "biases": DecodeOptions(max_new_tokens=14, logit_bias={3: 1.5}, sequence_bias={(1, 2): -3.0}, presence_penalty=0.5, frequency_penalty=0.3),
    "prompt-and-dry": DecodeOptions(max_new_tokens=14, encoder_repetition_penalty=1.4, encoder_no_repeat_ngram_size=3, dry_multiplier=1.5, dry_sequence_breakers=(4,)),
    "lengths": DecodeOptions(max_new_tokens=12, min_length=11, decoder_prefix=(5,), begin_suppress_tokens=(6,), exponential_decay_length_penalty=(4, 1.4), forced_eos_token_id=(0,)),
}
PROPOSERS = {
    "suffix": Speculative("suffix", SuffixConfig(tree=True, min_token_prob=0.0)),
    "ngram": Speculative("ngram"),
    "recycling": Speculative("recycling", RecyclingConfig(top_k=2, branching=(2, 1))),
}
ALPHA = 0.001
PROMPTS = [[1, 2, 3, 1, 2, 3, 1, 2], [5, 6, 5, 6, 5], [2, 7, 2, 7, 2, 7, 2]]


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("proposer", sorted(PROPOSERS) + ["draft"])
def test_speculative_greedy_with_processors_equals_plain_greedy(options, proposer):
    model = markov_model(vocab=9, seed=3, sharp=2.5)
    if proposer == "draft":
        speculative, draft = _proposer(("draft", markov_model(9, seed=3, sharp=2.0)), model)
    else:
        speculative = PROPOSERS[proposer]
        draft = make_proposer(speculative, model)
        if proposer == "recycling":  # its successor matrix persists across calls: fill it once
            speculative_decode(model, PROMPTS, Greedy(speculative=speculative), DecodeOptions(max_new_tokens=8), draft)
    plain = decode(model, PROMPTS, Greedy(), OPTIONS[options])
    hyps, stats = speculative_decode(model, PROMPTS, Greedy(speculative=speculative), OPTIONS[options], draft)
    for got, want in zip(hyps, plain):
        assert got[0].token_ids == want[0].token_ids
        assert got[0].finish_reason == want[0].finish_reason
        assert got[0].token_logprobs == pytest.approx(want[0].token_logprobs, abs=1e-5)
    assert sum(s.drafted for s in stats) > 0


def test_speculative_sampling_with_a_repetition_penalty_keeps_the_distribution():
    model = markov_model(vocab=4, seed=11, sharp=1.5)
    options = DecodeOptions(max_new_tokens=3, repetition_penalty=1.8)
    prompt = [1, 2, 3, 1, 2]
    speculative = Speculative("suffix", SuffixConfig(tree=True, min_token_prob=0.0))
    proposer = make_proposer(speculative, model)
    strategy = Sampling(temperature=0.9, n=3000, speculative=speculative)
    generator = torch.Generator().manual_seed(7)
    hyps, stats = speculative_decode(model, [prompt], strategy, options, proposer, generator=generator)
    assert stats[0].accepted > 0
    processors = options.processors(len(prompt), model.eos_token_ids, model.vocab_size)
    warpers = strategy.warpers()

    # the exact distribution, with the processors applied along every path
    exact: dict[tuple[int, ...], float] = {}

    def expand(generated: tuple[int, ...], prob: float) -> None:
        if len(generated) == 3 or (generated and generated[-1] in model.eos_token_ids):
            exact[generated] = prob
            return
        history = torch.tensor([prompt + list(generated)])
        logits = torch.as_tensor(model.next_logprobs(tuple(prompt) + generated), dtype=torch.float32)[None]
        p = warpers(None, processors(history, logits.clone())).softmax(-1)[0]
        for token in range(model.vocab_size):
            if p[token] > 0:
                expand(generated + (token,), prob * float(p[token]))

    expand((), 1.0)
    samples = [h.token_ids for h in hyps[0]]
    assert chisquare_pvalue(samples, exact, strategy.n) > ALPHA
    # and the penalty matters: the unpenalised distribution is rejected
    plain = _exact_distribution(model, prompt, 3, lambda x: warpers(None, x))
    assert chisquare_pvalue(samples, exact, strategy.n, reference=plain) < ALPHA


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_logits_under_speculation_raise(bad):
    def next_logprobs(seq):
        values = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
        if len(seq) >= 6:
            values[1] = bad
        return values

    model = ScriptedModel(6, next_logprobs, eos_token_ids=(0,))
    speculative = Speculative("ngram")
    with pytest.raises(NumericalError, match="row 0"):
        speculative_decode(model, [[3, 3, 3]], Greedy(speculative=speculative), DecodeOptions(max_new_tokens=8), make_proposer(speculative, model))
