"""What users bring from transformers and vLLM, through ``Decoder.generate``: top log-probs
for every strategy, custom processors and stopping criteria (transformers objects as they
are), ``prefix_allowed_tokens_fn``, stop tokens and kept stop strings, time limits, and the
samplers of llama.cpp/vLLM (DRY, XTC, top-nσ, Mirostat) end to end."""

from __future__ import annotations

import functools

import pytest
import tiny_models as tm
import torch
from transformers.generation import logits_process as tp
from transformers.generation import stopping_criteria as sc

import decodekit
from decodekit import BeamSearch, DiverseBeamSearch, Greedy, Sampling
from decodekit.errors import ConfigError


@functools.cache
def decoder():
    return decodekit.load(tm.text_model(), tm.byte_tokenizer())


@functools.cache
def ids_decoder(name: str = "llama"):
    return decodekit.load(tm.BUILDERS[name]())


PROMPTS = ["def add(a, b):", "x = 1\n", "import os"]
STRATEGIES = [Greedy(), Sampling(seed=3, top_k=30), BeamSearch(num_beams=3, num_return_sequences=2), DiverseBeamSearch(num_beams=4, num_groups=2, num_return_sequences=2)]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_top_logprobs_for_every_strategy(strategy):
    d = decoder()
    plain = d.generate(PROMPTS, strategy, max_new_tokens=8)
    with_top = d.generate(PROMPTS, strategy, max_new_tokens=8, top_logprobs=4)
    for a, b in zip(plain, with_top):
        assert [s.token_ids for s in a.sequences] == [s.token_ids for s in b.sequences]  # nothing else changes
        for seq in b.sequences:
            assert len(seq.top_logprobs) == len(seq.token_ids)
            for token, logprob, top in zip(seq.token_ids, seq.token_logprobs, seq.top_logprobs):
                values = [t.logprob for t in top]
                assert len(top) == 4 and values == sorted(values, reverse=True)
                assert all(t.text == d.decode_text([t.token_id]) for t in top)
                # the chosen token is among them with the same log-prob, or less likely than all
                chosen = [t.logprob for t in top if t.token_id == token]
                assert chosen == pytest.approx([logprob], abs=1e-5) if chosen else logprob <= values[-1] + 1e-6
            if strategy.name == "greedy":
                assert [top[0].token_id for top in seq.top_logprobs] == seq.token_ids


def test_top_logprobs_are_generates_processed_scores():
    hf = tm.BUILDERS["llama"]()
    d = decodekit.load(hf)
    prompt = tm.prompts(2, 1)[0]
    result = d.generate(prompt, max_new_tokens=8, top_logprobs=3, repetition_penalty=1.4)
    out = tm.hf_generate(hf, [prompt], do_sample=False, max_new_tokens=8, repetition_penalty=1.4)
    for t, top in enumerate(result.best.top_logprobs):
        values, ids = torch.log_softmax(out.scores[t][0], -1).topk(3)
        assert [x.token_id for x in top] == ids.tolist()
        assert [x.logprob for x in top] == pytest.approx(values.tolist(), abs=1e-4)


def test_top_logprobs_batch_equals_single_in_the_engine():
    d = decoder()
    together = d.generate(PROMPTS, max_new_tokens=6, top_logprobs=2)
    for prompt, result in zip(PROMPTS, together):
        alone = d.generate(prompt, max_new_tokens=6, top_logprobs=2)
        # the same tokens; log-probs within float noise (a padded forward rounds differently)
        assert [[t.token_id for t in top] for top in alone.best.top_logprobs] == [[t.token_id for t in top] for top in result.best.top_logprobs]
        flat = [t.logprob for top in result.best.top_logprobs for t in top]
        assert [t.logprob for top in alone.best.top_logprobs for t in top] == pytest.approx(flat, abs=1e-5)


def test_a_transformers_processor_works_as_it_is_and_equals_the_option():
    d = ids_decoder()
    prompts = tm.prompts(4, 3)  # different lengths: the adapter hands each row its own history
    ours = d.generate(prompts, max_new_tokens=10, repetition_penalty=1.5)
    theirs = d.generate(prompts, max_new_tokens=10, processors=[tp.RepetitionPenaltyLogitsProcessor(1.5)])
    assert [r.best.token_ids for r in ours] == [r.best.token_ids for r in theirs]
    beams = d.generate(prompts, BeamSearch(num_beams=3), max_new_tokens=10, processors=[tp.NoRepeatNGramLogitsProcessor(2)])
    assert [r.best.token_ids for r in beams] == [r.best.token_ids for r in d.generate(prompts, BeamSearch(num_beams=3), max_new_tokens=10, no_repeat_ngram_size=2)]


