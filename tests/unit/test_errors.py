"""Bad input: a decodekit error (a ValueError) naming the field, raised before any model call."""

from __future__ import annotations

import math

import pytest
import torch

import decodekit
from decodekit.errors import ConfigError, DecodeKitError, InputError, NumericalError
from decodekit.model.scripted import ScriptedModel

VOCAB = 6


def model(**kwargs):
    return ScriptedModel(VOCAB, lambda seq: [0.0] * VOCAB, eos_token_ids=(0,), **kwargs)


CASES = [
    (dict(strategy="nucleus"), "strategy"),
    (dict(strategy=decodekit.BeamSearch(num_beams=0)), "num_beams"),
    (dict(strategy=decodekit.BeamSearch(num_beams=2, num_return_sequences=3)), "num_return_sequences"),
    (dict(strategy=decodekit.BeamSearch(early_stopping="sometimes")), "early_stopping"),
    (dict(strategy=decodekit.BeamSearch(length_penalty_form="linear")), "length_penalty_form"),
    (dict(strategy=decodekit.Sampling(top_p=0.0)), "top_p"),
    (dict(strategy=decodekit.Sampling(top_p=1.5)), "top_p"),
    (dict(strategy=decodekit.Sampling(temperature=0.0)), "temperature"),
    (dict(strategy=decodekit.Sampling(temperature=-1.0)), "temperature"),
    (dict(strategy=decodekit.Sampling(top_k=0)), "top_k"),
    (dict(strategy=decodekit.Sampling(n=0)), "n"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_new_tokens=9, max_new_tokens=4), "min_new_tokens"),
    (dict(eos_token_ids=(99,)), "eos_token_ids"),
    (dict(suppress_tokens=(-1,)), "suppress_tokens"),
    (dict(bad_words=((),)), "bad_words"),
    (dict(strategy=decodekit.BeamSearch(), stop=("\n",)), "stop"),
    (dict(temperature=0.5), "temperature"),  # a strategy setting passed as a decoding option
]


@pytest.mark.parametrize("kwargs, field", CASES)
def test_bad_settings_name_the_field_before_any_model_call(kwargs, field):
    scripted = model()
    decoder = decodekit.load(scripted)
    with pytest.raises(ConfigError) as error:
        decoder.generate([1, 2], **kwargs)
    assert field in str(error.value)
    assert isinstance(error.value, ValueError)
    assert scripted.forward_count == 0


def test_max_new_tokens_beyond_the_context():
    scripted = model(max_length=16)
    with pytest.raises(ConfigError, match="max_new_tokens.*at most 12"):
        decodekit.load(scripted).generate([[1, 2], [1, 2, 3, 4]], max_new_tokens=13)
    assert scripted.forward_count == 0


@pytest.mark.parametrize("prompt", [[], "", [[1], []], [1, 99], [-3]])
def test_empty_or_out_of_vocabulary_prompts(prompt):
    scripted = model()
    with pytest.raises(InputError, match="prompt"):
        decodekit.load(scripted).generate(prompt)
    assert scripted.forward_count == 0


def test_text_prompt_without_a_tokenizer():
    with pytest.raises(InputError, match="tokenizer"):
        decodekit.load(model()).generate("hello")


def test_tokenizer_that_does_not_fit_the_model():
    import tiny_models as tm

    with pytest.raises(InputError, match="tokenizer.*259.*96"):
        decodekit.load(tm.gpt2(), tokenizer=tm.byte_tokenizer())


def test_unknown_model_name_never_downloads(tmp_path):
    with pytest.raises(InputError, match="never downloads"):
        decodekit.load(str(tmp_path / "gpt2"))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_logits_name_step_and_row(bad):
    def next_logprobs(seq):
        values = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # token 3 wins, EOS (0) never does
        if len(seq) == 4 and seq[0] == 2:  # prompt [2, 3] after two generated tokens
            values[1] = bad
        return values

    scripted = ScriptedModel(VOCAB, next_logprobs, eos_token_ids=(0,))
    with pytest.raises(NumericalError, match="step 2, row 1"):
        decodekit.load(scripted).generate([[1, 3], [2, 3]], max_new_tokens=5)


def test_all_errors_are_value_errors():
    assert issubclass(DecodeKitError, ValueError)
    assert all(issubclass(e, DecodeKitError) for e in (ConfigError, InputError, NumericalError))


def test_stream_beam_search_ends_with_the_n_best_of_generate():
    decoder = decodekit.load(model())
    config = decodekit.BeamSearch(num_beams=3, num_return_sequences=2)
    events = list(decoder.stream([1], config, max_new_tokens=4))
    final = decoder.generate([1], config, max_new_tokens=4)
    assert all(e.hypothesis is not None for e in events)
    assert events[-1].result.sequences == final.sequences
    assert list(events[-1].hypothesis) == final.best.token_ids


def test_constant_logits_are_fine():
    # -inf for some tokens is a legitimate "never"; only NaN/+inf/all -inf are errors
    scripted = ScriptedModel(VOCAB, lambda seq: [0.0, -math.inf, 0.5, -math.inf, 0.1, 0.2], eos_token_ids=(0,))
    result = decodekit.load(scripted).generate([1], max_new_tokens=3)
    assert result.best.token_ids == [2, 2, 2]
    assert torch.isfinite(torch.tensor(result.best.token_logprobs)).all()
