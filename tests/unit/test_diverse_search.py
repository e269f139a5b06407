"""Diverse Beam Search on scripted models: expected beams and scores derived by hand.

The table (generated prefix -> next-token probabilities) is built so that plain beam search
returns near-duplicates ([A C], [A D]: one shared prefix, one token apart) and each diversity
function steers group 2 somewhere else, for a reason each test spells out. After two tokens
every prefix continues with EOS (.9) or A (.1).

Subtle (transformers 4.55 semantics): when a beam's EOS candidate enters the finished pool, the
beam itself runs on with its best non-EOS candidate, and *that* token is what later groups are
penalised for. At step 2 below group 1 finishes with EOS and runs on with A, so group 2 pays
for A, not for EOS.
"""

from __future__ import annotations

import math

import pytest
import torch

from decodekit.engine import Decoding, decode
from decodekit.model.scripted import ScriptedModel, table_model
from decodekit.options import DecodeOptions
from decodekit.search.beam import BeamSearch
from decodekit.search.diverse import DiverseBeamSearch

EOS, A, B, C, D = 0, 1, 2, 3, 4
VOCAB = 5
PROMPT = [[D]]
TABLE = {
    (): {A: 0.5, B: 0.3, C: 0.2},
    (A,): {C: 0.55, D: 0.45},
    (B,): {C: 0.6, D: 0.4},
    (C,): {C: 0.9, D: 0.1},
}
log = math.log


def scripted(table=TABLE, default=None) -> ScriptedModel:
    next_logprobs = table_model(VOCAB, table, default or {EOS: 0.9, A: 0.1}, prompt_length=1)
    return ScriptedModel(VOCAB, next_logprobs, eos_token_ids=(EOS,), pad_token_id=EOS)


def run(config: DiverseBeamSearch, model=None, max_new_tokens: int = 5, **context):
    model = model or scripted()
    return Decoding(model, PROMPT, config, DecodeOptions(max_new_tokens=max_new_tokens), search_context=context).results()[0]


def two_groups(diversity: str, **settings) -> DiverseBeamSearch:
    return DiverseBeamSearch(num_beams=2, num_groups=2, diversity=diversity, num_return_sequences=2, **settings)


def test_plain_beam_search_returns_near_duplicates():
    # step 1: A C .275, A D .225 beat B C .18 and B D .12
    [hyps] = decode(scripted(), PROMPT, BeamSearch(num_beams=2, num_return_sequences=2), DecodeOptions(max_new_tokens=5))
    assert [h.token_ids for h in hyps] == [[A, C, EOS], [A, D, EOS]]


def test_hamming_moves_group_two_away_from_group_one():
    # group 1 is greedy: A (.5), C (.55), EOS. Group 2, lambda = 1:
    #   step 0: A: log .5 - 1 = -1.69 < B: log .3 = -1.20 -> B
    #   step 1: C: log .6 - 1 = -1.51 < D: log .4 = -0.92 -> D (group 1 took C)
    #   step 2: EOS (log .9); group 1's beam ran on with A, so A, not EOS, is penalised
    hyps = run(two_groups("hamming", diversity_strength=1.0))
    assert [(h.group, h.token_ids) for h in hyps] == [(0, [A, C, EOS]), (1, [B, D, EOS])]
    first, second = hyps
    assert first.logprob == pytest.approx(log(0.5 * 0.55 * 0.9))
    assert first.group_score == pytest.approx(first.logprob)  # group 1 is never penalised
    assert first.score == pytest.approx(log(0.5 * 0.55 * 0.9) / 3)
    assert second.logprob == pytest.approx(log(0.3 * 0.4 * 0.9))
    assert second.group_score == pytest.approx(second.logprob)  # never took a penalised token
    assert second.score == pytest.approx(log(0.3 * 0.4 * 0.9) / 3)
    assert second.token_logprobs == pytest.approx([log(0.3), log(0.4), log(0.9)])


def test_zero_strength_is_independent_beam_searches():
    # without the penalty both groups are the same greedy search
    hyps = run(two_groups("hamming", diversity_strength=0.0))
    assert [h.token_ids for h in hyps] == [[A, C, EOS], [A, C, EOS]]