def test_a_plain_callable_is_a_processor():
    d = ids_decoder()
    def ban_seven(token_ids, scores):
        scores[:, 7] = -float("inf")
        return scores
    result = d.generate(tm.prompts(5, 1)[0], max_new_tokens=20, processors=[ban_seven], logit_bias={7: 50.0})
    assert 7 not in result.best.token_ids


def test_prefix_allowed_tokens_fn_matches_generate():
    hf = tm.BUILDERS["gpt2"]()
    d = decodekit.load(hf)
    def allowed(batch_id, input_ids):
        return [3 + (int(input_ids[-1]) + batch_id) % 7, 2, 11 + batch_id]
    for i, prompt in enumerate(tm.prompts(6, 2)):
        ours = d.generate(prompt, max_new_tokens=8, prefix_allowed_tokens_fn=lambda b, ids, i=i: allowed(i, ids))
        out = tm.hf_generate(hf, [prompt], do_sample=False, max_new_tokens=8, prefix_allowed_tokens_fn=lambda b, ids, i=i: allowed(i, ids))
        assert ours.best.token_ids == tm.generated_part(hf, out, [prompt])[0]
    # batch_id is the prompt's index in the call
    seen = set()
    d.generate(tm.prompts(6, 3), BeamSearch(num_beams=2), max_new_tokens=2, prefix_allowed_tokens_fn=lambda b, ids: seen.add(b) or [5])
    assert seen == {0, 1, 2}


def test_stopping_criteria_end_rows():
    d = ids_decoder()
    prompts = tm.prompts(7, 3)
    out = d.generate(prompts, max_new_tokens=30, eos_token_ids=(), stopping=[sc.MaxLengthCriteria(max_length=12)])
    for prompt, result in zip(prompts, out):
        assert len(prompt) + len(result.best.token_ids) == 12 and result.best.finish_reason == "stop"

    def after_five(token_ids, scores):
        return torch.tensor([5 in row.tolist()[-1:] for row in token_ids])
    (result,) = d.generate([prompts[0]], max_new_tokens=30, eos_token_ids=(), stopping=[after_five], logit_bias={5: 4.0})
    assert result.best.token_ids[-1] == 5 and 5 not in result.best.token_ids[:-1]
    with pytest.raises(ConfigError, match="stopping"):
        d.generate(prompts[0], BeamSearch(), stopping=[after_five])


def test_stop_token_ids_add_to_eos_and_stop_strings_can_be_kept():
    d = decoder()
    base = d.generate(PROMPTS[0], max_new_tokens=12, eos_token_ids=())
    stop_token = base.best.token_ids[3]
    out = d.generate(PROMPTS[0], max_new_tokens=12, eos_token_ids=(), stop_token_ids=(stop_token,))
    assert out.best.token_ids == base.best.token_ids[: base.best.token_ids.index(stop_token) + 1] and out.best.finish_reason == "eos"
    text = base.best.text
    stop = text[2:4]
    trimmed = d.generate(PROMPTS[0], max_new_tokens=12, eos_token_ids=(), stop=[stop])
    kept = d.generate(PROMPTS[0], max_new_tokens=12, eos_token_ids=(), stop=[stop], include_stop_str_in_output=True)
    assert trimmed.best.text == text[: text.index(stop)]
    assert kept.best.text == text[: text.index(stop) + len(stop)]


