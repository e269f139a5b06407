"""Tiny random models of many transformers architectures, with what plain and speculative
decoding are expected to do on each (``tests/integration/test_architectures.py`` pins it)."""

from __future__ import annotations

import transformers as T

V = 96
EXACT, REFUSED = "exact", "refused"


def _cfg(cls, **kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2, pad_token_id=0, bos_token_id=1)
    base.update(kw)
    return cls(**base)


def _seq2seq(cls, config_cls, **kw):
    base = dict(vocab_size=V, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, eos_token_id=2, pad_token_id=0,
                bos_token_id=1, decoder_start_token_id=2, forced_eos_token_id=None)
    base.update(kw)
    return cls(config_cls(**base))


# name -> (builder, plain decoding, speculative decoding)
ARCHITECTURES = {
    "gpt_neox": (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256, eos_token_id=2, pad_token_id=0)), EXACT, EXACT),
    "opt": (lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256, eos_token_id=2, pad_token_id=0, word_embed_proj_dim=32)), EXACT, EXACT),
    "phi": (lambda: T.PhiForCausalLM(_cfg(T.PhiConfig)), EXACT, EXACT),
    "phi3": (lambda: T.Phi3ForCausalLM(_cfg(T.Phi3Config)), EXACT, EXACT),
    "gemma": (lambda: T.GemmaForCausalLM(_cfg(T.GemmaConfig, head_dim=8)), EXACT, EXACT),
    "gemma2-window": (lambda: T.Gemma2ForCausalLM(_cfg(T.Gemma2Config, head_dim=8, sliding_window=8)), EXACT, REFUSED),
    "gemma3-window": (lambda: T.Gemma3ForCausalLM(_cfg(T.Gemma3TextConfig, head_dim=8, sliding_window=8)), EXACT, REFUSED),
    "mistral-window": (lambda: T.MistralForCausalLM(_cfg(T.MistralConfig, sliding_window=8)), EXACT, REFUSED),
    "falcon": (lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, eos_token_id=2, pad_token_id=0)), EXACT, EXACT),
    "falcon-alibi": (lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True, eos_token_id=2, pad_token_id=0)), EXACT, REFUSED),
    "bloom": (lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4, eos_token_id=2, pad_token_id=0)), EXACT, REFUSED),
    "mpt": (lambda: T.MptForCausalLM(T.MptConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=256, eos_token_id=2, pad_token_id=0)), EXACT, REFUSED),
    "gptj": (lambda: T.GPTJForCausalLM(T.GPTJConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=256, eos_token_id=2, pad_token_id=0, bos_token_id=1)), EXACT, EXACT),
    "codegen": (lambda: T.CodeGenForCausalLM(T.CodeGenConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=256, eos_token_id=2, pad_token_id=0, bos_token_id=1)), EXACT, EXACT),
    "stablelm": (lambda: T.StableLmForCausalLM(_cfg(T.StableLmConfig)), EXACT, EXACT),
    "starcoder2": (lambda: T.Starcoder2ForCausalLM(_cfg(T.Starcoder2Config, sliding_window=None)), EXACT, EXACT),
    "olmo2": (lambda: T.Olmo2ForCausalLM(_cfg(T.Olmo2Config)), EXACT, EXACT),
    "granite": (lambda: T.GraniteForCausalLM(_cfg(T.GraniteConfig)), EXACT, EXACT),
    "mixtral": (lambda: T.MixtralForCausalLM(_cfg(T.MixtralConfig, num_local_experts=4, num_experts_per_tok=2)), EXACT, EXACT),
    "gpt_bigcode": (lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=256, eos_token_id=2, pad_token_id=0)), EXACT, EXACT),
    "qwen2_moe": (lambda: T.Qwen2MoeForCausalLM(_cfg(T.Qwen2MoeConfig, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)), EXACT, EXACT),
    "deepseek_v3": (lambda: T.DeepseekV3ForCausalLM(_cfg(T.DeepseekV3Config, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1)), EXACT, EXACT),
    "mamba": (lambda: T.MambaForCausalLM(T.MambaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, eos_token_id=2, pad_token_id=0)), REFUSED, REFUSED),
    "jamba": (lambda: T.JambaForCausalLM(_cfg(T.JambaConfig, num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1)), REFUSED, REFUSED),
    "recurrent_gemma": (lambda: T.RecurrentGemmaForCausalLM(T.RecurrentGemmaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, lru_width=32, attention_window_size=16, eos_token_id=2, pad_token_id=0)), REFUSED, REFUSED),
    "marian": (lambda: _seq2seq(T.MarianMTModel, T.MarianConfig, decoder_start_token_id=0), EXACT, EXACT),
    "pegasus": (lambda: _seq2seq(T.PegasusForConditionalGeneration, T.PegasusConfig, decoder_start_token_id=0), EXACT, EXACT),
    "m2m100": (lambda: _seq2seq(T.M2M100ForConditionalGeneration, T.M2M100Config), EXACT, EXACT),
    "mbart": (lambda: _seq2seq(T.MBartForConditionalGeneration, T.MBartConfig), EXACT, EXACT),
    "mt5": (lambda: T.MT5ForConditionalGeneration(T.MT5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, eos_token_id=2, pad_token_id=0, decoder_start_token_id=0)), EXACT, EXACT),
}
