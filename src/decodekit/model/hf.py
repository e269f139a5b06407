"""The transformers adapter: decoder-only (``AutoModelForCausalLM``) and encoder-decoder
(``AutoModelForSeq2SeqLM``) models, driving the model's own attention with decodekit's
preallocated cache (:mod:`decodekit.model.cache`).

Decoding steps take the fastest path that reproduces the model: the lean step for
Llama-family models (:mod:`decodekit.model.fast_llama`), else the model's forward with
shared-prefix attention for long prompts (:mod:`decodekit.model.attention`); large CPU output
heads are computed weight-first. Prefill always runs the model's forward."""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from decodekit.errors import InputError
from decodekit.model import attention, quiet, support
from decodekit.model import head as output_head
from decodekit.model.base import DecodeState, tree_ancestors
from decodekit.model.cache import PreallocatedCache, twin
from decodekit.model.fast_llama import LlamaStep
from decodekit.model.merge import merge_states

# Subtle: decoding one token needs one slot; speculation verifies several, the engine asks for
# the exact capacity it needs and the cache grows only if that estimate was short.
_CAPACITY_SLACK = 8

def _as_id_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _decoder_layer_count(config) -> int:
    text = config.get_text_config(decoder=True)
    for name in ("decoder_layers", "num_decoder_layers", "num_hidden_layers", "n_layer"):
        if isinstance(getattr(text, name, None), int):
            return int(getattr(text, name))
    return 1  # unknown: layers beyond the storage get buffers of their own


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
        self.max_length = support.context_length(text)
        if self.is_encoder_decoder and self.decoder_start_token_id is None:
            raise InputError("encoder-decoder model has no decoder_start_token_id in its config")
        support.refuse_unsupported(model)
        self._layers = _decoder_layer_count(config)
        parameters = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in parameters
        # transformers >= 5.2x names the cache argument ``cache`` (``past_key_values`` warns)
        self._cache_kw = "cache" if "cache" in parameters else "past_key_values"
        self._head = output_head.large_cpu_head(model)
        self._shared_prefix = attention.available(model) and not self.is_encoder_decoder
        self._step = None if self.is_encoder_decoder else LlamaStep.build(model)
        self.forward_count = 0

    def cache_bytes_per_token(self) -> int:
        """Bytes of key/value cache one row needs per position (an estimate from the config)."""
        text = self.model.config.get_text_config(decoder=True)
        heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", 1)
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0) or 0
        head_dim = getattr(text, "head_dim", None) or (hidden // heads if heads else 0)
        size = next(self.model.parameters()).element_size()
        return self._layers * 2 * int(kv_heads) * int(head_dim) * size

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
        ids = inputs.get("input_ids", inputs.get("decoder_input_ids"))
        if not output_head.applies(self._head, ids.shape[0]):
            with quiet.driven():
                out = self.model(**inputs, use_cache=True, return_dict=True)
        else:
            head = self._head
            head.forward = functools.partial(output_head.weight_first_linear, head)
            try:
                with quiet.driven():
                    out = self.model(**inputs, use_cache=True, return_dict=True)
            finally:
                del head.forward
        return out.logits[:, -1, :].float()

    def _lean_step(self) -> LlamaStep | None:
        """The lean step if this model has one and it still applies (no hooks, same dtype)."""
        return self._step if self._step is not None and self._step.usable() else None

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output projection of final hidden states ``(..., dim)`` -> float32 logits."""
        head = self.model.get_output_embeddings()
        if output_head.applies(self._head, hidden.numel() // hidden.shape[-1]):
            return output_head.weight_first_linear(head, hidden).float()
        return head(hidden).float()

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
        cache = PreallocatedCache(self._layers, capacity)
        logits = self._forward(
            input_ids=ids, attention_mask=prompt_mask, position_ids=positions, **{self._cache_kw: cache}
        )
        # ``holes``: some slot before ``length`` is masked (padding, speculative rollback); without
        # holes the model is called with no attention mask, which skips building one every step
        holes = min(len(p) for p in prompts) < width
        extra = {"cache": cache, "mask": mask, "length": width, "next_position": prompt_mask.sum(-1), "holes": holes, "group": 1}
        return DecodeState(logits, width, extra)

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
            PreallocatedCache(self._layers, 1 + max_new_tokens + _CAPACITY_SLACK), DynamicCache()
        )
        start = torch.full((batch, 1), int(self.decoder_start_token_id), dtype=torch.long, device=device)
        logits = self._forward(
            encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=start, **{self._cache_kw: cache}
        )
        extra = {"cache": cache, "encoder": encoded, "encoder_mask": mask, "length": 1}
        return DecodeState(logits, 1, extra)

    # -- row bookkeeping ------------------------------------------------------------------------

    def _self_cache(self, state: DecodeState):
        cache = state.extra["cache"]
        return cache.self_attention_cache if self.is_encoder_decoder else cache

    def select(self, state: DecodeState, rows: torch.Tensor) -> None:
        """New row i = old row ``rows[i]``; used for fan-out (beams, samples)."""
        extra = state.extra
        self._self_cache(state).select_rows(rows)
        if self.is_encoder_decoder:
            for layer in extra["cache"].cross_attention_cache.layers:
                layer.batch_select_indices(rows)
            hidden = extra["encoder"].last_hidden_state.index_select(0, rows)
            extra["encoder"] = BaseModelOutput(last_hidden_state=hidden)
            extra["encoder_mask"] = extra["encoder_mask"].index_select(0, rows)
        else:
            # rows [g*k, (g+1)*k) repeat old row g: they share its prompt region from now on
            k = len(rows) // state.rows if state.rows else 0
            fan_out = k >= 1 and k * state.rows == len(rows)
            fan_out = fan_out and torch.equal(rows, torch.arange(state.rows, device=rows.device).repeat_interleave(k))
            extra["group"] = extra["group"] * k if fan_out else 1
            extra["mask"] = extra["mask"].index_select(0, rows)
            extra["next_position"] = extra["next_position"].index_select(0, rows)
        state.logits = state.logits.index_select(0, rows)

    def fork(self, state: DecodeState, rows: torch.Tensor) -> DecodeState:
        """A new state whose row i is a copy of ``state``'s row ``rows[i]`` (cache, mask,
        position, logits); ``state`` is not changed. Branches of a search tree fork this way
        instead of prefilling their prefix again."""
        extra = dict(state.extra)
        extra["cache"] = twin(extra["cache"])
        branch = DecodeState(state.logits, state.prompt_length, extra)
        self.select(branch, rows)
        return branch

    def speculation_refusal(self) -> str | None:
        """Why speculative decoding cannot be exact on this model, or None if it can."""
        return support.speculation_refusal(self.model, self.is_encoder_decoder)

    @property
    def can_merge(self) -> bool:
        """True when rows of separately prefilled batches may share one state (see
        :func:`decodekit.model.support.can_merge`)."""
        return support.can_merge(self.model, self.is_encoder_decoder, self._step is not None)

    def merge(self, first: DecodeState, second: DecodeState, at: int | None = None) -> DecodeState:
        """One state: ``first``'s rows with ``second``'s inserted before row ``at``
        (:func:`decodekit.model.merge.merge_states`)."""
        return merge_states(first, second, at)

    @torch.inference_mode()
    def advance(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor) -> None:
        """Reorder generated positions by ``parents`` (prompt region is shared), then feed ``tokens``."""
        extra = state.extra
        if parents is not None:
            # Rows of one prompt share the prompt region, so only generated positions move.
            self._self_cache(state).reorder_from(parents, state.prompt_length)
        length = extra["length"]
        if self.is_encoder_decoder:
            state.logits = self._forward(
                encoder_outputs=extra["encoder"],
                attention_mask=extra["encoder_mask"],
                decoder_input_ids=tokens[:, None],
                **{self._cache_kw: extra["cache"]},
            )
        else:
            mask = extra["mask"]
            if length >= mask.shape[1]:
                extra["mask"] = mask = torch.cat([mask, torch.ones_like(mask)], dim=1)
            mask[:, length] = 1
            position = extra["next_position"]
            step_mask = mask[:, : length + 1] if extra["holes"] else None
            group, prefix = extra["group"], state.prompt_length
            plan = (group, prefix) if group > 1 and prefix >= attention.MIN_PREFIX else None
            if self._lean_step() is not None:
                self.forward_count += 1
                step_mask = step_mask[:, None, None, :].bool() if step_mask is not None else None
                hidden = self._step(tokens[:, None], position[:, None], extra["cache"], step_mask, plan)
                state.logits = self._project(hidden[:, -1])
            else:
                sharing = attention.shared_prefix(self.model, *plan) if plan and self._shared_prefix else contextlib.nullcontext()
                with sharing:
                    state.logits = self._forward(
                        input_ids=tokens[:, None],
                        attention_mask=step_mask,
                        position_ids=position[:, None],
                        **{self._cache_kw: extra["cache"]},
                    )
            extra["next_position"] = position + 1
        extra["length"] = length + 1


    # -- speculation: score a draft block, then keep what was accepted -------------------------

    @torch.inference_mode()
    def verify(self, state: DecodeState, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Score a block of draft tokens in one forward (decoder-only models).

        ``tokens``: ``(rows, n)`` int64. ``parents``: ``(rows, n)`` int64, the block index of each
        token's parent, ``-1`` for a token that directly continues the row's cache; parents come
        before their children. A chain is ``parents = [-1, 0, 1, ...]``; a tree is verified
        through a 4D attention mask (each token sees the row's cache and its own ancestors) and
        depth-based position ids, as in SpecInfer (Miao et al., 2024).

        Returns ``(rows, n, vocab)`` float32 logits: entry ``j`` is the next-token distribution
        after token ``j``'s path. Mutates the cache: the block occupies cache slots
        ``[length, length + n)`` until :meth:`keep` selects what stays.
        """
        extra = state.extra
        rows, n = tokens.shape
        length, mask = extra["length"], extra["mask"]
        if length + n > mask.shape[1]:
            grown = mask.new_zeros(rows, max(length + n, 2 * mask.shape[1]))
            grown[:, : mask.shape[1]] = mask
            extra["mask"] = mask = grown
        ancestors = tree_ancestors(parents)  # (rows, n, n)
        depth = ancestors.sum(-1) - 1  # (rows, n)
        positions = extra["next_position"][:, None] + depth
        visible = torch.cat([mask[:, None, :length].bool().expand(rows, n, length), ancestors], dim=-1)
        dtype = next(self.model.parameters()).dtype
        block_mask = torch.zeros(visible.shape, dtype=dtype, device=tokens.device)
        block_mask.masked_fill_(~visible, torch.finfo(dtype).min)
        self.forward_count += 1
        if self._lean_step() is not None:
            logits = self._project(self._step(tokens, positions, extra["cache"], block_mask[:, None]))
        else:
            inputs = {"logits_to_keep": 0} if self._keeps_logits else {}
            with quiet.driven():
                logits = self.model(
                    input_ids=tokens,
                    attention_mask=block_mask[:, None],
                    position_ids=positions,
                    **{self._cache_kw: extra["cache"]},
                    use_cache=True,
                    return_dict=True,
                    **inputs,
                ).logits.float()
        extra["length"] = length + n
        extra["block"] = (length, n)
        extra["group"] = 1  # keep/compact move rows' slots independently
        return logits

    @torch.inference_mode()
    def keep(self, state: DecodeState, index: torch.Tensor, count: torch.Tensor) -> None:
        """Keep, for row ``r``, the block tokens ``index[r, :count[r]]`` (a root-to-node path of
        the last :meth:`verify` block) and forget the rest of the block (speculative rollback).

        ``index``: ``(rows, m)`` int64 block indices; ``count``: ``(rows,)`` int64, ``<= m``.
        The kept keys/values move to the slots right after the row's previous tokens; a row
        that keeps fewer than ``m`` leaves masked holes, so rows may keep different numbers of
        tokens. Advances each row's next position by ``count[r]``.
        """
        extra = state.extra
        start, _ = extra.pop("block")
        rows, m = index.shape
        for layer in extra["cache"].layers:
            for name in ("_key_buffer", "_value_buffer"):
                buffer = getattr(layer, name)
                gather = (start + index)[:, None, :, None].expand(rows, buffer.shape[1], m, buffer.shape[3])
                buffer[:, :, start : start + m] = torch.gather(buffer, 2, gather)
            layer.truncate(start + m)
        kept = torch.arange(m, device=index.device)[None, :] < count[:, None]
        extra["mask"][:, start : start + m] = kept.to(extra["mask"].dtype)
        extra["mask"][:, start + m :] = 0
        extra["holes"] = True
        extra["length"] = start + m
        extra["next_position"] = extra["next_position"] + count

    @torch.inference_mode()
    def compact(self, state: DecodeState) -> None:
        """Squeeze out the masked holes :meth:`keep` left: each row's real slots move, in
        order, to the right end of ``[0, m)`` with ``m`` the largest real count. Keys carry
        their rotary positions, so moving them changes nothing the model computes."""
        extra = state.extra
        length = extra["length"]
        real = extra["mask"][:, :length].bool()
        m = int(real.sum(-1).max())
        order = torch.argsort(real.to(torch.int8), dim=1, stable=True)[:, length - m :]  # (rows, m)
        rows = order.shape[0]
        for layer in extra["cache"].layers:
            for name in ("_key_buffer", "_value_buffer"):
                buffer = getattr(layer, name)
                gather = order[:, None, :, None].expand(rows, buffer.shape[1], m, buffer.shape[3])
                buffer[:, :, :m] = torch.gather(buffer[:, :, :length], 2, gather)
            layer.truncate(m)
        extra["mask"][:, :m] = real.gather(1, order).to(extra["mask"].dtype)
        extra["mask"][:, m:] = 0
        extra["holes"] = bool((real.sum(-1) < m).any())
        extra["length"] = m

    @torch.inference_mode()
    def rewind(self, state: DecodeState, count: torch.Tensor) -> None:
        """Forget the last ``count[r]`` tokens of row ``r`` (``(rows,)`` int64), which must be
        the row's newest cache slots (e.g. a draft model's own unverified tokens). Leaves
        masked holes; the shared length shrinks by what every row forgot."""
        extra = state.extra
        length, mask = extra["length"], extra["mask"]
        most = int(count.max()) if count.numel() else 0
        if most == 0:
            return
        window = torch.arange(length - most, length, device=count.device)[None, :]
        forget = window >= (length - count)[:, None]
        mask[:, length - most : length].masked_fill_(forget, 0)
        extra["holes"] = True
        extra["next_position"] = extra["next_position"] - count
        least = int(count.min())
        if least > 0:
            for layer in extra["cache"].layers:
                layer.truncate(length - least)
            extra["length"] = length - least
