"""One-call helpers over a private :class:`~decodekit.engine.core.Engine`: decode a batch of
token-id prompts with one strategy and wait. The same loop as every other request."""

from __future__ import annotations

import torch

from decodekit.engine.core import Engine
from decodekit.engine.request import Request
from decodekit.model.base import LanguageModel
from decodekit.options import DecodeOptions
from decodekit.search.base import Hypothesis, Strategy


class Decoding:
    """Decode ``prompts`` together (one group: one prefill, one search over all their rows).
    ``generator`` (optional) serves every prompt; ``seeds`` gives each prompt its own seed
    instead. :meth:`results` runs to the end and returns each prompt's hypotheses."""

    def __init__(
        self,
        model: LanguageModel,
        prompts: list[list[int]],
        strategy: Strategy,
        options: DecodeOptions,
        *,
        stop_check=None,
        generator: torch.Generator | None = None,
        search_context: dict | None = None,
        processors: list | None = None,
        seeds: list[int | None] | None = None,
    ):
        self.engine = Engine(model)
        extra = list(processors or [])
        context = dict(search_context or {})
        if generator is not None:
            context["generators"] = (generator,) * len(prompts)
        seeds = seeds or [None] * len(prompts)
        # one factory for all prompts: they form one group, whose rows the processors follow
        factory = (lambda: extra) if extra else None
        requests = [
            Request(
                list(prompt),
                strategy,
                options,
                seed=seed,
                processors=factory,
                stop_check=stop_check,
                search_context=context,
            )
            for prompt, seed in zip(prompts, seeds)
        ]
        self.extra_processors = extra
        self.handles = self.engine.submit(requests)

    def results(self) -> list[list[Hypothesis]]:
        return [handle.result().hypotheses for handle in self.handles]


def decode(
    model: LanguageModel,
    prompts: list[list[int]],
    strategy: Strategy,
    options: DecodeOptions | None = None,
    **kwargs,
) -> list[list[Hypothesis]]:
    """Decode ``prompts`` (token ids) and return each prompt's hypotheses, best first."""
    return Decoding(model, prompts, strategy, options or DecodeOptions(), **kwargs).results()
