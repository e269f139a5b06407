"""The public surface: :class:`Decoder` (``generate``, ``stream``, ``submit``, ``score``);
:func:`~decodekit.loading.load` builds one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from decodekit.engine import Engine, Request, RequestOutput
from decodekit.errors import ConfigError, InputError
from decodekit.generation_config import GenerationDefaults
from decodekit.logits.custom import user_hooks
from decodekit.model.base import LanguageModel
from decodekit.options import DecodeOptions
from decodekit.pending import Pending
from decodekit.results import (
    GeneratedSequence,
    GenerationResult,
    ScoredContinuation,
    StreamEvent,
    TokenLogprob,
)
from decodekit.search.base import Hypothesis, Strategy
from decodekit.search.beam import BeamSearch
from decodekit.search.constrained_beam import ConstrainedBeamSearch
from decodekit.search.context_aware import ContextAwareDecoding
from decodekit.search.diverse import DiverseBeamSearch
from decodekit.search.dola import DoLa
from decodekit.search.momentum import MomentumDecoding
from decodekit.search.sampling import Greedy, Sampling
from decodekit.search.stochastic_beam import StochasticBeamSearch
from decodekit.stopping import StopStrings
from decodekit.validation import is_integer

STRATEGIES: dict[str, type] = {
    "greedy": Greedy,
    "sample": Sampling,
    "beam": BeamSearch,
    "diverse_beam": DiverseBeamSearch,
    "stochastic_beam": StochasticBeamSearch,
    "context_aware": ContextAwareDecoding,
    "momentum": MomentumDecoding,
    "dola": DoLa,
    "constrained_beam": ConstrainedBeamSearch,
}
"""Strategy name -> config class; other modules register theirs here."""

Prompt = str | Sequence[int]


def make_strategy(strategy: str | Strategy, **settings: Any) -> Strategy:
    """A strategy from its name and settings, or the config object itself."""
    if not isinstance(strategy, str):
        if settings:
            raise ConfigError("strategy", strategy, "settings go into the config object, not beside it")
        if not all(callable(getattr(strategy, name, None)) for name in ("validate", "begin")):
            raise ConfigError("strategy", strategy, f"a strategy name ({', '.join(sorted(STRATEGIES))}) or config object (Greedy(), Sampling(...), ...)")
        return strategy
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", strategy, f"one of {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[strategy]
    known = {f.name for f in dataclasses.fields(cls)}
    for key in settings:
        if key not in known:
            raise ConfigError(key, settings[key], f"a setting of {strategy!r}: one of {', '.join(sorted(known))}")
    return cls(**settings)


def make_options(options: DecodeOptions | None, settings: dict[str, Any]) -> DecodeOptions:
    if options is not None and settings:
        raise ConfigError("options", options, "either an options object or keyword settings, not both")
    if options is not None:
        if not isinstance(options, DecodeOptions):
            raise ConfigError("options", options, "a decodekit.DecodeOptions object, or keyword settings")
        return options
    known = {f.name for f in dataclasses.fields(DecodeOptions)}
    for key in settings:
        if key not in known:
            raise ConfigError(key, settings[key], f"a decoding option: one of {', '.join(sorted(known))}")
    if isinstance(settings.get("stop"), str):  # one stop string, not its characters
        settings = {**settings, "stop": (settings["stop"],)}
    tupled = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v for k, v in settings.items()}
    return DecodeOptions(**tupled)


class Decoder:
    """A model (and optionally its tokenizer) ready to decode."""

    def __init__(self, model: LanguageModel, tokenizer=None, name: str | None = None, defaults: GenerationDefaults | None = None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.defaults = defaults or GenerationDefaults()
        """What the checkpoint's generation_config asks for (see :mod:`decodekit.generation_config`)."""
        self.engine = Engine(model)
        if tokenizer is not None and len(tokenizer) > model.vocab_size:
            raise InputError(
                f"tokenizer: its vocabulary has {len(tokenizer)} tokens but the model's logits cover "
                f"{model.vocab_size}; use the tokenizer the model was trained with"
            )

    # -- text <-> ids -----------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt: text (needs the tokenizer) or a sequence of token ids."""
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("prompt: an empty string; give at least one character")
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError("prompt: text with a lone surrogate (not valid Unicode)") from None
            if self.tokenizer is None:
                raise InputError("prompt: text needs a tokenizer; pass token ids or load() one")
            ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        elif isinstance(prompt, bytes | bytearray):
            raise InputError("prompt: bytes; decode them to a str, or pass a list of token ids")
        else:
            if isinstance(prompt, torch.Tensor | np.ndarray):
                if prompt.ndim != 1:
                    raise InputError(f"prompt: a {prompt.ndim}-D array; one prompt is a 1-D sequence of token ids")
                prompt = prompt.tolist()
            if not isinstance(prompt, Sequence):
                raise InputError(f"prompt: {type(prompt).__name__}; give text or a list of token ids")
            for i, token in enumerate(prompt):
                if not is_integer(token):
                    raise InputError(f"prompt: item {i} is {token!r}; token ids are integers")
            ids = [int(i) for i in prompt]
        if not ids:
            raise InputError("prompt: no tokens; give at least one token")
        return ids

    def decode_text(self, ids: list[int]) -> str | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _prompts(self, prompts: Prompt | Sequence[Prompt]) -> tuple[list, bool]:
        if isinstance(prompts, torch.Tensor | np.ndarray):
            if prompts.ndim not in (1, 2):
                raise InputError(f"prompts: a {prompts.ndim}-D array; give a 1-D (one prompt) or 2-D (a batch) array of token ids")
            prompts = prompts.tolist() if prompts.ndim == 2 else [prompts.tolist()][0]
            if prompts and is_integer(prompts[0]):
                return [prompts], True
        if isinstance(prompts, bytes | bytearray) or not isinstance(prompts, str | Sequence):
            raise InputError(f"prompts: {type(prompts).__name__}; give text, token ids, or a list of them")
        single = isinstance(prompts, str) or (len(prompts) > 0 and not isinstance(prompts[0], str | Sequence | torch.Tensor | np.ndarray))
        items = [prompts] if single else list(prompts)
        if not items:
            raise InputError("prompts: an empty list; give at least one prompt")
        return items, single

    def _requests(self, items, strategy, options, settings, seed=None, constraint=None, stream=False, custom=None) -> tuple[list[Request], StopStrings | None]:
        """One engine request per prompt, all sharing the call's settings (one group).
        ``custom``: ``(processors, stopping, prefix_allowed_tokens_fn)`` given by the user."""
        strategy = make_strategy(strategy if strategy is not None else (self.defaults.strategy or "greedy"))
        if options is None and self.defaults.options:
            given = set(settings)
            defaults = dict(self.defaults.options)
            if given & {"max_new_tokens", "max_length"}:  # an explicit length replaces the default one
                defaults.pop("max_new_tokens", None), defaults.pop("max_length", None)
            settings = {**defaults, **settings}
        options = make_options(options, settings)
        strategy.validate()  # the engine checks again; here it precedes building stop strings
        options.validate(self.model.vocab_size)
        options = self._with_negative_ids(self._with_breakers(options))
        user, stopping = user_hooks(strategy, *(custom or (None, None, None)))
        factory = None
        if constraint is not None or user:
            from decodekit.constraints import constraint_processor

            eos = options.eos(self.model.eos_token_ids)
            name, tokenizer, vocab = strategy.name, self.tokenizer, self.model.vocab_size

            def factory():
                compiled = []
                if constraint is not None:
                    compiled.append(constraint_processor(constraint, name, tokenizer, vocab, eos, options.max_new_tokens, options.min_new_tokens))
                return compiled + user

            factory()  # compile now: a bad constraint raises before any model call
        if options.stop and self.tokenizer is None:
            raise ConfigError("stop", options.stop, "stop strings need a tokenizer")
        stop = StopStrings(self.tokenizer, options.stop, keep=options.include_stop_str_in_output) if options.stop else None
        context = {}  # (a seed of None: the engine takes the strategy's, see request_seed)
        if hasattr(self.model, "input_embeddings"):
            context["input_embeddings"] = self.model.input_embeddings
        if self.tokenizer is not None:
            context["decode"] = self.decode_text
        requests = [
            Request(
                self.encode(p), strategy, options, seed=seed, processors=factory, stop_check=stop, search_context=context, stream=stream,
                stopping=stopping, index=i,
            )
            for i, p in enumerate(items)
        ]
        return requests, stop

    def _with_breakers(self, options: DecodeOptions) -> DecodeOptions:
        """DRY's string sequence breakers as token ids (cached per set of strings)."""
        if options.dry_multiplier == 0 or all(not isinstance(b, str) for b in options.dry_sequence_breakers):
            return options
        key = options.dry_sequence_breakers
        cache = self.__dict__.setdefault("_breakers", {})
        if key not in cache:
            cache[key] = options.with_breaker_ids(self.tokenizer).dry_sequence_breakers
        return dataclasses.replace(options, dry_sequence_breakers=cache[key])

    def _with_negative_ids(self, options: DecodeOptions) -> DecodeOptions:
        """A text negative prompt (classifier-free guidance) as token ids."""
        if not isinstance(options.negative_prompt, str) or not options.negative_prompt:
            return options
        return dataclasses.replace(options, negative_prompt=tuple(self.encode(options.negative_prompt)))

    # -- scoring ----------------------------------------------------------------------------

    def score(self, prompts: Prompt | Sequence[Prompt], continuations: Prompt | Sequence[Prompt]) -> ScoredContinuation | list[ScoredContinuation]:
        """The per-token log-probs of given continuations (text or token ids) after their
        prompts: one batched forward, the model's raw distribution (no processors). One
        prompt and one continuation give one result; lists give one per pair."""
        from decodekit.teacher import score

        return score(self, prompts, continuations)

    def prompt_logprobs(self, prompt_ids: Sequence[int], top: int = 0) -> list:
        """Each prompt token's log-prob given the ones before it (None for the first) and the
        ``top`` most likely alternatives there (:func:`decodekit.teacher.prompt_logprobs`)."""
        from decodekit.teacher import prompt_logprobs

        return prompt_logprobs(self, list(prompt_ids), top)

    # -- test-time search -------------------------------------------------------------------

    def search(self, prompt: Prompt, strategy="best_of_n", reward=None, *, max_new_tokens: int = 128, stop: Sequence[str] = (), seed: int = 0):
        """Search for the completion of ``prompt`` that ``reward`` likes best, spending more
        decoding work than one sample: ``strategy`` is a search config
        (:class:`~decodekit.testtime.BestOfN`, ``RewardBeamSearch``, ``DVTS``,
        ``AStarDecoding``, ``MCTS``, ``FirstFinishSearch``, ``DeAL``) or its name; ``reward``
        an :class:`~decodekit.testtime.ExecutableReward`, ``OutcomeReward``,
        ``ProcessReward``, ``ClassifierPRM`` or a callable ``(prompt, completion) -> float``.
        Branches share their prefix's cache; the same ``seed`` gives the same search.
        Returns a :class:`~decodekit.testtime.SearchResult` (best, candidates, compute)."""
        from decodekit.testtime.search import run_search

        return run_search(self, prompt, strategy, reward, max_new_tokens=max_new_tokens, stop=stop, seed=seed)

    # -- generate / stream ------------------------------------------------------------------

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        strategy: str | Strategy | None = None,
        *,
        options: DecodeOptions | None = None,
        seed: int | None = None,
        constraint=None,
        processors: Sequence | None = None,
        stopping: Sequence | None = None,
        prefix_allowed_tokens_fn=None,
        **settings: Any,
    ) -> GenerationResult | list[GenerationResult]:
        """Decode one prompt (text or token ids) or a list of them.

        ``strategy``: a config object (``Greedy()``, ``Sampling(...)``, ``BeamSearch(...)``, ...)
        or a name with default settings; None: what the checkpoint's generation_config asks
        for, else greedy. ``settings`` are :class:`DecodeOptions` fields
        (``max_new_tokens=32``, ``stop=["\\n\\n"]``, ...). ``constraint``: a
        :mod:`decodekit.constraints` spec (``JsonSchema``, ``Regex``, ``Grammar``, ``Catalog``,
        ``CorpusSubstring``) every output must satisfy. ``seed`` seeds each prompt's own
        generator, so a prompt's output does not depend on the others. ``processors``: extra
        processors (decodekit callables ``(token_ids, scores) -> scores`` that ignore ``-1``
        padding, or transformers ``LogitsProcessor`` objects), applied after the options'
        processors; ``stopping``: stopping criteria (transformers ``StoppingCriteria`` or
        callables ``(token_ids, scores) -> (rows,) bool``; per-row strategies);
        ``prefix_allowed_tokens_fn``: transformers' ``(batch_id, input_ids) -> allowed ids``.
        Returns one
        :class:`GenerationResult` per prompt (a single one for a single prompt). Safe to call
        from many threads at once: every call's prompts join the decoder's one engine.
        """
        items, single = self._prompts(prompts)
        from decodekit.testtime.decode import is_tree_strategy

        if is_tree_strategy(strategy):  # contrastive search, AdaDec, OPERA: a search tree per prompt
            from decodekit.testtime.decode import generate

            hooks = {"constraint": constraint, "processors": processors, "stopping": stopping, "prefix_allowed_tokens_fn": prefix_allowed_tokens_fn}
            results = generate(self, items, strategy, make_options(options, settings), seed, hooks)
            return results[0] if single else results
        pending = self.submit(
            items, strategy, options=options, seed=seed, constraint=constraint, processors=processors, stopping=stopping,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, **settings,
        )
        results = [p.result() for p in pending]
        return results[0] if single else results

    def submit(
        self,
        prompts: Sequence[Prompt],
        strategy: str | Strategy | None = None,
        *,
        options: DecodeOptions | None = None,
        seed: int | None = None,
        constraint=None,
        stream: bool = False,
        processors: Sequence | None = None,
        stopping: Sequence | None = None,
        prefix_allowed_tokens_fn=None,
        **settings: Any,
    ) -> list[Pending]:
        """Submit a list of prompts to the engine without waiting; one :class:`Pending` per
        prompt (``result()`` waits, ``events()`` streams, ``abort()`` stops). Every setting is
        checked here, before any model call."""
        items, _ = self._prompts(prompts)
        custom = (processors, stopping, prefix_allowed_tokens_fn)
        paired = isinstance(strategy, ContextAwareDecoding)
        if paired:  # each prompt decodes as two rows: with the context, and alone
            strategy.validate()
            if stream:
                raise ConfigError("stream", True, f"not with {strategy.name!r} (two rows per prompt); use generate")
            items_in = [x for item in items for x in strategy.pair(item, self.encode)]
        requests, stop = self._requests(items_in if paired else items, strategy, options, settings, seed, constraint, stream=stream, custom=custom)
        chosen = requests[0].options if requests else None
        if chosen is not None and (chosen.output_scores or chosen.output_logits) and (paired or isinstance(requests[0].strategy, DoLa)):
            name = "output_scores" if chosen.output_scores else "output_logits"
            raise ConfigError(name, True, f"False with {requests[0].strategy.name!r}: its scores combine two rows or two layers, which a replay of the model's logits does not reproduce")
        if chosen is not None and (chosen.output_scores or chosen.output_logits) and chosen.guidance_scale != 1.0:
            raise ConfigError("output_scores" if chosen.output_scores else "output_logits", True, "False with guidance_scale (the unconditional rows are not replayed)")
        handles = self.engine.submit(requests)
        if paired:
            requests, handles = requests[0::2], handles[0::2]
        return [Pending(self, item, request, handle, stop) for item, request, handle in zip(items, requests, handles)]

    def _result(self, item, request: Request, output: RequestOutput, stop) -> GenerationResult:
        review = next((p.review for p in output.processors if hasattr(p, "review")), None)
        sequences = [self._sequence(h, stop, review) for h in output.hypotheses]
        if request.options.output_scores or request.options.output_logits:
            from decodekit.teacher import path_scores

            full = path_scores(self, request, output, [s.token_ids for s in sequences])
            sequences = [
                dataclasses.replace(s, logits=logits if request.options.output_logits else None, scores=scores if request.options.output_scores else None)
                for s, (logits, scores) in zip(sequences, full)
            ]
        return GenerationResult(
            prompt=item if isinstance(item, str) else None,
            prompt_token_ids=request.prompt,
            sequences=sequences,
            strategy=request.strategy.name,
            stats=output.stats,
        )

    def _sequence(self, h: Hypothesis, stop: StopStrings | None, review=None) -> GeneratedSequence:
        text = self.decode_text(h.token_ids)
        if text is not None and stop is not None and h.finish_reason == "stop":
            text = stop.trim(text)
        top = None
        if h.top_logprobs is not None:
            top = [[TokenLogprob(i, lp, self.decode_text([i])) for i, lp in zip(ids, lps)] for ids, lps in h.top_logprobs]
        sequence = GeneratedSequence(h.token_ids, text, h.token_logprobs, h.logprob, h.score, h.finish_reason, h.group, top_logprobs=top, inclusion=h.inclusion)
        return review(sequence) if review is not None else sequence

    def stream(
        self,
        prompt: Prompt,
        strategy: str | Strategy | None = None,
        *,
        options: DecodeOptions | None = None,
        seed: int | None = None,
        constraint=None,
        processors: Sequence | None = None,
        stopping: Sequence | None = None,
        prefix_allowed_tokens_fn=None,
        **settings: Any,
    ) -> Iterator[StreamEvent]:
        """Yield :class:`StreamEvent` s as tokens are decided: per generated token for greedy
        and sampling (with ``n`` samples, ``event.row`` tells them apart; speculative decoding
        yields each accepted block's tokens), the current best hypothesis per step for beam
        searches, then their final n-best. Leaving the loop early aborts the request."""
        (pending,) = self.submit(
            [prompt], strategy, options=options, seed=seed, constraint=constraint, stream=True, processors=processors,
            stopping=stopping, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, **settings,
        )
        try:
            yield from pending.events()
        finally:
            if not pending.done:
                pending.abort()
