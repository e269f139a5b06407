"""The transformers adapter: decoder-only (``AutoModelForCausalLM``) and encoder-decoder
(``AutoModelForSeq2SeqLM``) models, driving the model's own attention with decodekit's
preallocated cache (:mod:`decodekit.model.cache`).

Prefill and decoding steps take the fastest path that reproduces the model: the lean step for
Llama-family and GPT-2 models (:mod:`decodekit.model.fast_llama`, :mod:`decodekit.model.fast_gpt2`),
else the model's forward with shared-prefix attention for long prompts
(:mod:`decodekit.model.attention`); large CPU output heads are computed weight-first."""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from decodekit.errors import InputError
from decodekit.model import attention, quiet, recording, support
from decodekit.model import head as output_head
from decodekit.model.base import DecodeState
from decodekit.model.blocks import BlockSteps
from decodekit.model.cache import PreallocatedCache, twin
from decodekit.model.fast_gpt2 import GPT2Step
from decodekit.model.fast_llama import LlamaStep
from decodekit.model.fused import FusedSteps
from decodekit.model.lean import LeanStep, active_of, spread
from decodekit.model.merge import MergingStates
from decodekit.model.prompt_cache import CachedPrefills
from decodekit.model.rotary import OwnRotary

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


class HFLanguageModel(BlockSteps, FusedSteps, CachedPrefills, MergingStates):
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
        self.rope_switch = support.rope_switch(text)  # LongRoPE's switch position (checks.py)
        # False: each group prefilled alone (rotary frequencies set by the batch's longest row,
        # or positions counted over a row's padding)
        self.batch_invariant = not (support.batch_dependent_rope(text) or support.positions_from_cache(model, self.is_encoder_decoder))
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
        self._step = None if self.is_encoder_decoder else LlamaStep.build(model) or GPT2Step.build(model)
        self._rotary = OwnRotary(model)  # dynamic RoPE: frequencies per state
        self.forward_count = 0

    def cache_bytes_per_token(self) -> int:
        """Bytes of key/value cache one row needs per position (an estimate from the config)."""
        text = self.model.config.get_text_config(decoder=True)
        return support.kv_bytes_per_token(text, self._layers, next(self.model.parameters()).element_size())

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

    def _forward(self, extra: dict | None = None, **inputs) -> torch.Tensor:
        """The model's forward; the last position's float32 logits. With ``extra`` of a state
        that records attention, its weights go to ``extra["attention"]``."""
        self.forward_count += 1
        if self._keeps_logits:
            inputs["logits_to_keep"] = 1
        with self._rotary.of(extra):
            return self._model_forward(extra, inputs)

    def _model_forward(self, extra: dict | None, inputs: dict) -> torch.Tensor:
        ids = inputs.get("input_ids", inputs.get("decoder_input_ids"))
        kind = extra.get("record") if extra is not None else None
        if kind is not None:
            with quiet.driven():
                out = recording.forward(self.model, kind, {**inputs, "use_cache": True, "return_dict": True}, self.is_encoder_decoder, extra)
        elif not output_head.applies(self._head, ids.shape[0]):
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

    def _lean_step(self) -> LeanStep | None:
        """The lean step if this model has one and it still applies (no hooks, same dtype)."""
        return self._step if self._step is not None and self._step.usable() else None

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output projection of final hidden states ``(..., dim)`` -> float32 logits."""
        head = self.model.get_output_embeddings()
        step = self._lean_step()
        native = step is not None and step.head is not None and step.head.native  # decodekit's kernel first
        few = step.project(head, hidden) if native else None
        if few is None and output_head.applies(self._head, hidden.numel() // hidden.shape[-1]):
            return output_head.weight_first_linear(head, hidden).float()
        if few is None and step is not None and not native:
            few = step.project(head, hidden)
        return (few if few is not None else head(hidden)).float()

    @torch.inference_mode()
    def output_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's output layer on hidden states ``(..., dim)`` (e.g. an earlier layer's,
        for DoLa) -> float32 logits."""
        return self._project(hidden.to(next(self.model.parameters()).dtype))

    @property
    def layer_count(self) -> int:
        """The decoder's layers."""
        return self._layers

    @property
    def tied_embeddings(self) -> bool:
        """True when the output layer shares the input embeddings' weights."""
        return bool(getattr(self.model.config.get_text_config(decoder=True), "tie_word_embeddings", False))

    # -- start ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def start(self, prompts: list[list[int]], max_new_tokens: int, attention: str | None = None) -> DecodeState:
        """Prefill each prompt once (one forward for the whole batch). ``attention``:
        ``"cross"``/``"self"`` records those weights after every forward
        (:mod:`decodekit.model.recording`)."""
        record = {"record": attention} if attention is not None else None
        if self.is_encoder_decoder:
            return self._start_encoder_decoder(prompts, max_new_tokens, record)
        ids, positions, prompt_mask, mask, cache = self._prefill_inputs(prompts, max_new_tokens)
        if self._lean_step() is not None and record is None:
            logits = self._lean_prefill(prompts, ids, positions, prompt_mask, cache)
        elif record is None and self.prompt_cache is not None and self.batch_invariant:
            record = {}
            logits = self._forward_prefill(prompts, max_new_tokens, ids, positions, prompt_mask, cache, record)
        else:
            record = dict(record or {})  # it also takes the new state's own rotary frequencies, if any
            logits = self._forward(
                record, input_ids=ids, attention_mask=prompt_mask, position_ids=positions, **{self._cache_kw: cache}
            )
        return self._prefilled(prompts, logits, mask, prompt_mask, cache, record)

    def _prefill_inputs(self, prompts: list[list[int]], max_new_tokens: int):
        """A decoder-only prefill's left-padded ids, positions, prompt mask, whole mask and cache."""
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
        return ids, positions, prompt_mask, mask, PreallocatedCache(self._layers, capacity)

    def _prefilled(self, prompts, logits, mask, prompt_mask, cache, record=None) -> DecodeState:
        width = prompt_mask.shape[1]
        # ``holes``: some slot before ``length`` is masked (padding, speculative rollback); without
        # holes the model is called with no attention mask, which skips building one every step
        holes = min(len(p) for p in prompts) < width
        extra = {"cache": cache, "mask": mask, "length": width, "next_position": prompt_mask.sum(-1), "holes": holes, "group": 1}
        return DecodeState(logits, width, {**extra, **(record or {})})

    def _prefill_part(self, ids: torch.Tensor, positions: torch.Tensor, prompt_mask: torch.Tensor, cache: PreallocatedCache,
                      rows: torch.Tensor | None = None, known_until: torch.Tensor | None = None) -> tuple:
        """The lean step's part for a prefill: every position sees the real positions up to it
        (and itself, so that a padding position's states stay finite). ``rows``: the prompts
        computed (None: all; the others' slots are zeros, written by the caller);
        ``known_until``: ``(rows,)`` each row's first slot computed (the slots before it are
        padding, or a cached prefix the cache writes in: ``cache.known``)."""
        while len(cache.layers) < self._layers:
            cache.layers.append(cache.layer_class_to_replicate())
        width = ids.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
        real = prompt_mask.bool()
        visible = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=ids.device)
        computed = real
        if rows is not None:
            computed = real & torch.zeros(len(ids), dtype=torch.bool, device=ids.device).index_fill_(0, rows.to(ids.device), True)[:, None]
        if known_until is not None:
            computed = computed & (torch.arange(width, device=ids.device)[None, :] >= known_until.to(ids.device)[:, None])
        if bool(computed.all()):
            return ids, positions, cache, visible[:, None], None
        # the left padding's states (and cached prompts') are never read: only the rest is computed
        return ids, positions, cache, visible[:, None], None, computed.reshape(-1).nonzero().squeeze(1)

    def _lean_prefill(self, prompts: list[list[int]], ids: torch.Tensor, positions: torch.Tensor, prompt_mask: torch.Tensor,
                      cache: PreallocatedCache) -> torch.Tensor:
        """Prefill through the lean step (the prompts the prompt cache holds taken from it).
        Same logits as the model's forward (tested), without its per-call overhead."""
        hits, computed, part = self._cached_prefill(prompts, ids, positions, prompt_mask, cache)
        logits = None
        if part is not None:
            self.forward_count += 1
            ends = self._step.parts([part])[0][:, -1]
            logits = self._project(ends if computed is None else ends.index_select(0, computed))
        return self._prefilled_logits(prompts, hits, computed, logits, cache)

    def _start_encoder_decoder(self, prompts: list[list[int]], max_new_tokens: int, record: dict | None) -> DecodeState:
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
            record, encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=start, **{self._cache_kw: cache}
        )
        extra = {"cache": cache, "encoder": encoded, "encoder_mask": mask, "length": 1}
        return DecodeState(logits, 1, {**extra, **(record or {})})

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
        for name in ("attention", "hidden", "prompt_hidden"):
            if name in extra:
                extra[name] = extra[name].index_select(0, rows)
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

    def attention_refusal(self, kind: str) -> str | None:
        """Why this model cannot record ``kind`` attention weights, or None if it can."""
        return recording.refusal(self.model, self.is_encoder_decoder, kind)

    def speculation_refusal(self) -> str | None:
        """Why speculative decoding cannot be exact on this model, or None if it can."""
        return support.speculation_refusal(self.model, self.is_encoder_decoder)

    @torch.inference_mode()
    def advance(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor, idle: torch.Tensor | None = None) -> None:
        """Reorder generated positions by ``parents`` (prompt region is shared), then feed
        ``tokens``. ``idle``: rows whose logits nobody reads (a pool's free slots): the lean
        step skips their projections and MLP and gives them zero logits."""
        extra = state.extra
        if parents is not None:
            # Rows of one prompt share the prompt region, so only generated positions move.
            self._self_cache(state).reorder_from(parents, state.prompt_length)
        if self.is_encoder_decoder:
            state.logits = self._forward(
                extra,
                encoder_outputs=extra["encoder"],
                attention_mask=extra["encoder_mask"],
                decoder_input_ids=tokens[:, None],
                **{self._cache_kw: extra["cache"]},
            )
            extra["length"] += 1
            return
        if self._lean_step() is not None and "record" not in extra:
            self.forward_count += 1
            part = self._step_part(state, None, tokens, idle)
            hidden = self._step.parts([part])[0]
            busy = active_of(part)
            ends = hidden[:, -1] if busy is None else hidden[:, -1].index_select(0, busy)
            state.logits = spread(self._project(ends), busy, state.rows)  # idle rows: zero logits
        else:
            step_mask, plan = self._open_slot(state)
            share = plan and self._shared_prefix and "record" not in extra
            with attention.shared_prefix(self.model, *plan) if share else contextlib.nullcontext():
                state.logits = self._forward(
                    extra,
                    input_ids=tokens[:, None],
                    attention_mask=step_mask,
                    position_ids=extra["next_position"][:, None],
                    **{self._cache_kw: extra["cache"]},
                )
        self._stepped(state)

    def _step_part(self, state: DecodeState, parents: torch.Tensor | None, tokens: torch.Tensor, idle: torch.Tensor | None = None) -> tuple:
        """The lean step's part for a one-token step of every row of a decoder-only state
        (after reordering by ``parents``), the rows ``idle`` left out of its arithmetic (their
        results are not read); :meth:`_stepped` completes it."""
        extra = state.extra
        if parents is not None:
            self._self_cache(state).reorder_from(parents, state.prompt_length)
        step_mask, plan = self._open_slot(state)
        step_mask = step_mask[:, None, None, :].bool() if step_mask is not None else None
        part = (tokens[:, None], extra["next_position"][:, None], extra["cache"], step_mask, plan)
        if idle is None or not 0 < len(idle) < state.rows:
            return part
        busy = torch.ones(state.rows, dtype=torch.bool, device=tokens.device).index_fill_(0, idle, False)
        return (*part, busy.nonzero().squeeze(1))

    @staticmethod
    def _open_slot(state: DecodeState) -> tuple[torch.Tensor | None, tuple[int, int] | None]:
        """Mark every row's next cache slot real (growing the mask as needed). Returns the
        ``(rows, length + 1)`` mask up to it (None when no slot before it is masked) and the
        shared-prefix plan ``(group, prefix)`` of the step (None when it does not apply)."""
        extra = state.extra
        length, mask = extra["length"], extra["mask"]
        if length >= mask.shape[1]:
            extra["mask"] = mask = torch.cat([mask, torch.ones_like(mask)], dim=1)
        mask[:, length] = 1
        step_mask = mask[:, : length + 1] if extra["holes"] else None
        group, prefix = extra["group"], state.prompt_length
        plan = (group, prefix) if group > 1 and prefix >= attention.MIN_PREFIX else None
        return step_mask, plan

    @staticmethod
    def _stepped(state: DecodeState) -> None:
        extra = state.extra
        extra["next_position"] = extra["next_position"] + 1
        extra["length"] += 1
