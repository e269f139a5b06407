"""Lossless speculative decoding: proposers (n-gram prompt lookup, SuffixDecoding, draft model,
Token Recycling) behind one protocol, one verifier, and a batched loop.

>>> import decodekit
>>> from decodekit.speculative import Speculative
>>> decoder = decodekit.load()
>>> result = decoder.generate("def f(x):", decodekit.Greedy(speculative=Speculative("suffix")))
>>> result.stats.accepted_per_forward  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

from decodekit.errors import ConfigError
from decodekit.options import DecodeOptions
from decodekit.search.base import Hypothesis
from decodekit.speculative.base import Draft, Proposer, SpeculationContext, Verification, Warp
from decodekit.speculative.config import (
    CONFIGS,
    DraftModelConfig,
    PromptLookupConfig,
    RecyclingConfig,
    Speculative,
    SuffixConfig,
)
from decodekit.speculative.loop import SpeculationStats, SpeculativeDecoding

__all__ = [
    "CONFIGS",
    "Draft",
    "DraftModelConfig",
    "PromptLookupConfig",
    "Proposer",
    "RecyclingConfig",
    "SpeculationContext",
    "SpeculationStats",
    "Speculative",
    "SuffixConfig",
    "Verification",
    "check_supported",
    "make_proposer",
    "speculative_decode",
]

_DEFAULT_OPTIONS = DecodeOptions()
_SUPPORTED_OPTIONS = {
    "max_new_tokens",
    "min_new_tokens",
    "eos_token_ids",
    "stop",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "suppress_tokens",
    "bad_words",
    "force_eos_at_max_length",
    "min_length",
    "stop_token_ids",
    "include_stop_str_in_output",
    "logit_bias",
    "sequence_bias",
    "presence_penalty",
    "frequency_penalty",
    "encoder_repetition_penalty",
    "encoder_no_repeat_ngram_size",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "decoder_prefix",
    "begin_suppress_tokens",
    "exponential_decay_length_penalty",
    "renormalize_logits",
}


def check_supported(strategy: Any, options: DecodeOptions) -> Speculative:
    """The strategy's :class:`Speculative` config, validated; ``ConfigError`` naming the field
    for a strategy or an option speculation does not support. Touches no model."""
    from decodekit.search.sampling import Greedy, Sampling

    speculative = getattr(strategy, "speculative", None)
    if not isinstance(speculative, Speculative):
        raise ConfigError("speculative", speculative, "a decodekit.speculative.Speculative config")
    if not isinstance(strategy, Greedy | Sampling):
        raise ConfigError(
            "speculative",
            speculative.proposer,
            f"greedy or sample strategies, not {strategy.name!r}",
        )
    speculative.validate()
    for name in vars(options):
        if name not in _SUPPORTED_OPTIONS and getattr(options, name) != getattr(
            _DEFAULT_OPTIONS, name
        ):
            raise ConfigError(
                name,
                getattr(options, name),
                f"its default with speculative decoding (supported options: {', '.join(sorted(_SUPPORTED_OPTIONS))})",
            )
    return speculative


def check_target(model, strategy: Any, options: DecodeOptions) -> None:
    """``ConfigError`` for what speculation cannot do exactly on ``model``: a model the
    verifier's blocks do not fit, and for encoder-decoder targets tree drafts and the
    options that read the encoder's tokens. Touches no model."""
    speculative = strategy.speculative
    refusal = model.speculation_refusal() if hasattr(model, "speculation_refusal") else None
    if refusal is not None:
        raise ConfigError("speculative", speculative.proposer, refusal)
    if not model.is_encoder_decoder:
        return
    if speculative.proposer == "draft":
        raise ConfigError("speculative.proposer", "draft", "a decoder-only target model (a draft model needs one), or ngram / suffix")
    if drafts_trees(speculative):
        raise ConfigError("speculative", speculative.proposer, "chain drafts with an encoder-decoder target (ngram, suffix without tree, recycling with no branching above 1): its decoder scores a block causally")
    for name in ("encoder_repetition_penalty", "encoder_no_repeat_ngram_size"):
        if getattr(options, name) != getattr(_DEFAULT_OPTIONS, name):
            raise ConfigError(name, getattr(options, name), "its default with speculative decoding of an encoder-decoder target")


def drafts_trees(speculative: Speculative) -> bool:
    """Whether the proposer drafts trees (several continuations per node), not chains."""
    config = speculative.resolved()
    return (
        (speculative.proposer == "recycling" and any(b > 1 for b in config.branching))  # its default is a chain
        or (speculative.proposer == "suffix" and bool(config.tree))
        or tried_siblings(speculative) > 1
    )