def test_cumulative_stops_pushing_once_sequences_diverged():
    # Gamma = 1, lambda = 1; delta = exp(-mismatches with group 1 so far, this step included)
    #   step 0: A: log .5 - e^0 = -1.69; B: log .3 - e^-1 = -1.57; C: log .2 - e^-1 = -1.98 -> B
    #   step 1 (B differs from A already): C: log .6 - e^-1 = -0.88 > D: log .4 - e^-2 = -1.05 -> C
    #   (Hamming would have taken D: the shared token costs a full 1 there)
    #   step 2: EOS: log .9 - e^-2 (B C vs A C: one mismatch before; EOS vs group 1's A: one)
    hyps = run(two_groups("cumulative", diversity_strength=1.0, diversity_temperature=1.0))
    assert [(h.group, h.token_ids) for h in hyps] == [(0, [A, C, EOS]), (1, [B, C, EOS])]
    e = math.exp
    assert hyps[1].group_score == pytest.approx(log(0.3) - e(-1) + log(0.6) - e(-1) + log(0.9) - e(-2))
    assert hyps[1].logprob == pytest.approx(log(0.3 * 0.6 * 0.9))


def test_cumulative_temperature_scales_the_decay():
    # a huge Gamma makes every delta ~1 whatever the token: a constant, so no steering at all
    hyps = run(two_groups("cumulative", diversity_strength=1.0, diversity_temperature=1e6))
    assert hyps[1].token_ids == [A, C, EOS]
    # a small Gamma penalises only what is identical so far: A costs 1 at step 0 (-> B);
    # at step 1 B C already differs from A C, so C costs ~e^-10 and wins over D
    hyps = run(two_groups("cumulative", diversity_strength=1.0, diversity_temperature=0.1))
    assert hyps[1].token_ids == [B, C, EOS]


def test_ngram_penalises_only_repeated_ngrams():
    # n = 2: a candidate's bigram is (own previous token, v); group 1 produced (A C), (C EOS).
    #   step 0: no bigram yet -> group 2 also takes A
    #   step 1: (A C) seen once: C: log .55 - 1 = -1.60 < D: log .45 = -0.80 -> D
    #   step 2: (D EOS) unseen (group 1 has A C A) -> no penalty
    hyps = run(two_groups("ngram", diversity_strength=1.0, ngram_size=2))
    assert [h.token_ids for h in hyps] == [[A, C, EOS], [A, D, EOS]]
    assert hyps[1].group_score == pytest.approx(log(0.5 * 0.45 * 0.9))


def test_unigram_penalises_tokens_used_anywhere_by_earlier_groups():
    # n = 1: step 0 A penalised (-1.69 < log .3) -> B; step 1 C used by group 1 -> D;
    # step 2: group 1 holds A C A: EOS log .9 vs A log .1 - 2 -> EOS, unpenalised
    hyps = run(two_groups("ngram", diversity_strength=1.0, ngram_size=1))
    assert hyps[1].token_ids == [B, D, EOS]
    assert hyps[1].group_score == pytest.approx(log(0.3 * 0.4 * 0.9))
    # with a strength of 3, A at step 1 would cost log .1 - 6; a unigram repeated anywhere counts
    hyps = run(two_groups("ngram", diversity_strength=3.0, ngram_size=1))
    assert hyps[1].token_ids == [B, D, EOS]


