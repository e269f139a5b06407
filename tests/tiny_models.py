"""Tiny randomly-initialised transformers models, built in-process (no download).

The initialiser range is larger than transformers' default so that the models' next-token
distributions are peaked and varied (not near-uniform), which makes parity tests meaningful:
near-ties between candidates are rare and EOS is reached within short budgets.
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 96
EOS, PAD, BOS = 2, 0, 1


def _finish(model: torch.nn.Module, eos: int = EOS, pad: int = PAD) -> torch.nn.Module:
    config = model.generation_config
    config.eos_token_id, config.pad_token_id = eos, pad
    config.forced_eos_token_id = None
    config.forced_bos_token_id = None
    return model.eval()


def _boost_eos(model: torch.nn.Module, eos: int = EOS, factor: float = 2.5) -> None:
    # Make EOS likelier so that many sequences finish inside short budgets (EOS paths tested).
    with torch.no_grad():
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias[0, eos] += factor
        else:
            model.get_output_embeddings().weight[eos] *= factor


def gpt2(seed: int = 0, vocab: int = VOCAB, layers: int = 2, dim: int = 32, positions: int = 256):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=positions, n_embd=dim, n_layer=layers, n_head=2,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2,
    )
    model = transformers.GPT2LMHeadModel(config)
    _boost_eos(model, factor=4.0)
    return _finish(model)


def _llama_like(config_class, model_class, seed: int, vocab: int, positions: int = 256):
    # Llama and Qwen2 share the decoder shape; the tests check both adapters' code paths.
    torch.manual_seed(seed)
    config = config_class(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.2,
        tie_word_embeddings=False,
    )
    model = model_class(config)
    _boost_eos(model)
    return _finish(model)


def llama(seed: int = 0, vocab: int = VOCAB, positions: int = 256):
    return _llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM, seed, vocab, positions)


def qwen2(seed: int = 0, vocab: int = VOCAB):
    return _llama_like(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, seed, vocab)


def bart(seed: int = 0, vocab: int = VOCAB):
    torch.manual_seed(seed)
    config = transformers.BartConfig(
        vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=256, bos_token_id=BOS, eos_token_id=EOS,
        pad_token_id=PAD, decoder_start_token_id=EOS, forced_eos_token_id=None, init_std=0.2,
    )
    model = transformers.BartForConditionalGeneration(config)
    _boost_eos(model, factor=1.6)
    return _finish(model)


def t5(seed: int = 0, vocab: int = VOCAB):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, eos_token_id=EOS, pad_token_id=PAD, decoder_start_token_id=PAD,
        initializer_factor=4.0,
    )
    model = transformers.T5ForConditionalGeneration(config)
    _boost_eos(model)
    return _finish(model)


BUILDERS = {"gpt2": gpt2, "llama": llama, "qwen2": qwen2, "bart": bart, "t5": t5}


def prompts(seed: int, count: int, low: int = 3, high: int = 12, vocab: int = VOCAB) -> list[list[int]]:
    """Random prompts of different lengths avoiding the special ids 0-2."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (count,), generator=generator).tolist()
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def hf_generate(model, prompt_batch: list[list[int]], **kwargs):
    """transformers generate on a left-padded batch (decoder-only) or a padded encoder batch."""
    width = max(len(p) for p in prompt_batch)
    ids = torch.full((len(prompt_batch), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompt_batch):
        if model.config.is_encoder_decoder:
            ids[row, : len(p)], mask[row, : len(p)] = torch.tensor(p), 1
        else:
            ids[row, width - len(p) :], mask[row, width - len(p) :] = torch.tensor(p), 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, pad_token_id=PAD, eos_token_id=EOS,
            return_dict_in_generate=True, output_scores=True, **kwargs,
        )


def generated_part(model, output, prompt_batch) -> list[list[int]]:
    """The generated token ids of each returned sequence, cut after the first EOS (every
    unfinished sequence runs to the length limit, so nothing else is padding)."""
    start = 1 if model.config.is_encoder_decoder else max(len(p) for p in prompt_batch)
    out = []
    for row in output.sequences[:, start:].tolist():
        # transformers fills finished rows with padding (or EOS when the pad id is 0)
        if EOS in row:
            row = row[: row.index(EOS) + 1]
        out.append(row)
    return out


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens after <pad>, <bos>, <eos>), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS}
    for char in sorted(alphabet):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


TEXT_VOCAB = 259


def text_model(seed: int = 0):
    """A tiny GPT-2 whose vocabulary fits :func:`byte_tokenizer`."""
    return gpt2(seed=seed, vocab=TEXT_VOCAB)
