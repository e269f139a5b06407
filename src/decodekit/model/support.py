"""What decodekit can drive exactly of a transformers model, decided from its config: which
architectures are refused, where speculation is exact, which states may share one forward,
and how long a context the model supports."""

from __future__ import annotations

import inspect

from decodekit.errors import ModelError

# Architectures that keep a recurrent or state-space state instead of (or beside) an attention
# key/value cache: decodekit's cache cannot hold, fork or roll that state back, so they are
# refused at load() rather than decoded wrongly.
RECURRENT = frozenset({
    "mamba", "mamba2", "falcon_mamba", "jamba", "recurrent_gemma", "falcon_h1", "zamba", "zamba2",
    "bamba", "granitemoehybrid", "nemotron_h", "lfm2", "lfm2_moe", "rwkv", "xlstm", "qwen3_next",
    "minimax", "plamo2", "hunyuan_v1_moe_hybrid", "kimi_linear", "olmo_hybrid",
})
ATTENTION_LAYERS = frozenset({"full_attention", "sliding_attention", "chunked_attention", "attention"})
# Models that add ALiBi biases computed from mask positions, which a speculative block's
# tree positions do not reproduce.
ALIBI = frozenset({"bloom", "mpt"})

# Decoder-only architectures without a lean step whose attention is exact under masked holes
# (explicit position ids, or ALiBi counted over the mask as Bloom and Falcon do; full attention);
# tested in tests/integration/test_architectures.py. MPT's ALiBi counts cache slots: not here.
MERGEABLE = frozenset({
    "gpt2", "gpt_neox", "opt", "phi", "phi3", "gemma", "falcon", "gptj", "codegen", "stablelm", "starcoder2", "olmo2",
    "granite", "mixtral", "gpt_bigcode", "qwen2_moe", "deepseek_v3", "bloom",
})


def setting(config, name: str, default=None):
    """``config.name``; for an attribute that a heterogeneous config sets layer by layer (which
    transformers refuses to read globally), the first layer's value that is set, so that a
    window or a rotary scaling on any layer is seen."""
    try:
        return getattr(config, name, default)
    except RuntimeError:  # transformers' AmbiguousGlobalPerLayerAttributeError
        layers = getattr(config, "per_layer_config", None)
        if layers is None:
            raise
        values = (getattr(layer, name, None) for layer in layers)
        return next((value for value in values if value is not None), default)


def _rope(text) -> dict:
    """The config's RoPE scaling settings ({} without)."""
    rope = setting(text, "rope_parameters", None) or setting(text, "rope_scaling", None) or {}
    return rope if isinstance(rope, dict) else {}


def _rope_type(text) -> str | None:
    rope = _rope(text)
    return rope.get("rope_type", rope.get("type"))


def _windowed(text) -> bool:
    """Whether the config sets a sliding window (counted in cache slots)."""
    return setting(text, "sliding_window", None) is not None and setting(text, "use_sliding_window", True)


def batch_dependent_rope(text) -> bool:
    """Whether the model's rotary frequencies depend on the largest position in its batch
    (dynamic NTK scaling, LongRoPE): a row then rotates differently beside longer rows, so such
    rows are prefilled and decoded in states of their own."""
    return _rope_type(text) in ("dynamic", "longrope")


def positions_from_cache(model, is_encoder_decoder: bool) -> bool:
    """Whether a decoder-only model numbers its positions by cache slots rather than taking
    ``position_ids`` (TrOCR's and the BART family's decoders, Whisper's, MusicGen's): a
    left-padded row is then shifted by its padding and a draft block cannot be placed, so its
    prompts are prefilled alone and it does not speculate. ALiBi models (Bloom, MPT) bias by
    distance, which padding and blocks leave unchanged."""
    if is_encoder_decoder or "position_ids" in inspect.signature(model.forward).parameters:
        return False
    text = model.config.get_text_config(decoder=True)
    return not (text.model_type in ALIBI or setting(text, "alibi", False))


def rope_switch(text) -> int | None:
    """The position at which LongRoPE switches from its short to its long factors (transformers
    re-encodes the whole cache there; decodekit refuses a sequence that crosses it), else None."""
    if _rope_type(text) != "longrope":
        return None
    original = _rope(text).get("original_max_position_embeddings") or setting(text, "original_max_position_embeddings", None)
    return int(original) if original else None


def context_length(text) -> int | None:
    """Longest sequence the model attends over: its position table, extended by a RoPE scaling
    meant for longer contexts (linear, dynamic NTK and YaRN multiply the original length by
    their factor; llama3 and longrope configs already state the extended length)."""
    length = next((int(v) for k in ("max_position_embeddings", "n_positions") if (v := setting(text, k, None))), None)
    rope = _rope(text)
    if length is None:
        return length
    kind, factor = _rope_type(text), rope.get("factor")
    if kind in ("linear", "dynamic", "yarn") and isinstance(factor, int | float) and factor > 1:
        original = int(rope.get("original_max_position_embeddings") or length)
        return max(length, int(original * factor))
    return length


