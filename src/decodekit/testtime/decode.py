"""``Decoder.generate`` for the decoding methods that run on a search tree without a reward:
contrastive search, AdaDec and OPERA (each step forwards several candidates of one row, which
the engine's strategy contract does not do). Each prompt is searched in turn; the result is the
same :class:`~decodekit.results.GenerationResult` every strategy returns."""

from __future__ import annotations

import dataclasses

from decodekit.errors import ConfigError
from decodekit.options import DecodeOptions
from decodekit.results import GeneratedSequence, GenerationResult
from decodekit.testtime.adadec import AdaDec
from decodekit.testtime.contrastive import ContrastiveSearch
from decodekit.testtime.opera import OPERA

TREE_STRATEGIES = {s.name: s for s in (ContrastiveSearch, AdaDec, OPERA)}
ALLOWED = ("max_new_tokens", "stop")
"""The options these methods take; every other option is refused rather than ignored."""
PROCESSOR_OPTIONS = (
    "repetition_penalty", "no_repeat_ngram_size", "bad_words", "suppress_tokens", "begin_suppress_tokens", "min_new_tokens",
    "min_length", "logit_bias", "sequence_bias", "presence_penalty", "frequency_penalty", "dry_multiplier", "dry_base",
    "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "encoder_repetition_penalty", "encoder_no_repeat_ngram_size",
    "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty", "renormalize_logits", "force_eos_at_max_length",
)
"""Options that only shape the logits: contrastive search applies them (as transformers did)."""


def is_tree_strategy(strategy) -> bool:
    return isinstance(strategy, tuple(TREE_STRATEGIES.values())) or (isinstance(strategy, str) and strategy in TREE_STRATEGIES)


def generate(decoder, items: list, strategy, options: DecodeOptions, seed: int | None, hooks: dict) -> list[GenerationResult]:
    """Decode each prompt of ``items`` with a tree strategy (a config or its name)."""
    from decodekit.testtime.search import make_search, run_search

    strategy = make_search(strategy)
    for name, value in hooks.items():
        if value is not None:
            raise ConfigError(name, value, f"None with {strategy.name!r} (it decodes on a search tree without processors or constraints)")
    defaults = DecodeOptions()
    allowed = ALLOWED + (PROCESSOR_OPTIONS if getattr(strategy, "takes_processors", False) else ())
    for f in dataclasses.fields(DecodeOptions):
        if f.name not in allowed and getattr(options, f.name) != getattr(defaults, f.name):
            raise ConfigError(f.name, getattr(options, f.name), f"its default with {strategy.name!r}: it takes {', '.join(allowed)} only")
    options.validate(decoder.model.vocab_size)
    if options.dry_multiplier > 0:
        options = decoder._with_breakers(options)
    out = []
    for item in items:
        found = run_search(decoder, item, strategy, None, max_new_tokens=options.max_new_tokens, stop=options.stop, seed=seed or 0, options=options)
        ranked = found.candidates or [found.best]
        sequences = [
            GeneratedSequence(
                c.token_ids, decoder.decode_text(c.token_ids) if decoder.tokenizer is None else c.text, list(c.token_logprobs), c.logprob,
                c.reward if c.reward is not None else c.logprob, c.finish_reason,
            )
            for c in ranked
        ]
        out.append(GenerationResult(item if isinstance(item, str) else None, decoder.encode(item), sequences, strategy.name))
    return out