EMBEDDINGS = torch.tensor([[0.0, -1.0], [1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
# EOS, A, B (close to A: cosine .8), C (orthogonal to A), D (opposite to A)


def test_embedding_penalises_near_synonyms():
    # n = 1 (soft Hamming), lambda = 1, penalty = cos(e_v, e_A) at step 0:
    #   A: log .5 - 1 = -1.69; B: log .3 - .8 = -2.00; C: log .2 - 0 = -1.61 -> C (Hamming took B)
    #   step 1 (group 1 took C): C: log .9 - 1 = -1.11 > D: log .1 - 0 = -2.30 -> C
    #   step 2: EOS: log .9 - cos(e_EOS, e_A) = log .9 - 0
    config = two_groups("embedding", diversity_strength=1.0, ngram_size=1, embeddings=EMBEDDINGS)
    hyps = run(config)
    assert hyps[1].token_ids == [C, C, EOS]
    assert hyps[1].group_score == pytest.approx(log(0.2) + log(0.9) - 1.0 + log(0.9))


def test_embedding_reads_the_model_embeddings_from_the_search_context():
    config = two_groups("embedding", diversity_strength=1.0, ngram_size=1)
    with_context = run(config, input_embeddings=EMBEDDINGS)
    given = run(two_groups("embedding", diversity_strength=1.0, ngram_size=1, embeddings=EMBEDDINGS))
    assert [h.token_ids for h in with_context] == [h.token_ids for h in given]


def test_embedding_with_one_hot_vectors_is_hamming():
    random = random_model()
    settings = {"num_beams": 6, "num_groups": 3, "diversity_strength": 0.7, "num_return_sequences": 6}
    hamming = run(DiverseBeamSearch(diversity="hamming", **settings), random, 6)
    soft = run(DiverseBeamSearch(diversity="embedding", ngram_size=1, embeddings=torch.eye(12), **settings), random, 6)
    assert [h.token_ids for h in soft] == [h.token_ids for h in hamming]
    assert [h.score for h in soft] == pytest.approx([h.score for h in hamming], abs=1e-5)


def test_per_group_returns_the_best_of_each_group_in_group_order():
    config = DiverseBeamSearch(num_beams=4, num_groups=2, diversity_strength=1.0, num_return_sequences=2, per_group=True)
    hyps = run(config)
    assert [h.group for h in hyps] == [0, 0, 1, 1]
    assert hyps[0].score >= hyps[1].score and hyps[2].score >= hyps[3].score


def test_pooled_results_are_ranked_by_penalised_score():
    config = DiverseBeamSearch(num_beams=4, num_groups=2, diversity_strength=1.0, num_return_sequences=4)
    scores = [h.score for h in run(config)]
    assert scores == sorted(scores, reverse=True)


# -- random scripted model: engine-level properties ------------------------------------------


def random_model(vocab: int = 12) -> ScriptedModel:
    def next_logprobs(sequence):
        generator = torch.Generator().manual_seed(hash(sequence) % (2**31))
        return (2.0 * torch.randn(vocab, generator=generator)).log_softmax(-1)

    return ScriptedModel(vocab, next_logprobs, eos_token_ids=(0,), pad_token_id=1)


FUNCTIONS = [
    {"diversity": "hamming"},
    {"diversity": "cumulative", "diversity_temperature": 2.0},
    {"diversity": "ngram", "ngram_size": 2},
    {"diversity": "embedding", "ngram_size": 2, "embeddings": torch.randn(12, 4, generator=torch.Generator().manual_seed(0))},
]


@pytest.mark.parametrize("settings", FUNCTIONS, ids=lambda s: s["diversity"])
def test_batch_equals_singles_and_one_forward_per_step(settings):
    model = random_model()
    prompts = [[3, 4, 5], [6], [7, 8]]
    config = DiverseBeamSearch(num_beams=6, num_groups=3, diversity_strength=(0.0, 0.5, 1.5), num_return_sequences=6, **settings)
    batch = decode(model, prompts, config, DecodeOptions(max_new_tokens=7))
    assert all(rows == 3 * 6 for rows in model.calls[1:]), "one forward of all rows per step"
    for prompt, hyps in zip(prompts, batch, strict=True):
        [single] = decode(random_model(), [prompt], config, DecodeOptions(max_new_tokens=7))
        assert [h.token_ids for h in hyps] == [h.token_ids for h in single]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in single], abs=1e-5)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("form", ["exponent", "gnmt"])
def test_early_stopping_modes_and_length_penalty_forms_return_valid_hypotheses(early_stopping, form):
    config = DiverseBeamSearch(
        num_beams=4, num_groups=2, diversity_strength=1.0, num_return_sequences=4,
        length_penalty=1.5, length_penalty_form=form, early_stopping=early_stopping,
    )
    hyps = run(config, random_model(), 8)
    for h in hyps:
        assert 1 <= len(h.token_ids) <= 8 and len(h.token_logprobs) == len(h.token_ids)
        assert h.logprob == pytest.approx(sum(h.token_logprobs), abs=1e-5)
        assert h.finish_reason == ("eos" if h.token_ids[-1] == 0 else "length")
        assert h.score == pytest.approx(h.group_score / _penalty(form, len(h.token_ids)), abs=1e-5)


def _penalty(form: str, length: int, alpha: float = 1.5) -> float:
    return ((5 + length) / 6) ** alpha if form == "gnmt" else length**alpha


def test_min_new_tokens_delays_eos():
    config = two_groups("hamming", diversity_strength=1.0)
    model = scripted(default={EOS: 0.6, A: 0.4})
    hyps = Decoding(model, PROMPT, config, DecodeOptions(max_new_tokens=6, min_new_tokens=4)).results()[0]
    assert all(len(h.token_ids) >= 4 for h in hyps)


def test_any_eos_of_a_set_ends_a_hypothesis():
    # with EOS ids {EOS, D}: group 1 takes A then C .55 (D .45 would end it too); group 2 is
    # pushed off C (Hamming, lambda 1) onto D, which now ends its hypothesis at step 1
    model = ScriptedModel(VOCAB, table_model(VOCAB, TABLE, {EOS: 0.9, A: 0.1}, prompt_length=1), eos_token_ids=(EOS, D), pad_token_id=EOS)
    hyps = run(two_groups("hamming", diversity_strength=1.0), model)
    assert [h.token_ids for h in hyps if h.group == 1] == [[B, D]]
    assert all(h.finish_reason == "eos" for h in hyps)
