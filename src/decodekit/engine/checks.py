"""Checks on prompts that must pass before any model call."""

from __future__ import annotations

from decodekit.errors import ConfigError, InputError
from decodekit.model.base import LanguageModel
from decodekit.options import DecodeOptions


def check_prompts(model: LanguageModel, prompts: list[list[int]], options: DecodeOptions) -> None:
    """Raise before any model call if a prompt is empty, out of vocabulary or too long."""
    if not prompts:
        raise InputError("prompts: at least one prompt is required")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise InputError(f"prompt {i} is empty: a prompt needs at least one token")
        if min(prompt) < 0 or max(prompt) >= model.vocab_size:
            raise InputError(f"prompt {i} has token ids outside [0, {model.vocab_size}) (the model's vocabulary)")
    if model.max_length is None:
        return
    longest = 1 if model.is_encoder_decoder else max(len(p) for p in prompts)
    if model.is_encoder_decoder and max(len(p) for p in prompts) > model.max_length:
        raise InputError(f"a prompt is longer than the model's context of {model.max_length} tokens")
    switch = getattr(model, "rope_switch", None)
    if switch is not None and not model.is_encoder_decoder:
        for i, prompt in enumerate(prompts):
            if len(prompt) <= switch < len(prompt) + options.max_new_tokens:
                raise ConfigError(
                    "max_new_tokens",
                    options.max_new_tokens,
                    f"at most {switch - len(prompt)} for prompt {i} ({len(prompt)} tokens): the model's LongRoPE switches to its long "
                    f"factors at position {switch}, and a sequence that crosses it would need its whole cache re-encoded (a prompt "
                    "already past it decodes with the long factors throughout)",
                )
    room = model.max_length - longest
    if room < 1:  # the prompt itself leaves no room, whatever max_new_tokens is
        index = max(range(len(prompts)), key=lambda i: len(prompts[i]))
        raise InputError(
            f"prompt {index} has {longest} tokens: the model attends over {model.max_length}, so a prompt may have at most "
            f"{model.max_length - 1} (room for one new token)"
        )
    if options.max_new_tokens > room:
        raise ConfigError(
            "max_new_tokens",
            options.max_new_tokens,
            f"at most {room}: the model attends over {model.max_length} tokens and the longest prompt has {longest}",
        )


def check_attention(model, group) -> None:
    """A search that reads attention weights needs a model that records them."""
    if group.attention is None:
        return
    own = getattr(group.search, "refusal", None)
    refusal = own(model) if own is not None else None
    if refusal is None:
        refusal = model.attention_refusal(group.attention) if hasattr(model, "attention_refusal") else "a transformers model (decodekit's adapter records attention weights and hidden states)"
    if refusal is not None:
        name = getattr(group.search, "attention_field", "strategy")
        raise ConfigError(name, getattr(group.strategy, name, group.strategy), refusal)


def check_guidance(model, options) -> None:
    """Classifier-free guidance needs a decoder-only model and token ids for the negative prompt."""
    if options.guidance_scale == 1.0:
        return
    if model.is_encoder_decoder:
        raise ConfigError("guidance_scale", options.guidance_scale, "1 with an encoder-decoder model (guidance runs a decoder-only model on the unconditional prompt, as transformers)")
    if isinstance(options.negative_prompt, str):
        raise ConfigError("negative_prompt", options.negative_prompt, "token ids here (Decoder.generate encodes text with its tokenizer)")


def check_search_options(group) -> None:
    """Options a search cannot honour are refused, not ignored."""
    if group.options.top_logprobs and not getattr(group.search, "records_top_logprobs", True):
        raise ConfigError("top_logprobs", group.options.top_logprobs, f"0 with {group.strategy.name!r} (it does not record them)")


def check_group(model, group) -> None:
    """What a plain group's search and options need of the model, before any model call."""
    check_guidance(model, group.options)
    check_attention(model, group)
    check_search_options(group)
