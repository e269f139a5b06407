"""The decoding loop: the one place that drives a model.

Per step: the model's logits -> (log-softmax for beam search) -> processors -> the strategy's
:class:`~decodekit.search.base.Step` -> the model advances rows by ``(parents, tokens)``. One
host sync per step (the ``done`` flag together with the NaN check); no per-row Python except
for stop strings, which need text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from decodekit.errors import ConfigError, InputError, NumericalError
from decodekit.model.base import LanguageModel
from decodekit.options import DecodeOptions
from decodekit.search.base import Hypothesis, SearchContext, Step, Strategy

StopCheck = Callable[[torch.Tensor], torch.Tensor]
"""``(rows, generated)`` token ids -> ``(rows,)`` bool: rows whose text now holds a stop string."""


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
    room = model.max_length - longest
    if options.max_new_tokens > room:
        raise ConfigError(
            "max_new_tokens",
            options.max_new_tokens,
            f"at most {room}: the model attends over {model.max_length} tokens and the longest prompt has {longest}",
        )


class Decoding:
    """One decoding call. Iterate it to run step by step (each item is the step's
    :class:`Step`); :meth:`results` runs it to the end and returns each prompt's hypotheses."""

    def __init__(
        self,
        model: LanguageModel,
        prompts: list[list[int]],
        strategy: Strategy,
        options: DecodeOptions,
        *,
        stop_check: StopCheck | None = None,
        generator: torch.Generator | None = None,
        search_context: dict | None = None,
        processors: list | None = None,
    ):
        strategy.validate()
        if getattr(strategy, "speculative", None) is not None:
            raise ConfigError("speculative", strategy.speculative, "None here: speculative decoding runs through Decoder.generate()")
        options.validate(model.vocab_size)
        check_prompts(model, prompts, options)
        eos = tuple(options.eos_token_ids) if options.eos_token_ids is not None else model.eos_token_ids
        self.model, self.prompts, self.options, self.eos = model, prompts, options, eos
        self.stop_check = stop_check if options.stop else None
        device = getattr(model, "device", torch.device("cpu"))
        pad = model.pad_token_id if model.pad_token_id is not None else (eos[0] if eos else 0)
        self.context = SearchContext(
            batch_size=len(prompts),
            max_new_tokens=options.max_new_tokens,
            eos_token_ids=torch.tensor(eos, dtype=torch.long, device=device),
            pad_token_id=int(pad),
            device=device,
            generator=generator,
            **(search_context or {}),
        )
        self.search = strategy.begin(self.context)
        if options.stop and not self.search.supports_stop_strings:
            raise ConfigError("stop", options.stop, f"stop strings work with per-row strategies (greedy, sample), not {strategy.name!r}; use EOS ids")
        self.extra_processors = list(processors or [])
        self._finished = False

    def __iter__(self) -> Iterator[Step]:
        model, options, search = self.model, self.options, self.search
        state = model.start(self.prompts, options.max_new_tokens)
        prompt_length = state.prompt_length
        if search.width > 1:
            model.select(state, torch.arange(len(self.prompts), device=state.logits.device).repeat_interleave(search.width))
        history = self._history(prompt_length, state.logits.device, search.width)
        processors = options.processors(prompt_length, self.eos, model.vocab_size)
        processors.processors.extend(self.extra_processors)
        stateful = processors.stateful
        for processor in stateful:
            processor.reset(state.rows)
        for t in range(options.max_new_tokens):
            logits = state.logits
            # NaN, +inf, or a row with no possible token; -inf alone is a legitimate "never".
            # Subtle: a row's max is NaN if any entry is NaN, so one reduction covers all three.
            nonfinite = ~torch.isfinite(logits.amax(-1))
            scores = logits.log_softmax(-1) if search.scores_are_logprobs else logits.clone()
            if len(processors):
                scores = processors(history[:, : prompt_length + t], scores)
            step = search.step(scores, t)
            if step.parents is not None:
                history = history.index_select(0, step.parents)
            history[:, prompt_length + t] = step.tokens
            for processor in stateful:
                processor.advance(step.parents, step.tokens)
            done = step.done
            if self.stop_check is not None:
                done = search.stop_rows(self.stop_check(history[:, prompt_length : prompt_length + t + 1]))
            bad_any, done_now = torch.stack([nonfinite.any(), done]).tolist()  # the one sync per step
            if bad_any:
                row = int(nonfinite.nonzero()[0])
                raise NumericalError(step=t, row=row)
            yield step
            if done_now or t + 1 == options.max_new_tokens:
                break
            model.advance(state, step.parents, step.tokens)
        self._finished = True

    def _history(self, prompt_length: int, device: torch.device, width: int) -> torch.Tensor:
        """``(rows, prompt_length + max_new)`` token ids the processors see; padding is -1."""
        total = prompt_length + self.options.max_new_tokens
        history = torch.full((len(self.prompts), total), -1, dtype=torch.long)
        for row, prompt in enumerate(self.prompts):
            if self.model.is_encoder_decoder:
                history[row, 0] = int(self.model.decoder_start_token_id)
            else:
                history[row, prompt_length - len(prompt) : prompt_length] = torch.tensor(prompt)
        return history.to(device).repeat_interleave(width, dim=0)

    def results(self) -> list[list[Hypothesis]]:
        if not self._finished:
            for _ in self:
                pass
        return self.search.finish()


def decode(
    model: LanguageModel,
    prompts: list[list[int]],
    strategy: Strategy,
    options: DecodeOptions | None = None,
    **kwargs,
) -> list[list[Hypothesis]]:
    """Decode ``prompts`` (token ids) and return each prompt's hypotheses, best first."""
    return Decoding(model, prompts, strategy, options or DecodeOptions(), **kwargs).results()
