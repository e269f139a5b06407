"""Models whose attention depends on more than a row's own positions: dynamic NTK RoPE (its
frequencies follow the largest position seen, kept on the rotary module), LongRoPE (short or
long factors by the batch's largest position) and GPT-Neo's local layers (a window counted in
cache slots). A request decodes what it decodes alone on a freshly loaded model, whatever was
decoded before or beside it, or is refused."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

import decodekit
from decodekit.engine import Engine, Request
from decodekit.errors import ConfigError
from decodekit.speculative import Speculative

V = 96
LONG, SHORT = [3 + (7 * i) % 90 for i in range(60)], [5, 6, 7, 9]


def _dynamic():
    torch.manual_seed(0)
    return T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=32, rope_scaling={"rope_type": "dynamic", "factor": 8.0}, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2)).eval()


def _longrope():
    torch.manual_seed(0)
    return T.Phi3ForCausalLM(T.Phi3Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, original_max_position_embeddings=32,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [4.0, 8.0, 16.0, 32.0]},
        eos_token_id=2, pad_token_id=0, initializer_range=0.2)).eval()


def _gpt_neo_local():
    torch.manual_seed(0)
    return T.GPTNeoForCausalLM(T.GPTNeoConfig(
        vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=16,
        max_position_embeddings=256, eos_token_id=2, pad_token_id=0, bos_token_id=1)).eval()


def _generate(model, prompt, new):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              pad_token_id=0)[0, len(prompt):].tolist()


def _options(new):
    return decodekit.DecodeOptions(max_new_tokens=new, min_new_tokens=new)


@pytest.mark.parametrize("build, prompt", [(_dynamic, SHORT), (_dynamic, LONG[:40]), (_longrope, SHORT), (_longrope, LONG[:40]), (_gpt_neo_local, SHORT)])
def test_a_request_decodes_as_alone_on_a_fresh_model_whatever_ran_before_or_beside_it(build, prompt):
    model = build()
    fresh = copy.deepcopy(model)
    adapter = decodekit.load(model).model
    new = 12 if build is not _longrope or len(prompt) > 32 else 32 - len(prompt)  # LongRoPE: not across its switch
    other = LONG if build is not _longrope else LONG[:40]
    assert not adapter.can_merge
    first = Engine(adapter).submit([Request(prompt, decodekit.Greedy(), _options(new))])[0].result().hypotheses[0]
    assert first.token_ids == _generate(fresh, prompt, new)
    # beside a longer request: in one submit (one prefill each), and joining it mid-flight
    engine = Engine(adapter)
    a, b = engine.submit([Request(other, decodekit.Greedy(), _options(8)), Request(prompt, decodekit.Greedy(), _options(new))])
    (c,) = engine.submit([Request(prompt, decodekit.Sampling(seed=5, top_k=10), _options(new))])
    engine.step()
    engine.step()
    (d,) = engine.submit([Request(prompt, decodekit.Greedy(), _options(new))])
    for handle in (b, d):
        got = handle.result().hypotheses[0]
        assert got.token_ids == first.token_ids and got.logprob == pytest.approx(first.logprob, abs=1e-4)
    a.result()
    sampled = Engine(adapter).submit([Request(prompt, decodekit.Sampling(seed=5, top_k=10), _options(new))])[0].result().hypotheses[0]
    assert c.result().hypotheses[0].token_ids == sampled.token_ids
    # after all that, alone again: the same; and the model's own generate sees a fresh model
    again = Engine(adapter).submit([Request(prompt, decodekit.Greedy(), _options(new))])[0].result().hypotheses[0]
    assert again.token_ids == first.token_ids and again.logprob == pytest.approx(first.logprob, abs=1e-5)
    assert _generate(model, prompt, new) == first.token_ids


def test_speculation_on_dynamic_rope_is_refused_naming_it():
    decoder = decodekit.load(_dynamic())
    with pytest.raises(ConfigError, match="dynamic NTK") as error:
        decoder.generate(SHORT, decodekit.Greedy(speculative=Speculative("ngram")), max_new_tokens=4)
    assert error.value.field == "speculative"


def test_a_sequence_crossing_longrope_s_switch_is_refused_naming_max_new_tokens():
    decoder = decodekit.load(_longrope())
    with pytest.raises(ConfigError, match="at most 4 for prompt 0") as error:
        decoder.generate([5] * 28, max_new_tokens=12)
    assert error.value.field == "max_new_tokens"
    assert len(decoder.generate([5] * 28, max_new_tokens=4, min_new_tokens=4).best.token_ids) == 4
    assert len(decoder.generate([5] * 40, max_new_tokens=12, min_new_tokens=12).best.token_ids) == 12  # past it from the start