@pytest.mark.parametrize("sampler", [None, Sampling(seed=4, top_k=20)], ids=["beam", "beam-sampling"])
def test_beam_search_ends_candidates_at_stop_strings(sampler):
    """With one-byte tokens, the stop string "\n" is exactly the newline token acting as an
    extra EOS: the same hypotheses, labelled ``stop`` and cut before the newline."""
    d = decoder()
    newline = d.tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    beam = BeamSearch(num_beams=4, num_return_sequences=3, sampler=sampler)
    # both runs with two EOS ids (the same candidate count per step); 200 is never emitted
    same = dict(max_new_tokens=16, logit_bias={newline[0]: 4.0}, suppress_tokens=(200,))
    stopped = d.generate(PROMPTS, beam, stop=["\n"], eos_token_ids=(tm.EOS, 200), **same)
    as_eos = d.generate(PROMPTS, beam, eos_token_ids=(tm.EOS, newline[0]), **same)
    assert any(s.finish_reason == "stop" for r in stopped for s in r.sequences)
    for a, b in zip(stopped, as_eos):
        assert [s.token_ids for s in a.sequences] == [s.token_ids for s in b.sequences]
        assert [s.score for s in a.sequences] == pytest.approx([s.score for s in b.sequences], abs=1e-5)
        for s in a.sequences:
            ends_at_newline = s.token_ids[-1] == newline[0]
            assert (s.finish_reason == "stop") == ends_at_newline
            assert "\n" not in s.text
    with pytest.raises(ConfigError, match="stop"):
        d.generate(PROMPTS[0], DiverseBeamSearch(num_beams=4, num_groups=2), stop=["\n"])


def test_max_time_ends_a_request_with_reason_time():
    d = ids_decoder()
    out = d.generate(tm.prompts(8, 1)[0], max_new_tokens=200, eos_token_ids=(), max_time=1e-4)
    assert out.best.finish_reason == "time" and 1 <= len(out.best.token_ids) < 200
    with pytest.raises(ConfigError, match="max_time"):
        d.generate(tm.prompts(8, 1)[0], BeamSearch(), max_time=1.0)


@pytest.mark.parametrize(
    "sampler",
    [
        Sampling(seed=1, top_n_sigma=1.0),
        Sampling(seed=2, xtc_probability=0.5, xtc_threshold=0.05),
        Sampling(seed=3, mirostat_tau=3.0, mirostat_eta=0.2),
        Sampling(seed=4, temperature=0.7, epsilon_cutoff=0.001, eta_cutoff=0.001, min_keep=2, n=2),
    ],
    ids=["top-n-sigma", "xtc", "mirostat", "epsilon-eta"],
)
def test_new_samplers_are_deterministic_and_batch_equals_single(sampler):
    d = decoder()
    together = d.generate(PROMPTS, sampler, max_new_tokens=10, dry_multiplier=0.8)
    again = d.generate(PROMPTS, sampler, max_new_tokens=10, dry_multiplier=0.8)
    assert [[s.token_ids for s in r.sequences] for r in together] == [[s.token_ids for s in r.sequences] for r in again]
    for prompt, result in zip(PROMPTS, together):
        alone = d.generate(prompt, sampler, max_new_tokens=10, dry_multiplier=0.8)
        assert [s.token_ids for s in alone.sequences] == [s.token_ids for s in result.sequences]


def test_xtc_and_mirostat_change_what_is_sampled():
    d = decoder()
    plain = d.generate(PROMPTS, Sampling(seed=9), max_new_tokens=16)
    for sampler in (Sampling(seed=9, xtc_probability=1.0, xtc_threshold=0.01), Sampling(seed=9, mirostat_tau=0.5)):
        assert [r.best.token_ids for r in d.generate(PROMPTS, sampler, max_new_tokens=16)] != [r.best.token_ids for r in plain]


def test_dry_penalises_repeating_a_sequence():
    d = ids_decoder()
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    boosted = {8: 20.0}  # without DRY the model continues the repetition with 8
    assert d.generate(prompt, max_new_tokens=1, logit_bias=boosted).best.token_ids == [8]
    assert d.generate(prompt, max_new_tokens=1, logit_bias=boosted, dry_multiplier=5.0, dry_base=2.0, dry_sequence_breakers=()).best.token_ids != [8]


def test_presence_and_frequency_penalties_reduce_repeats():
    d = decoder()
    def repeats(result):
        ids = result.best.token_ids
        return len(ids) - len(set(ids))
    plain = d.generate(PROMPTS, max_new_tokens=24, eos_token_ids=())
    penalised = d.generate(PROMPTS, max_new_tokens=24, eos_token_ids=(), presence_penalty=2.0, frequency_penalty=2.0)
    assert sum(map(repeats, penalised)) < sum(map(repeats, plain))