def refuse_unsupported(model) -> None:
    """Raise :class:`ModelError` for a model whose state decodekit cannot hold, fork or roll back, or that keeps none."""
    config = model.config
    text_config = config.get_text_config(decoder=True)
    kinds = set(setting(text_config, "layer_types", None) or ()) | set(setting(text_config, "block_types", None) or ())
    if text_config.model_type in RECURRENT or (kinds - ATTENTION_LAYERS):
        raise ModelError(
            f"model: {type(model).__name__} ({text_config.model_type}) keeps a recurrent/state-space "
            "state, which decodekit cannot fork or roll back; it decodes attention models only"
        )
    parameters = inspect.signature(model.forward).parameters
    if "cache" not in parameters and "past_key_values" not in parameters:
        raise ModelError(
            f"model: {type(model).__name__} ({text_config.model_type}) keeps no key/value cache (its forward takes "
            "neither `cache` nor `past_key_values`); decodekit decodes models that keep one"
        )


def speculation_refusal(model, is_encoder_decoder: bool) -> str | None:
    """Why speculative decoding cannot be exact on this model, or None if it can."""
    text = model.config.get_text_config(decoder=True)
    name = f"{type(model).__name__} ({text.model_type})"
    if text.model_type in ALIBI or setting(text, "alibi", False):
        return f"a model with rotary or learned positions: {name} adds ALiBi biases, which draft blocks do not reproduce"
    if positions_from_cache(model, is_encoder_decoder):
        return (f"a model that takes position ids: {name} numbers positions by cache slots, so a draft block's tree "
                "positions cannot be given to it")
    if _rope_type(text) == "dynamic":
        return (f"a model whose rotary frequencies do not depend on the block: {name} uses dynamic NTK scaling, whose frequencies "
                "follow the largest position a forward sees, so a draft's length would change the accepted tokens' rotation")
    kinds = set(setting(text, "layer_types", None) or ())
    if _windowed(text) or "sliding_attention" in kinds or setting(text, "attention_types", None) and text.model_type == "gpt_neo":
        return f"a model with full attention: {name} has sliding-window layers, which draft blocks would not respect"
    return None


def can_merge(model, is_encoder_decoder: bool, has_lean_step: bool) -> bool | None:
    """True when rows of separately prefilled batches may share one state (one forward per
    step): decoder-only models whose attention reads positions from ``position_ids`` and
    attends over every unmasked slot, so a row's masked holes change nothing it computes.
    Sliding windows and chunked attention (counted in cache slots) and slot-counted ALiBi are
    decoded in states of their own instead, which is just as exact, one forward per state.
    None: an architecture outside the tested set with full attention in every layer, which
    the adapter checks on the model itself (:func:`decodekit.model.merge.holes_change_nothing`)."""
    if is_encoder_decoder:
        return False
    text = model.config.get_text_config(decoder=True)
    if _windowed(text):
        return False
    if positions_from_cache(model, is_encoder_decoder):
        return False  # a hole would shift the positions of every later token
    if "local" in set(setting(text, "attention_layers", None) or ()) or batch_dependent_rope(text):
        return False  # GPT-Neo's local layers count cache slots; these RoPEs rotate by the batch
    if has_lean_step or text.model_type in MERGEABLE:
        return True
    kinds = set(setting(text, "layer_types", None) or ())
    if text.model_type in ALIBI or setting(text, "alibi", False) or kinds - {"full_attention", "attention"} or setting(text, "attention_chunk_size", None):
        return False
    return None


def kv_bytes_per_token(text, layers: int, element_size: int) -> int:
    """Key/value cache bytes per position of ``layers`` layers of ``text`` (a decoder config);
    a config whose head sizes vary by layer (Gemma 4's) is read layer by layer."""
    view = setting(text, "per_layer_config", None) if getattr(text, "is_heterogeneous", False) else None
    configs = [view[i] for i in range(len(view))] if view is not None else [text]
    per_layer = sum(_kv_width(config) for config in configs) / len(configs)
    return int(layers * 2 * per_layer * element_size)


def _kv_width(config) -> int:
    """Key (or value) numbers per position of one layer of ``config``: heads x head size."""
    heads = setting(config, "num_attention_heads", None) or setting(config, "n_head", 1)
    kv_heads = setting(config, "num_key_value_heads", None) or heads
    hidden = setting(config, "hidden_size", None) or setting(config, "n_embd", 0) or 0
    head_dim = setting(config, "head_dim", None) or (hidden // heads if heads else 0)
    return int(kv_heads) * int(head_dim)
