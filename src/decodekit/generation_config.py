"""A checkpoint's ``generation_config`` as decodekit defaults, so that out of the box a model
decodes as transformers ``generate`` decodes it: the strategy it asks for (``do_sample``,
``num_beams``, ``num_beam_groups``) with its settings, and its processors and lengths.

Only the fields the checkpoint sets are taken; what the user sets explicitly wins (a strategy
object or name, any option keyword; an explicit ``options=DecodeOptions(...)`` replaces the
defaults wholly). transformers' own fallbacks for a sampled or beam strategy (``top_k=50``,
``length_penalty=1``, ...) apply when the checkpoint asks for that strategy, as in generate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPTION_FIELDS = {
    # generation_config name -> DecodeOptions field
    "max_new_tokens": "max_new_tokens",
    "min_new_tokens": "min_new_tokens",
    "max_length": "max_length",
    "min_length": "min_length",
    "max_time": "max_time",
    "repetition_penalty": "repetition_penalty",
    "encoder_repetition_penalty": "encoder_repetition_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size": "encoder_no_repeat_ngram_size",
    "bad_words_ids": "bad_words",
    "suppress_tokens": "suppress_tokens",
    "begin_suppress_tokens": "begin_suppress_tokens",
    "forced_bos_token_id": "forced_bos_token_id",
    "forced_eos_token_id": "forced_eos_token_id",
    "exponential_decay_length_penalty": "exponential_decay_length_penalty",
    "sequence_bias": "sequence_bias",
    "renormalize_logits": "renormalize_logits",
}
SAMPLER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "min_length": 0, "renormalize_logits": False}


@dataclass(frozen=True)
class GenerationDefaults:
    """``options``: DecodeOptions keyword defaults; ``strategy``: the default strategy config
    (None: greedy); ``source``: the generation_config fields they came from."""

    options: dict[str, Any] = field(default_factory=dict)
    strategy: Any = None
    source: dict[str, Any] = field(default_factory=dict)


def _tuple(value):
    if isinstance(value, list):
        return tuple(_tuple(v) for v in value)
    return value


def from_generation_config(config) -> GenerationDefaults:
    """The defaults a transformers ``GenerationConfig`` asks for."""
    from decodekit.search.beam import BeamSearch
    from decodekit.search.diverse import DiverseBeamSearch
    from decodekit.search.sampling import Sampling

    if config is None:
        return GenerationDefaults()
    given = {k: v for k, v in config.to_diff_dict().items() if v is not None}
    options = {}
    for name, target in OPTION_FIELDS.items():
        if name in given and given[name] != NEUTRAL.get(name, object()):
            value = given[name]
            if name == "forced_eos_token_id" and isinstance(value, int):
                value = (value,)
            if name == "sequence_bias" and isinstance(value, list):
                value = {tuple(ids): float(b) for ids, b in value}
            elif name == "sequence_bias" and isinstance(value, dict):
                value = {tuple(k): float(b) for k, b in value.items()}
            options[target] = _tuple(value)
    if "max_new_tokens" in options:
        options.pop("max_length", None)  # as generate: max_new_tokens takes precedence
    sample = bool(given.get("do_sample", False))
    beams = int(given.get("num_beams", 1) or 1)
    groups = int(given.get("num_beam_groups", 1) or 1)
    sampler = None
    if sample:
        full = {name: getattr(config, name, None) for name in SAMPLER_FIELDS}
        defaults = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
        settings = {name: (full[name] if full[name] is not None else defaults[name]) for name in SAMPLER_FIELDS}
        settings["top_k"] = settings["top_k"] or None
        sampler = Sampling(**settings)
    strategy = None
    beam_settings = {
        "num_beams": beams,
        "length_penalty": float(given.get("length_penalty", 1.0)),
        "early_stopping": given.get("early_stopping", False),
        "num_return_sequences": int(given.get("num_return_sequences", 1)),
    }
    if beams > 1 and groups > 1:
        strategy = DiverseBeamSearch(num_groups=groups, diversity_strength=float(given.get("diversity_penalty", 0.0)), **beam_settings)
    elif beams > 1:
        strategy = BeamSearch(sampler=sampler, **beam_settings)
    elif sampler is not None:
        strategy = Sampling(**{**sampler.__dict__, "n": int(given.get("num_return_sequences", 1))})
    return GenerationDefaults(options=options, strategy=strategy, source=given)