@pytest.mark.parametrize(
    "settings",
    [
        dict(logit_bias={1: "x"}), dict(logit_bias={10**6: 1.0}), dict(logit_bias=[1, 2]), dict(sequence_bias={5: 1.0}),
        dict(presence_penalty=float("nan")), dict(top_logprobs=-1), dict(top_logprobs=10**6), dict(max_length=1),
        dict(max_time=0), dict(exponential_decay_length_penalty=(1, 0.5)), dict(decoder_prefix=(1,) * 100, max_new_tokens=4),
        dict(dry_multiplier=-1.0), dict(dry_sequence_breakers="\n"), dict(forced_bos_token_id=10**6), dict(stop_token_ids=(-1,)),
    ],
)
def test_bad_new_settings_are_named_errors(settings):
    with pytest.raises(ConfigError, match=next(iter(settings))):
        decoder().generate(PROMPTS[0], **settings)


@pytest.mark.parametrize(
    "sampler",
    [dict(epsilon_cutoff=1.0), dict(eta_cutoff=-0.1), dict(top_n_sigma=-1.0), dict(xtc_probability=2.0), dict(mirostat_tau=-1.0), dict(min_keep=0)],
)
def test_bad_sampler_settings_are_named_errors(sampler):
    with pytest.raises(ConfigError, match=next(iter(sampler))):
        decoder().generate(PROMPTS[0], Sampling(**sampler))


# -- generation_config ----------------------------------------------------------------------


def _with_generation_config(name: str, **settings):
    hf = tm.BUILDERS[name]()
    for key, value in settings.items():
        setattr(hf.generation_config, key, value)
    return hf


@pytest.mark.parametrize(
    "name, settings",
    [
        ("bart", dict(num_beams=3, no_repeat_ngram_size=2, forced_bos_token_id=9, max_length=9, length_penalty=0.8)),
        ("gpt2", dict(max_new_tokens=7, repetition_penalty=1.3, begin_suppress_tokens=[4], min_length=9)),
        ("llama", dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.7, max_new_tokens=6, num_return_sequences=2)),
    ],
)
def test_a_checkpoints_generation_config_applies_by_default(tmp_path, name, settings):
    hf = _with_generation_config(name, **settings)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    d = decodekit.load(tmp_path)
    prompt = tm.prompts(12, 1, low=4, high=6)[0]
    ours = d.generate(prompt)
    width = len(prompt)
    ids = torch.tensor([prompt])
    if "num_beam_groups" in settings:  # group beam search left transformers' core (its parity: test_diverse_parity)
        expected = d.generate(prompt, DiverseBeamSearch(num_beams=4, num_groups=2, diversity_strength=0.7, num_return_sequences=2), max_new_tokens=6)
        assert ours.strategy == "diverse_beam" and [s.token_ids for s in ours.sequences] == [s.token_ids for s in expected.sequences]
        return
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=tm.PAD)
    start = 1 if hf.config.is_encoder_decoder else width
    theirs = out[0, start:].tolist()
    if tm.EOS in theirs:
        theirs = theirs[: theirs.index(tm.EOS) + 1]
    assert ours.best.token_ids == theirs
    # explicit settings win; use_generation_config=False ignores it
    plain = decodekit.load(tmp_path, use_generation_config=False).generate(prompt, max_new_tokens=5)
    assert plain.strategy == "greedy" and len(plain.best.token_ids) <= 5
    assert d.generate(prompt, "greedy", max_new_tokens=5).strategy == "greedy"


# -- score ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart"])
def test_score_gives_the_log_probs_greedy_decoding_reports(name):
    d = decodekit.load(tm.BUILDERS[name]())
    prompts = tm.prompts(13, 3)
    generated = d.generate(prompts, max_new_tokens=6)
    scored = d.score(prompts, [r.best.token_ids for r in generated])
    for result, score in zip(generated, scored):
        assert score.token_ids == result.best.token_ids
        assert score.token_logprobs == pytest.approx(result.best.token_logprobs, abs=1e-4)
        assert score.logprob == pytest.approx(sum(result.best.token_logprobs), abs=1e-3)


def test_score_text_and_errors():
    d = decoder()
    one = d.score("def f(x):", "\n    return x")
    assert one.text == "\n    return x" and len(one.token_logprobs) == len(one.token_ids)
    with pytest.raises(decodekit.InputError, match="continuations"):
        d.score(["a", "b"], ["c"])
    with pytest.raises(decodekit.InputError, match="continuations"):
        d.score("a", [10**6])