def tried_siblings(speculative: Speculative) -> int:
    """The most children of one draft node that speculative sampling tries one after another:
    a draft model's tree branching (recursive rejection sampling, Jeon et al., 2024), else 1
    (chains, and deterministic trees, whose children one draw of the target decides among)."""
    if speculative.proposer != "draft":
        return 1
    return max(speculative.resolved().branching, default=1)


def make_proposer(speculative: Speculative, target) -> Proposer:
    """A fresh proposer for ``speculative`` driving ``target`` (loads a draft model and checks
    its vocabulary against the target's before any forward)."""
    from decodekit.speculative.draft_model import (
        DraftModelProposer,
        check_vocabulary,
        load_draft_model,
    )
    from decodekit.speculative.ngram import PromptLookupProposer
    from decodekit.speculative.recycling import TokenRecyclingProposer
    from decodekit.speculative.suffix import SuffixTreeProposer

    config = speculative.resolved()
    if speculative.proposer == "ngram":
        return PromptLookupProposer(config)
    if speculative.proposer == "suffix":
        return SuffixTreeProposer(config)
    if speculative.proposer == "recycling":
        if config.top_k > target.vocab_size:
            raise ConfigError("speculative.config.top_k", config.top_k, f"at most the vocabulary size {target.vocab_size}")
        return TokenRecyclingProposer(config, target.vocab_size)
    if target.is_encoder_decoder:
        raise ConfigError("speculative.proposer", "draft", "a decoder-only target model")
    draft = load_draft_model(config, getattr(target, "device", "cpu"))
    check_vocabulary(target.vocab_size, draft)
    return DraftModelProposer(config, draft)


def speculative_run(
    model,
    prompts: list[list[int]],
    strategy: Any,
    options: DecodeOptions,
    proposer: Proposer,
    *,
    generators: tuple[torch.Generator | None, ...] = (),
    stop_check=None,
    constraint=None,
) -> SpeculativeDecoding:
    """A :class:`SpeculativeDecoding` of ``prompts`` with ``strategy`` (Greedy or Sampling);
    ``generators``: one per prompt; ``constraint``: a
    :class:`~decodekit.constraints.processor.ConstraintProcessor` (chain drafts only). Run it
    with ``run()`` or step it with ``steps()``."""
    from decodekit.engine.checks import check_prompts

    check_supported(strategy, options)
    strategy.validate()
    options.validate(model.vocab_size)
    check_prompts(model, prompts, options)
    check_target(model, strategy, options)
    eos = options.eos(model.eos_token_ids)
    sampling = getattr(strategy, "name", "") == "sample"
    warp = strategy_warp(strategy)
    return SpeculativeDecoding(
        model,
        prompts,
        proposer,
        processors=row_processors(model, prompts, options),
        constraint=constraint,
        width=strategy.n if sampling else 1,
        max_new_tokens=options.max_new_tokens,
        eos=eos,
        warp=warp,
        generators=generators,
        stop_check=stop_check,
        siblings=tried_siblings(strategy.speculative) if sampling else 1,
    )


def strategy_warp(strategy: Any) -> Warp | None:
    """The sampler speculative sampling verifies with: ``strategy``'s warpers as one callable
    ``(rows, vocab) -> (rows, vocab)``; None for greedy."""
    if getattr(strategy, "name", "") != "sample":
        return None
    warpers = strategy.warpers()
    return (lambda logits: warpers(None, logits)) if len(warpers) else (lambda logits: logits)


def row_processors(model, prompts: list[list[int]], options: DecodeOptions):
    """The logits processors ``options`` ask for, for rows of ``prompts`` decoded together
    (their histories padded to the longest prompt; encoder-decoder: the decoder's)."""
    prompt_pad = 1 if model.is_encoder_decoder else max(len(p) for p in prompts)
    return options.processors(prompt_pad, options.eos(model.eos_token_ids), model.vocab_size)


def speculative_decode(
    model,
    prompts: list[list[int]],
    strategy: Any,
    options: DecodeOptions,
    proposer: Proposer,
    *,
    generator: torch.Generator | None = None,
    stop_check=None,
) -> tuple[list[list[Hypothesis]], list[SpeculationStats]]:
    """Decode ``prompts`` with ``strategy`` (Greedy or Sampling) speculatively, outside any
    engine (``generator`` serves every prompt). Returns each prompt's hypotheses (as the plain
    engine would) and its acceptance statistics."""
    generators = (generator,) * len(prompts) if generator is not None else ()
    return speculative_run(
        model, prompts, strategy, options, proposer, generators=generators, stop_check=stop_check
    ).run()
