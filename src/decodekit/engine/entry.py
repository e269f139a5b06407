"""A submitted request's checks and the entry it queues as (:meth:`Engine.submit
<decodekit.engine.core.Engine.submit>`): every setting checked before any model call."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from decodekit.engine.checks import check_group, check_prompts
from decodekit.engine.group import PlainGroup
from decodekit.engine.limits import check_memory
from decodekit.engine.request import Request, RequestHandle
from decodekit.errors import ConfigError


def resolved(model, request: Request) -> Request:
    """The request with a ``max_length`` turned into its own ``max_new_tokens``."""
    options = request.options
    if getattr(options, "max_length", None) is None:
        return request
    options.validate(model.vocab_size)
    if not isinstance(request.prompt, Sequence):
        return request  # refused by check_prompts in queued_entry
    return dataclasses.replace(request, options=options.for_prompt(len(request.prompt), model.is_encoder_decoder))


def queued_entry(model, handles: list[RequestHandle]):
    """What ``handles`` (one group's requests) queue as: a :class:`PlainGroup`, or the handles
    themselves for a speculative group; every setting checked, before any model call."""
    first = handles[0].request
    strategy, options = first.strategy, first.options
    if not hasattr(strategy, "begin") or not hasattr(strategy, "validate"):
        raise ConfigError("strategy", strategy, "a strategy config object (Greedy(), Sampling(...), BeamSearch(...), ...)")
    if not hasattr(options, "validate"):
        raise ConfigError("options", options, "a DecodeOptions object")
    prompts = [h.request.prompt for h in handles]
    if getattr(strategy, "speculative", None) is not None:
        from decodekit.speculative import check_supported

        check_supported(strategy, options)
        if options.guidance_scale != 1.0:
            raise ConfigError("guidance_scale", options.guidance_scale, "1 with speculative decoding (the unconditional rows cannot follow a draft)")
        strategy.validate()
        options.validate(model.vocab_size)
        check_prompts(model, prompts, options)
        check_memory(model, strategy, prompts, options)
        from decodekit.speculative import check_target, drafts_trees

        check_target(model, strategy, options)

        if first.stopping is not None:
            raise ConfigError("stopping", first.stopping, "None with speculative decoding (custom stopping criteria run with plain decoding)")
        if first.processors is not None and drafts_trees(strategy.speculative):
            raise ConfigError("constraint", "...", "chain drafts with speculative decoding (ngram, draft, suffix without tree, recycling with no branching above 1): tree drafts are not supported with a constraint")
        config = strategy.speculative.resolved()
        if strategy.speculative.proposer == "recycling" and config.top_k > model.vocab_size:
            raise ConfigError("speculative.config.top_k", config.top_k, f"at most the vocabulary size {model.vocab_size}")
        return handles
    strategy.validate()
    options.validate(model.vocab_size)
    check_prompts(model, prompts, options)
    check_memory(model, strategy, prompts, options)
    if options.dry_multiplier > 0 and any(isinstance(b, str) for b in options.dry_sequence_breakers):
        raise ConfigError("dry_sequence_breakers", options.dry_sequence_breakers, "token ids here (Decoder.generate resolves strings with its tokenizer)")
    group = PlainGroup(model, handles)
    check_group(model, group)
    if options.max_time is not None and not hasattr(group.search, "time_out"):
        raise ConfigError("max_time", options.max_time, f"None with {strategy.name!r}: a time limit ends per-row strategies (greedy, sample) only")
    if first.stopping is not None and not group.search.supports_stop_strings:
        raise ConfigError("stopping", first.stopping, f"None with {strategy.name!r}: stopping criteria end single rows of per-row strategies (greedy, sample)")
    ends_at_stop = group.search.supports_stop_strings or getattr(group.search, "ends_candidates_at_stop_strings", False)
    if options.stop and not ends_at_stop:
        raise ConfigError("stop", options.stop, f"stop strings work with greedy, sample and beam, not {strategy.name!r}; use EOS ids")
    return group
