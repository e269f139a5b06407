"""A tiny random Llama over the embedded model's real byte-level tokenizer, for constraint
tests (built in-process in well under a second; no download)."""

from __future__ import annotations

import functools

import torch
import transformers

from decodekit.models import embedded_model_path


@functools.cache
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(embedded_model_path("stdlib-code"))


def tiny_llama(seed: int = 0, extra_vocab: int = 0, closing_bias: bool = False) -> torch.nn.Module:
    """A 1-layer, 32-wide random Llama whose logits cover the tokenizer (plus ``extra_vocab``
    padded columns). ``closing_bias`` adds a fixed logit bias to the tokens that close JSON
    strings, objects and arrays (``"``, ``}``, ``]``, then ``,``), so that a random model's
    outputs end inside short budgets; the constraint, not the bias, decides what is valid."""
    tok = tokenizer()
    vocab = len(tok) + extra_vocab
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    bias = torch.zeros(vocab)
    if closing_bias:
        texts = tok.batch_decode([[token] for token in range(len(tok))])
        for token, text in enumerate(texts):
            if text.startswith('"') and set(text) <= set('"}],'):
                bias[token] = 10.0
            elif text and set(text) <= set("}]"):
                bias[token] = 8.0
            elif text and set(text) <= set(","):
                bias[token] = 5.0
    if extra_vocab:
        bias[len(tok) :] = 20.0  # padded columns would win everywhere if they were not masked
    if bool(bias.any()):
        model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    return model
