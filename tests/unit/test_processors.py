"""Processors and warpers against transformers' implementations (the oracle) on random scores."""

from __future__ import annotations

import pytest
import torch
from transformers.generation import logits_process as tp

from decodekit.logits import bias, forcing, penalties, warpers
from decodekit.logits import prompt as prompt_processors

VOCAB = 50


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (4, 9), generator=generator)
    scores = torch.randn(4, VOCAB, generator=generator) * 3
    return ids, scores


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(
        a.masked_fill(torch.isinf(a), 0), b.masked_fill(torch.isinf(b), 0), atol=1e-6
    )


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty(inputs, penalty):
    ids, scores = inputs
    ours = penalties.RepetitionPenalty(penalty)(ids, scores.clone())
    assert same(ours, tp.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone()))


def test_repetition_penalty_ignores_padding(inputs):
    ids, scores = inputs
    padded = torch.cat([torch.full((4, 3), -1), ids], dim=1)
    assert same(penalties.RepetitionPenalty(1.5)(padded, scores.clone()), penalties.RepetitionPenalty(1.5)(ids, scores.clone()))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram(size):
    generator = torch.Generator().manual_seed(size)
    ids = torch.randint(0, 4, (5, 12), generator=generator)  # small alphabet: many repeats
    scores = torch.randn(5, VOCAB, generator=generator)
    ours = penalties.NoRepeatNGram(size)(ids, scores.clone())
    assert same(ours, tp.NoRepeatNGramLogitsProcessor(size)(ids, scores.clone()))


def test_bad_words(inputs):
    ids, scores = inputs
    words = [[3], [ids[0, -1].item(), 7], [ids[1, -2].item(), ids[1, -1].item(), 9]]
    ours = penalties.BadWords(words, VOCAB)(ids, scores.clone())
    assert same(ours, tp.NoBadWordsLogitsProcessor(words, eos_token_id=None)(ids, scores.clone()))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (warpers.Temperature(0.6), tp.TemperatureLogitsWarper(0.6)),
        (warpers.TopK(5), tp.TopKLogitsWarper(5)),
        (warpers.TopP(0.7), tp.TopPLogitsWarper(0.7)),
        (warpers.MinP(0.1), tp.MinPLogitsWarper(0.1)),
        (warpers.TypicalP(0.8), tp.TypicalLogitsWarper(0.8)),
    ],
)
def test_warpers(inputs, ours, theirs):
    ids, scores = inputs
    assert same(ours(ids, scores.clone()), theirs(ids, scores.clone()))


def test_min_new_tokens_and_forced_eos():
    ids = torch.zeros((2, 5), dtype=torch.long)
    scores = torch.zeros(2, 8)
    out = penalties.MinNewTokens(3, prompt_length=3, eos_token_ids=[1, 2])(ids, scores.clone())
    assert torch.isinf(out[:, [1, 2]]).all() and not torch.isinf(out[:, 0]).any()
    forced = forcing.ForceEOS(3, prompt_length=3, eos_token_ids=[2])(ids, scores.clone())
    assert (forced[:, 2] == 0).all() and torch.isinf(forced[:, [0, 1, 3]]).all()


# -- processors transformers has in core: same scores on the same inputs ----------------------


@pytest.mark.parametrize("keep", [1, 3])
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda k: warpers.TopK(5, k), lambda k: tp.TopKLogitsWarper(5, min_tokens_to_keep=k)),
        (lambda k: warpers.TopP(0.3, k), lambda k: tp.TopPLogitsWarper(0.3, min_tokens_to_keep=k)),
        (lambda k: warpers.MinP(0.4, k), lambda k: tp.MinPLogitsWarper(0.4, min_tokens_to_keep=k)),
        (lambda k: warpers.TypicalP(0.5, k), lambda k: tp.TypicalLogitsWarper(0.5, min_tokens_to_keep=k)),
        (lambda k: warpers.Epsilon(0.02, k), lambda k: tp.EpsilonLogitsWarper(0.02, min_tokens_to_keep=k)),
        (lambda k: warpers.Epsilon(0.3, k), lambda k: tp.EpsilonLogitsWarper(0.3, min_tokens_to_keep=k)),
        (lambda k: warpers.Eta(0.02, k), lambda k: tp.EtaLogitsWarper(0.02, min_tokens_to_keep=k)),
        (lambda k: warpers.Eta(0.3, k), lambda k: tp.EtaLogitsWarper(0.3, min_tokens_to_keep=k)),
    ],
)
def test_truncation_warpers_with_min_keep(inputs, ours, theirs, keep):
    ids, scores = inputs
    assert same(ours(keep)(ids, scores.clone()), theirs(keep)(ids, scores.clone()))


