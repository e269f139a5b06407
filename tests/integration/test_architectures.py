"""The architecture matrix: for tiny random models of many transformers architectures, greedy
and beam search either match ``generate`` exactly (and a padded batch equals its singles) or
are refused with a named error; speculative greedy either equals plain greedy or is refused.
The expected outcome of every architecture is pinned, so a silent change either way fails."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from architectures import ARCHITECTURES, EXACT, REFUSED, V, _cfg

import decodekit
from decodekit.engine import Engine, Request
from decodekit.errors import ConfigError, ModelError
from decodekit.model import support
from decodekit.model.merge import holes_change_nothing
from decodekit.speculative import Speculative

# the decoder-only architectures whose rows from separate prefills share one state (one forward
# a step for every request); the others decode each admitted batch in a state of its own
MERGED = {"gpt_neox", "opt", "phi", "phi3", "gemma", "falcon", "falcon-alibi", "bloom", "gptj", "codegen", "stablelm",
          "starcoder2", "olmo2", "granite", "mixtral", "gpt_bigcode", "qwen2_moe", "deepseek_v3"}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [20, 21, 22]]
NEW = 6


def reference(model, prompt, **kwargs):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0, eos_token_id=2, do_sample=False, **kwargs)
    start = 1 if model.config.is_encoder_decoder else len(prompt)
    return out[0, start:].tolist()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_each_architecture_is_exact_or_refused(name, one_thread):
    build, plain, speculative = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build().eval()
    if plain == REFUSED:
        with pytest.raises(ModelError, match="recurrent"):
            decodekit.load(model)
        return
    decoder = decodekit.load(model)
    for strategy, hf in ((decodekit.Greedy(), {"num_beams": 1}), (decodekit.BeamSearch(num_beams=3), {"num_beams": 3})):
        singles = [decoder.generate(p, strategy, max_new_tokens=NEW, min_new_tokens=NEW).best.token_ids for p in PROMPTS]
        assert singles == [reference(model, p, **hf) for p in PROMPTS], strategy.name
        batch = decoder.generate(PROMPTS, strategy, max_new_tokens=NEW, min_new_tokens=NEW)
        assert [r.best.token_ids for r in batch] == singles, f"{strategy.name}: padded batch != singles"
    spec = decodekit.Greedy(speculative=Speculative("ngram"))
    if speculative == REFUSED:
        with pytest.raises(ConfigError) as error:
            decoder.generate(PROMPTS, spec, max_new_tokens=NEW)
        assert error.value.field == "speculative"
    else:
        got = [r.best.token_ids for r in decoder.generate(PROMPTS, spec, max_new_tokens=NEW, min_new_tokens=NEW)]
        assert got == [decoder.generate(p, max_new_tokens=NEW, min_new_tokens=NEW).best.token_ids for p in PROMPTS]


DECODER_ONLY = sorted(n for n, (b, plain, _) in ARCHITECTURES.items() if plain == EXACT and n not in
                      {"marian", "pegasus", "m2m100", "mbart", "mt5"})


@pytest.mark.parametrize("name", DECODER_ONLY)
def test_requests_admitted_mid_flight_match_alone_in_one_state_where_merged(name, one_thread):
    torch.manual_seed(0)
    # float64: these near-uniform random models have beam candidates within float32 rounding of
    # each other, which a batch's rounding would flip; the invariant is the arithmetic's
    # (transformers' expert kernels take no float64: the mixtures of experts stay float32)
    model = ARCHITECTURES[name][0]().eval()
    if name not in {"mixtral", "qwen2_moe", "deepseek_v3"}:
        model = model.double()
    adapter = decodekit.load(model).model
    assert adapter.can_merge == (name in MERGED)
    specs = [([5, 6, 7, 8, 9, 10, 11], decodekit.BeamSearch(num_beams=3, num_return_sequences=2), 9),
             ([3, 4], decodekit.Greedy(), 12), ([12, 13, 14, 15], decodekit.Sampling(seed=3, top_k=10), 7),
             ([30, 31, 32] * 3, decodekit.Greedy(), 10)]
    engine = Engine(adapter)
    handles = []
    for prompt, strategy, new in specs:  # each arrives while the others decode
        handles += engine.submit([Request(prompt, strategy, decodekit.DecodeOptions(max_new_tokens=new, min_new_tokens=new))])
        engine.step()
        engine.step()
        if adapter.can_merge:
            assert len(engine._partitions) == 1  # one forward a step for every running row
    for (prompt, strategy, new), handle in zip(specs, handles):
        (alone,) = Engine(adapter).submit([Request(prompt, strategy, decodekit.DecodeOptions(max_new_tokens=new, min_new_tokens=new))])
        want, got = alone.result().hypotheses, handle.result().hypotheses
        assert [h.token_ids for h in got] == [h.token_ids for h in want], strategy.name
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)


def test_a_rope_scaling_extends_the_context_it_supports(one_thread):
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=32, rope_scaling={"rope_type": "linear", "factor": 4.0}, eos_token_id=2, pad_token_id=0)
    model = T.LlamaForCausalLM(config).eval()
    decoder = decodekit.load(model)
    prompt = list(range(3, 50))  # past the 32 positions of the table, within the scaled 128
    got = decoder.generate(prompt, max_new_tokens=20, min_new_tokens=20).best.token_ids
    assert got == reference_long(model, prompt, 20)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        decoder.generate(prompt, max_new_tokens=100)


def reference_long(model, prompt, new):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, pad_token_id=0, do_sample=False)
    return out[0, len(prompt):].tolist()


# architectures outside the tested set: whether their rows share a state is checked on the model
UNLISTED = {
    "cohere": lambda: T.CohereForCausalLM(_cfg(T.CohereConfig)),
    "olmo": lambda: T.OlmoForCausalLM(_cfg(T.OlmoConfig)),
    "qwen3_moe": lambda: T.Qwen3MoeForCausalLM(_cfg(T.Qwen3MoeConfig, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
    "helium": lambda: T.HeliumForCausalLM(_cfg(T.HeliumConfig, head_dim=8)),
}


@pytest.mark.parametrize("name", sorted(UNLISTED))
def test_an_unlisted_architecture_merges_once_checked_and_matches_alone(name, one_thread):
    torch.manual_seed(0)
    model = UNLISTED[name]().eval()
    assert model.config.model_type not in support.MERGEABLE
    adapter = decodekit.load(model).model
    forwards = adapter.forward_count
    assert adapter.can_merge and adapter._merge_checked is True
    assert adapter.forward_count == forwards  # the check's forwards are not the user's
    specs = [([5, 6, 7, 8, 9, 10, 11], decodekit.Greedy(), 9), ([3, 4], decodekit.Sampling(seed=4, top_k=8), 12), ([30, 31, 32] * 3, decodekit.Greedy(), 6)]
    engine = Engine(adapter)
    handles = []
    for prompt, strategy, new in specs:
        handles += engine.submit([Request(prompt, strategy, decodekit.DecodeOptions(max_new_tokens=new, min_new_tokens=new))])
        engine.step()
        assert len(engine._partitions) == 1
    for (prompt, strategy, new), handle in zip(specs, handles):
        (alone,) = Engine(adapter).submit([Request(prompt, strategy, decodekit.DecodeOptions(max_new_tokens=new, min_new_tokens=new))])
        assert [h.token_ids for h in handle.result().hypotheses] == [h.token_ids for h in alone.result().hypotheses]


def test_the_check_finds_a_model_whose_holes_change_what_it_computes():
    """MPT's ALiBi counts cache slots, so masked holes shift its biases: the check says so (its
    config already keeps it apart)."""
    torch.manual_seed(0)
    model = ARCHITECTURES["mpt"][0]().eval()
    adapter = decodekit.load(model).model
    assert adapter.can_merge is False
    assert holes_change_nothing(adapter) is False
    assert holes_change_nothing(decodekit.load(ARCHITECTURES["phi3"][0]().eval()).model) is True


# configs whose layers differ (transformers' per-layer configs): Gemma 4's full-attention layers
# have heads of their own size; a Qwen2 with one layer's window set on its own
HETEROGENEOUS = {
    "gemma4_text": lambda: T.Gemma4ForCausalLM(T.Gemma4TextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, eos_token_id=2, pad_token_id=0, bos_token_id=1)),
    "qwen2-per-layer": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        eos_token_id=2, pad_token_id=0, per_layer_config={0: {"sliding_window": 4}})),
}


@pytest.mark.parametrize("name", sorted(HETEROGENEOUS))
def test_a_config_whose_layers_differ_decodes_exactly(name, one_thread):
    torch.manual_seed(0)
    model = HETEROGENEOUS[name]().eval()
    assert model.config.is_heterogeneous
    decoder = decodekit.load(model)
    # the cache bound counts each layer's own key/value width, as the projections give it
    widths = [m.out_features for n, m in model.named_modules() if n.endswith(("self_attn.k_proj", "self_attn.v_proj"))]
    assert decoder.model.cache_bytes_per_token() == 4 * sum(widths)
    for strategy, hf in ((decodekit.Greedy(), {"num_beams": 1}), (decodekit.BeamSearch(num_beams=3), {"num_beams": 3})):
        singles = [decoder.generate(p, strategy, max_new_tokens=NEW, min_new_tokens=NEW).best.token_ids for p in PROMPTS]
        assert singles == [reference(model, p, **hf) for p in PROMPTS], strategy.name
        batch = decoder.generate(PROMPTS, strategy, max_new_tokens=NEW, min_new_tokens=NEW)
        assert [r.best.token_ids for r in batch] == singles


def test_a_model_without_a_key_value_cache_is_refused_at_load():
    """The original GPT recomputes its whole sequence every step (its forward takes no cache):
    refused by name when loaded, not failing at the first step."""
    model = T.OpenAIGPTLMHeadModel(T.OpenAIGPTConfig(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=64)).eval()
    with pytest.raises(ModelError, match="OpenAIGPTLMHeadModel .*keeps no key/value cache"):
        decodekit.load(model)


def test_a_decoder_that_numbers_positions_by_cache_slots_keeps_batch_equal_to_single(one_thread):
    """TrOCR's decoder takes no position ids (its positions count cache slots, padding
    included): its prompts are prefilled apart, so a batch equals its singles, and it does not
    speculate (a draft block's positions cannot be given); before, both were silently off."""
    torch.manual_seed(0)
    model = T.TrOCRForCausalLM(T.TrOCRConfig(vocab_size=V, d_model=32, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64,
                                             max_position_embeddings=256, eos_token_id=2, pad_token_id=0, bos_token_id=1)).eval()
    decoder = decodekit.load(model)
    assert support.positions_from_cache(model, False) and not decoder.model.can_merge
    for strategy, hf in ((decodekit.Greedy(), {"num_beams": 1}), (decodekit.BeamSearch(num_beams=3), {"num_beams": 3})):
        singles = [decoder.generate(p, strategy, max_new_tokens=NEW, min_new_tokens=NEW).best.token_ids for p in PROMPTS]
        assert singles == [reference(model, p, **hf) for p in PROMPTS], strategy.name
        assert [r.best.token_ids for r in decoder.generate(PROMPTS, strategy, max_new_tokens=NEW, min_new_tokens=NEW)] == singles
    sampling = decodekit.Sampling(seed=3, top_k=10)
    alone = [decoder.generate(p, sampling, max_new_tokens=NEW).best.token_ids for p in PROMPTS]
    assert [r.best.token_ids for r in decoder.generate(PROMPTS, sampling, max_new_tokens=NEW)] == alone
    with pytest.raises(ConfigError) as error:
        decoder.generate(PROMPTS, decodekit.Greedy(speculative=Speculative("ngram")), max_new_tokens=NEW)
    assert error.value.field == "speculative"
