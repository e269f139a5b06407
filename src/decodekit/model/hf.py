"""The transformers adapter: decoder-only (``AutoModelForCausalLM``) and encoder-decoder
(``AutoModelForSeq2SeqLM``) models, driving the model's own attention with decodekit's
preallocated cache (:mod:`decodekit.model.cache`)."""

from __future__ import annotations

import functools
import inspect

import torch
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from decodekit.errors import InputError
from decodekit.model.base import DecodeState
from decodekit.model.cache import PreallocatedCache, PreallocatedLayer

# Subtle: decoding one token needs one slot; speculation verifies several, the engine asks for
# the exact capacity it needs and the cache grows only if that estimate was short.
_CAPACITY_SLACK = 8


def _as_id_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _lazy_preallocated_cache(capacity: int) -> Cache:
    # Layers are created on first use, so the adapter needs no per-architecture layer count.
    return Cache(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity))


class HFLanguageModel:
    """A transformers model behind decodekit's :class:`~decodekit.model.base.LanguageModel`.

    The prompt batch is left-padded (decoder-only) so every row's next token lands in the same
    column; padded positions are masked and position ids count real tokens only, as
    transformers' ``generate`` does.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        config = model.config
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        output = model.get_output_embeddings()
        self.vocab_size = int(output.weight.shape[0]) if output is not None else int(config.vocab_size)
        generation = getattr(model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        self.eos_token_ids = _as_id_tuple(eos if eos is not None else config.eos_token_id)
        pad = getattr(generation, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else getattr(config, "pad_token_id", None)
        start = getattr(generation, "decoder_start_token_id", None)
        self.decoder_start_token_id = start if start is not None else getattr(config, "decoder_start_token_id", None)
        text = config.get_text_config(decoder=True)
        self.max_length = next(
            (int(v) for k in ("max_position_embeddings", "n_positions") if (v := getattr(text, k, None))),
            None,
        )
        if self.is_encoder_decoder and self.decoder_start_token_id is None:
            raise InputError("encoder-decoder model has no decoder_start_token_id in its config")
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.forward_count = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def input_embeddings(self) -> torch.Tensor:
        """``(vocab, dim)`` input embedding matrix (used by embedding diversity)."""
        return self.model.get_input_embeddings().weight

    def _pad_id(self) -> int:
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    def _forward(self, **inputs) -> torch.Tensor:
        self.forward_count += 1
        if self._keeps_logits:
            inputs["logits_to_keep"] = 1
        out = self.model(**inputs, use_cache=True, return_dict=True)
        return out.logits[:, -1, :].float()

    # -- start ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def start(self, prompts: list[list[int]], max_new_tokens: int) -> DecodeState:
        """Prefill each prompt once (one forward for the whole batch)."""
        if self.is_encoder_decoder:
            return self._start_encoder_decoder(prompts, max_new_tokens)
        device, batch = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((batch, width), self._pad_id(), dtype=torch.long)
        capacity = width + max_new_tokens + _CAPACITY_SLACK
        mask = torch.zeros((batch, capacity), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) : width] = 1
        ids, mask = ids.to(device), mask.to(device)
        prompt_mask = mask[:, :width]
        positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)
        cache = _lazy_preallocated_cache(capacity)
        logits = self._forward(
            input_ids=ids, attention_mask=prompt_mask, position_ids=positions, past_key_values=cache
        )
        extra = {"cache": cache, "mask": mask, "length": width, "next_position": prompt_mask.sum(-1)}
        return DecodeState(logits, width, torch.arange(batch, device=device), extra)

    def _start_encoder_decoder(self, prompts: list[list[int]], max_new_tokens: int) -> DecodeState:
        device, batch = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((batch, width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            mask[row, : len(prompt)] = 1
        ids, mask = ids.to(device), mask.to(device)
        encoded = self.model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True)
        encoded = BaseModelOutput(last_hidden_state=encoded.last_hidden_state)
        cache = EncoderDecoderCache(
            _lazy_preallocated_cache(1 + max_new_tokens + _CAPACITY_SLACK), DynamicCache()
        )
        start = torch.full((batch, 1), int(self.decoder_start_token_id), dtype=torch.long, device=device)
        logits = self._forward(
            encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=start, past_key_values=cache
        )
        extra = {"cache": cache, "encoder": encoded, "encoder_mask": mask, "length": 1}
        return DecodeState(logits, 1, torch.arange(batch, device=device), extra)

    # -- row bookkeeping ------------------------------------------------------------------------

    def _self_cache(self, state: DecodeState):
        cache = state.extra["cache"]
        return cache.self_attention_cache if self.is_encoder_decoder else cache

    def select(self, state: DecodeState, rows: torch.Tensor) -> None:
        """New row i = old row ``rows[i]``; used for fan-out (beams, samples)."""
        extra = state.extra
        for layer in self._self_cache(state).layers:
            layer.select_rows(rows)
        if self.is_encoder_decoder:
            for layer in extra["cache"].cross_attention_cache.layers:
                layer.batch_select_indices(rows)
            hidden = extra["encoder"].last_hidden_state.index_select(0, rows)
            extra["encoder"] = BaseModelOutput(last_hidden_state=hidden)
            extra["encoder_mask"] = extra["encoder_mask"].index_select(0, rows)
        else:
            extra["mask"] = extra["mask"].index_select(0, rows)
            extra["next_position"] = extra["next_position"].index_select(0, rows)
        state.logits = state.logits.index_select(0, rows)
        state.row_prompt = state.row_prompt.index_select(0, rows)

    @torch.inference_mode()
    def advance(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor) -> None:
        """Reorder generated positions by ``parents`` (prompt region is shared), then feed ``tokens``."""
        extra = state.extra
        if parents is not None:
            # Rows of one prompt share the prompt region, so only generated positions move.
            for layer in self._self_cache(state).layers:
                layer.reorder_from(parents, state.prompt_length)
        length = extra["length"]
        if self.is_encoder_decoder:
            state.logits = self._forward(
                encoder_outputs=extra["encoder"],
                attention_mask=extra["encoder_mask"],
                decoder_input_ids=tokens[:, None],
                past_key_values=extra["cache"],
            )
        else:
            mask = extra["mask"]
            if length >= mask.shape[1]:
                extra["mask"] = mask = torch.cat([mask, torch.ones_like(mask)], dim=1)
            mask[:, length] = 1
            position = extra["next_position"]
            state.logits = self._forward(
                input_ids=tokens[:, None],
                attention_mask=mask[:, : length + 1],
                position_ids=position[:, None],
                past_key_values=extra["cache"],
            )
            extra["next_position"] = position + 1
        extra["length"] = length + 1