def test_sequence_bias(inputs):
    ids, scores = inputs
    biases = {(3,): 2.5, (ids[0, -1].item(), 7): -4.0, (ids[1, -2].item(), ids[1, -1].item(), 9): 3.0, (ids[2, -1].item(), 11): 1.5}
    ours = bias.SequenceBias(biases, VOCAB)(ids, scores.clone())
    assert same(ours, tp.SequenceBiasLogitsProcessor([[list(k), v] for k, v in biases.items()])(ids, scores.clone()))


@pytest.mark.parametrize("penalty", [0.5, 1.7])
def test_encoder_repetition_penalty(penalty):
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 20, (4, 7), generator=generator)
    ids = torch.randint(0, VOCAB, (4, 5), generator=generator)
    scores = torch.randn(4, VOCAB, generator=generator) * 3
    theirs = tp.EncoderRepetitionPenaltyLogitsProcessor(penalty, encoder_input_ids=prompt)(ids, scores.clone())
    # an encoder-decoder model's encoder input, and a decoder-only row's prompt columns
    assert same(prompt_processors.EncoderRepetitionPenalty(penalty, 5, prompt)(ids, scores.clone()), theirs)
    assert same(prompt_processors.EncoderRepetitionPenalty(penalty, 7)(torch.cat([prompt, ids], 1), scores.clone()), theirs)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_encoder_no_repeat_ngram(size):
    generator = torch.Generator().manual_seed(size)
    prompt = torch.randint(0, 4, (5, 10), generator=generator)  # small alphabet: many matches
    ids = torch.randint(0, 4, (5, 6), generator=generator)
    scores = torch.randn(5, VOCAB, generator=generator)
    theirs = tp.EncoderNoRepeatNGramLogitsProcessor(size, prompt)(ids, scores.clone())
    assert same(prompt_processors.EncoderNoRepeatNGram(size, 6, prompt)(ids, scores.clone()), theirs)
    # decoder-only: transformers reads the whole history (prompt included) for the n-1 tail
    whole = torch.cat([prompt, ids], 1)
    theirs = tp.EncoderNoRepeatNGramLogitsProcessor(size, prompt)(whole, scores.clone())
    assert same(prompt_processors.EncoderNoRepeatNGram(size, 10)(whole, scores.clone()), theirs)


def test_forcing_processors_match_transformers(inputs):
    _, scores = inputs
    one = torch.full((4, 1), 2)  # a decoder start token: transformers' cur_len == 1
    assert same(forcing.ForceTokens([9], 1, only_at_length=1)(one, scores.clone()), tp.ForcedBOSTokenLogitsProcessor(9)(one, scores.clone()))
    ids = torch.randint(0, VOCAB, (4, 6))
    assert same(forcing.ForceEOS(3, 4, [1, 5])(ids, scores.clone()), tp.ForcedEOSTokenLogitsProcessor(7, [1, 5])(ids, scores.clone()))
    for length in (5, 6, 8, 9):
        ids = torch.randint(0, VOCAB, (4, length))
        ours = forcing.ExponentialDecayLength(1, 1.6, 4, [1, 5])(ids, scores.clone())
        assert same(ours, tp.ExponentialDecayLengthPenalty((1, 1.6), [1, 5], 4)(ids, scores.clone()))
        ours = forcing.MinLength(7, [1, 5])(ids, scores.clone())
        assert same(ours, tp.MinLengthLogitsProcessor(7, [1, 5])(ids, scores.clone()))
        ours = forcing.BeginSuppress([3, 4], VOCAB, 2, 4)(ids, scores.clone())
        assert same(ours, tp.SuppressTokensAtBeginLogitsProcessor([3, 4], 6)(ids, scores.clone()))
    assert same(forcing.Renormalize()(ids, scores.clone()), tp.LogitNormalization()(ids, scores.clone()))


def test_forced_bos_only_for_one_token_histories():
    scores = torch.zeros(2, 8)
    ids = torch.tensor([[-1, 4], [3, 4]])  # prompts: row 0 one token (left padded), row 1 two
    out = forcing.ForceTokens([6], 2, only_at_length=1)(ids, scores.clone())  # t = 0
    assert out[0, 6] == 0 and torch.isinf(out[0, :6]).all() and (out[1] == 0).all()


def test_padding_does_not_change_length_processors():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 6), generator=generator)
    scores = torch.randn(3, VOCAB, generator=generator)
    padded = torch.cat([torch.full((3, 2), -1), ids], 1)
    assert same(forcing.MinLength(7, [1])(padded, scores.clone()), forcing.MinLength(7, [1])(ids, scores.clone()))


# -- processors from OpenAI / vLLM / llama.cpp: against a direct transcription of their rule ---


def test_logit_bias_adds_to_the_named_tokens(inputs):
    ids, scores = inputs
    out = bias.LogitBias({3: 5.0, 7: -100.0}, VOCAB)(ids, scores.clone())
    expected = scores.clone()
    expected[:, 3] += 5.0
    expected[:, 7] -= 100.0
    assert torch.equal(out, expected)


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    scores = torch.zeros(2, 6)
    ids = torch.tensor([[2, 2, 3, 3, 3, 1], [-1, 4, 5, 5, 5, 0]])  # prompts: first 3 columns
    out = bias.PresenceFrequencyPenalty(0.5, 0.25, prompt_length=3)(ids, scores.clone())
    # row 0 generated 3, 3, 1; row 1 generated 5, 5, 0 (the prompt's 2s and 4 are not counted)
    assert out[0].tolist() == [0, -0.75, 0, -1.0, 0, 0]
    assert out[1].tolist() == [-0.75, 0, 0, 0, 0, -1.0]


def _dry_reference(ids: list[int], vocab: int, multiplier, base, allowed, breakers) -> list[float]:
    """DRY by its definition, one candidate at a time."""
    penalty = [0.0] * vocab
    for token in range(vocab):
        longest = 0
        for j in range(1, len(ids)):  # an earlier occurrence followed by `token` at j
            if ids[j] != token:
                continue
            n = 0
            while j - 1 - n >= 0 and ids[j - 1 - n] == ids[len(ids) - 1 - n] and ids[len(ids) - 1 - n] not in breakers:
                n += 1
            longest = max(longest, n)
        if longest >= allowed:
            penalty[token] = multiplier * base ** (longest - allowed)
    return penalty


def test_dry_matches_its_definition():
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 4, (6, 30), generator=generator)
    ids[:, 10:16] = ids[:, 24:30]  # a long repeat of the tail
    scores = torch.randn(6, 8, generator=generator)
    out = bias.DRY(0.8, 1.75, 2, [3])(ids, scores.clone())
    for row in range(6):
        expected = scores[row] - torch.tensor(_dry_reference(ids[row].tolist(), 8, 0.8, 1.75, 2, {3}))
        assert torch.allclose(out[row], expected, atol=1e-5)


def test_top_n_sigma_keeps_logits_within_n_deviations(inputs):
    _, scores = inputs
    out = warpers.TopNSigma(1.0)(None, scores.clone())
    keep = scores >= scores.max(-1, keepdim=True).values - scores.std(-1, unbiased=False, keepdim=True)
    assert torch.equal(torch.isfinite(out), keep)
    # temperature does not change what it keeps
    assert torch.equal(torch.isfinite(warpers.TopNSigma(1.0)(None, scores / 0.3)), keep)


def test_xtc_drops_all_top_choices_but_the_least_likely():
    scores = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]]))
    out = warpers.exclude_top_choices(scores, 0.15, torch.tensor([True, False, True]))
    assert torch.isfinite(out[0]).tolist() == [False, False, True, True]  # 0.4, 0.3 dropped; 0.2 stays
    assert torch.isfinite(out[1]).all()  # the coin said no
    assert torch.isfinite(out[2]).all()  # only one token above the threshold


def test_mirostat_truncates_by_surprisal():
    scores = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))  # surprisals 1, 2, 3, 3 bits
    assert torch.isfinite(warpers.mirostat_truncate(scores, torch.tensor([2.0]))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(warpers.mirostat_truncate(scores, torch.tensor([0.5]))).tolist() == [[True, False, False, False]]
