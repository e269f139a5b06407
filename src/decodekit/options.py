"""Settings shared by every strategy: lengths, EOS, stop strings and the processors."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decodekit import validation as v
from decodekit.errors import ConfigError, check
from decodekit.logits.base import ProcessorList
from decodekit.logits.bias import DRY, LogitBias, PresenceFrequencyPenalty, SequenceBias
from decodekit.logits.forcing import (
    BeginSuppress,
    ExponentialDecayLength,
    ForceEOS,
    ForceTokens,
    MinLength,
    Renormalize,
)
from decodekit.logits.penalties import (
    BadWords,
    MinNewTokens,
    NoRepeatNGram,
    RepetitionPenalty,
    SuppressTokens,
)
from decodekit.logits.prompt import EncoderNoRepeatNGram, EncoderRepetitionPenalty

DRY_BREAKERS = ("\n", ":", '"', "*")
"""llama.cpp's default DRY sequence breakers."""


@dataclass(frozen=True)
class DecodeOptions:
    """Settings every strategy takes. Lengths: ``max_new_tokens``/``min_new_tokens`` bound the
    generated tokens (EOS included); ``max_length``/``min_length`` bound the whole sequence
    (prompt, or decoder start token, plus generated tokens; transformers' meaning; the tighter
    bound wins). ``max_time``: seconds a request may decode before it ends (finish reason
    ``time``). ``eos_token_ids``: tokens that end a sequence (None: the model's);
    ``stop_token_ids``: more tokens that end it, added to those. ``stop``: strings that end a
    sequence (per-row strategies), cut from the returned text unless
    ``include_stop_str_in_output``. ``top_logprobs``: the N most likely tokens and their
    log-probs at every generated position (:attr:`GeneratedSequence.top_logprobs`).

    Processors (applied in transformers' order: sequence/logit bias, encoder repetition
    penalty, repetition penalty, presence/frequency penalties, DRY, no-repeat n-grams, encoder
    no-repeat n-grams, bad words, minimum lengths, forced BOS/decoder prefix, forced EOS,
    exponential decay, suppressed tokens, begin-suppressed tokens, custom processors,
    renormalisation):

    - ``logit_bias``: ``{token: bias}`` added to logits (OpenAI); ``sequence_bias``:
      ``{(token, ...): bias}`` added to a sequence's last token when the rest precedes it
      (transformers);
    - ``presence_penalty``/``frequency_penalty``: subtracted once per generated token present
      / per occurrence (OpenAI, vLLM; generated tokens only);
    - ``repetition_penalty`` (CTRL), ``encoder_repetition_penalty`` (> 1 favours prompt
      tokens), ``no_repeat_ngram_size``, ``encoder_no_repeat_ngram_size`` (no n-gram of the
      prompt), ``bad_words``, ``suppress_tokens``, ``begin_suppress_tokens``;
    - ``dry_multiplier`` (0 disables), ``dry_base``, ``dry_allowed_length``,
      ``dry_penalty_last_n`` (0: the whole history), ``dry_sequence_breakers`` (strings,
      resolved with the tokenizer to the tokens containing them, or token ids): DRY;
    - ``forced_bos_token_id`` (the first generated token when the history is one token long,
      as transformers), ``decoder_prefix`` (token ids forced first), ``forced_eos_token_id``
      (ids forced at the last allowed step) or ``force_eos_at_max_length`` (the first EOS);
    - ``exponential_decay_length_penalty``: ``(start, factor)``, EOS odds growing after
      ``start`` generated tokens; ``renormalize_logits``: log-softmax after processing.
    ``guidance_scale`` / ``negative_prompt``: classifier-free guidance
    (:mod:`decodekit.logits.guidance`; 1 disables; no negative prompt: the prompt's last
    token). ``output_scores`` / ``output_logits``: every returned sequence also carries, per generated
    token, the full processed log-probabilities (the options' processors and the constraint,
    before sampling warpers) and the model's raw logits, as ``(tokens, vocab)`` tensors
    (transformers' ``output_scores`` / ``output_logits``, along each sequence's own path).
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    eos_token_ids: tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    suppress_tokens: tuple[int, ...] = ()
    bad_words: tuple[tuple[int, ...], ...] = ()
    force_eos_at_max_length: bool = False
    max_length: int | None = None
    min_length: int = 0
    max_time: float | None = None
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    top_logprobs: int = 0
    logit_bias: Mapping[int, float] | None = None
    sequence_bias: Mapping[tuple[int, ...], float] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    encoder_repetition_penalty: float = 1.0
    encoder_no_repeat_ngram_size: int = 0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 0
    dry_sequence_breakers: tuple[str | int, ...] = DRY_BREAKERS
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple[int, ...] | None = None
    decoder_prefix: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    exponential_decay_length_penalty: tuple[int, float] | None = None
    renormalize_logits: bool = False
    output_scores: bool = False
    output_logits: bool = False
    guidance_scale: float = 1.0
    negative_prompt: tuple[int, ...] | str | None = None

    def validate(self, vocab_size: int) -> None:
        v.integer("max_new_tokens", self.max_new_tokens, 1, 1 << 20)
        v.integer("min_new_tokens", self.min_new_tokens, 0, self.max_new_tokens, f"at most max_new_tokens={self.max_new_tokens}")
        if self.eos_token_ids is not None:
            v.token_ids("eos_token_ids", self.eos_token_ids, vocab_size)
        v.strings("stop", self.stop)
        v.number("repetition_penalty", self.repetition_penalty, 1e-4, 1e4, what="1 disables")
        v.integer("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, 1024, "0 disables")
        v.token_ids("suppress_tokens", self.suppress_tokens, vocab_size)
        in_vocab = f"token ids in [0, {vocab_size})"
        words = self.bad_words
        if isinstance(words, str | bytes) or not isinstance(words, Sequence):
            raise ConfigError("bad_words", words, f"a list of non-empty sequences of {in_vocab}")
        for word in words:
            try:
                v.token_ids("bad_words", word, vocab_size, empty=False)
            except ConfigError:
                raise ConfigError("bad_words", words, f"a list of non-empty sequences of {in_vocab}") from None
        v.flag("force_eos_at_max_length", self.force_eos_at_max_length)
        if self.max_length is not None:
            v.integer("max_length", self.max_length, 2, 1 << 21, "prompt plus generated tokens, or None")
        v.integer("min_length", self.min_length, 0, 1 << 21, "prompt plus generated tokens; 0 disables")
        if self.max_time is not None:
            v.number("max_time", self.max_time, 0.0, 1e6, low_open=True, what="seconds, or None")
        v.token_ids("stop_token_ids", self.stop_token_ids, vocab_size)
        v.flag("include_stop_str_in_output", self.include_stop_str_in_output)
        v.integer("top_logprobs", self.top_logprobs, 0, min(vocab_size, 1024), "0 disables")
        self._check_bias(vocab_size)
        v.number("presence_penalty", self.presence_penalty, -100.0, 100.0, what="0 disables")
        v.number("frequency_penalty", self.frequency_penalty, -100.0, 100.0, what="0 disables")
        v.number("encoder_repetition_penalty", self.encoder_repetition_penalty, 1e-4, 1e4, what="1 disables")
        v.integer("encoder_no_repeat_ngram_size", self.encoder_no_repeat_ngram_size, 0, 1024, "0 disables")
        v.number("dry_multiplier", self.dry_multiplier, 0.0, 1e4, what="0 disables")
        v.number("dry_base", self.dry_base, 1.0, 100.0)
        v.integer("dry_allowed_length", self.dry_allowed_length, 1, 1024)
        v.integer("dry_penalty_last_n", self.dry_penalty_last_n, 0, 1 << 21, "0: the whole history")
        breakers = self.dry_sequence_breakers
        if isinstance(breakers, str | bytes) or not isinstance(breakers, Sequence) or not all(
            (isinstance(b, str) and b) or (v.is_integer(b) and 0 <= b < vocab_size) for b in breakers
        ):
            raise ConfigError("dry_sequence_breakers", breakers, f"a list of non-empty strings or token ids in [0, {vocab_size})")
        if self.forced_bos_token_id is not None:
            v.integer("forced_bos_token_id", self.forced_bos_token_id, 0, vocab_size - 1, "a token id, or None")
        if self.forced_eos_token_id is not None:
            v.token_ids("forced_eos_token_id", self.forced_eos_token_id, vocab_size, empty=False)
        v.token_ids("decoder_prefix", self.decoder_prefix, vocab_size)
        if len(self.decoder_prefix) > self.max_new_tokens:
            raise ConfigError("decoder_prefix", self.decoder_prefix, f"at most max_new_tokens={self.max_new_tokens} tokens")
        v.token_ids("begin_suppress_tokens", self.begin_suppress_tokens, vocab_size)
        decay = self.exponential_decay_length_penalty
        if decay is not None:
            allowed = "a pair (start: int >= 0, factor: finite number >= 1), or None"
            if not isinstance(decay, Sequence) or isinstance(decay, str) or len(decay) != 2:
                raise ConfigError("exponential_decay_length_penalty", decay, allowed)
            try:
                v.integer("exponential_decay_length_penalty", decay[0], 0, 1 << 20)
                v.number("exponential_decay_length_penalty", decay[1], 1.0, 100.0)
            except ConfigError:
                raise ConfigError("exponential_decay_length_penalty", decay, allowed) from None
        v.flag("renormalize_logits", self.renormalize_logits)
        v.flag("output_scores", self.output_scores)
        v.number("guidance_scale", self.guidance_scale, 0.0, 1e3, low_open=True, what="1 disables")
        if isinstance(self.negative_prompt, str):
            check(bool(self.negative_prompt), "negative_prompt", self.negative_prompt, "non-empty text or token ids, or None (the prompt's last token)")
        elif self.negative_prompt is not None:
            v.token_ids("negative_prompt", self.negative_prompt, vocab_size, empty=False)
        if self.negative_prompt is not None and self.guidance_scale == 1.0:
            raise ConfigError("negative_prompt", self.negative_prompt, "None unless guidance_scale is set (it is only read by classifier-free guidance)")
        v.flag("output_logits", self.output_logits)

    def _check_bias(self, vocab_size: int) -> None:
        for name, keys_are_sequences in (("logit_bias", False), ("sequence_bias", True)):
            bias = getattr(self, name)
            if bias is None:
                continue
            what = "{(token id, ...): bias}" if keys_are_sequences else "{token id: bias}"
            allowed = f"a mapping {what} with token ids in [0, {vocab_size}) and finite biases in [-100, 100] (OpenAI's range), or None"
            if not isinstance(bias, Mapping):
                raise ConfigError(name, bias, allowed)
            for key, value in bias.items():
                ok_key = (
                    isinstance(key, tuple) and key and all(v.is_integer(k) and 0 <= k < vocab_size for k in key)
                    if keys_are_sequences
                    else v.is_integer(key) and 0 <= key < vocab_size
                )
                if not ok_key or not v.is_number(value) or not math.isfinite(value) or abs(value) > 100:
                    raise ConfigError(name, bias, allowed)

    # -- per request ------------------------------------------------------------------------

    def eos(self, model_eos: Sequence[int]) -> tuple[int, ...]:
        """The tokens that end a sequence: ``eos_token_ids`` (else the model's) plus
        ``stop_token_ids``."""
        base = tuple(self.eos_token_ids) if self.eos_token_ids is not None else tuple(model_eos)
        return base + tuple(t for t in self.stop_token_ids if t not in base)

    def for_prompt(self, prompt_length: int, encoder_decoder: bool) -> DecodeOptions:
        """These options for one prompt: a ``max_length`` becomes that prompt's
        ``max_new_tokens`` (the tighter of the two)."""
        if self.max_length is None:
            return self
        used = 1 if encoder_decoder else prompt_length  # the decoder start token, or the prompt
        room = self.max_length - used
        if room < 1:
            raise ConfigError("max_length", self.max_length, f"more than the prompt's {used} tokens (it counts prompt and generated tokens)")
        limit = min(self.max_new_tokens, room)
        return dataclasses.replace(self, max_length=None, max_new_tokens=limit, min_new_tokens=min(self.min_new_tokens, limit))

    def with_breaker_ids(self, tokenizer) -> DecodeOptions:
        """``dry_sequence_breakers`` as token ids: each string becomes every token whose text
        contains it (needs the tokenizer)."""
        if self.dry_multiplier == 0 or all(v.is_integer(b) for b in self.dry_sequence_breakers):
            return self
        strings = [b for b in self.dry_sequence_breakers if isinstance(b, str)]
        if tokenizer is None:
            raise ConfigError("dry_sequence_breakers", self.dry_sequence_breakers, "token ids (strings need a tokenizer)")
        ids = set(b for b in self.dry_sequence_breakers if v.is_integer(b))
        for token in range(len(tokenizer)):
            text = tokenizer.decode([token])
            if any(s in text for s in strings):
                ids.add(token)
        return dataclasses.replace(self, dry_sequence_breakers=tuple(sorted(ids)))

    # -- processors -------------------------------------------------------------------------

    def processors(
        self,
        prompt_length: int,
        eos_token_ids: tuple[int, ...],
        vocab_size: int,
        *,
        encoder_ids: torch.Tensor | None = None,
        extra: Sequence[Any] = (),
    ) -> ProcessorList:
        """The processors these options ask for, in transformers' order, with ``extra``
        (custom ones) last but before renormalisation. ``prompt_length``: history columns
        before the first generated token; ``encoder_ids``: an encoder-decoder model's prompts
        (``(rows, P)``, ``-1`` padded)."""
        p: list[Any] = []
        if self.sequence_bias:
            p.append(SequenceBias(self.sequence_bias, vocab_size))
        if self.logit_bias:
            p.append(LogitBias(self.logit_bias, vocab_size))
        if self.encoder_repetition_penalty != 1.0:
            p.append(EncoderRepetitionPenalty(self.encoder_repetition_penalty, prompt_length, encoder_ids))
        if self.repetition_penalty != 1.0:
            p.append(RepetitionPenalty(self.repetition_penalty))
        if self.presence_penalty or self.frequency_penalty:
            p.append(PresenceFrequencyPenalty(self.presence_penalty, self.frequency_penalty, prompt_length))
        if self.dry_multiplier > 0:
            breakers = [int(b) for b in self.dry_sequence_breakers if v.is_integer(b)]
            p.append(DRY(self.dry_multiplier, self.dry_base, self.dry_allowed_length, breakers, self.dry_penalty_last_n))
        if self.no_repeat_ngram_size > 0:
            p.append(NoRepeatNGram(self.no_repeat_ngram_size))
        if self.encoder_no_repeat_ngram_size > 0:
            p.append(EncoderNoRepeatNGram(self.encoder_no_repeat_ngram_size, prompt_length, encoder_ids))
        if self.bad_words:
            p.append(BadWords(self.bad_words, vocab_size))
        if self.min_length > 0 and eos_token_ids:
            p.append(MinLength(self.min_length, eos_token_ids))
        if self.min_new_tokens > 0 and eos_token_ids:
            p.append(MinNewTokens(self.min_new_tokens, prompt_length, eos_token_ids))
        if self.forced_bos_token_id is not None:
            p.append(ForceTokens([self.forced_bos_token_id], prompt_length, only_at_length=1))
        if self.decoder_prefix:
            p.append(ForceTokens(self.decoder_prefix, prompt_length))
        forced_eos = self.forced_eos_token_id or ((eos_token_ids[0],) if self.force_eos_at_max_length and eos_token_ids else ())
        if forced_eos:
            p.append(ForceEOS(self.max_new_tokens, prompt_length, forced_eos))
        if self.exponential_decay_length_penalty is not None and eos_token_ids:
            start, factor = self.exponential_decay_length_penalty
            p.append(ExponentialDecayLength(start, factor, prompt_length, eos_token_ids))
        if self.suppress_tokens:
            p.append(SuppressTokens(self.suppress_tokens, vocab_size))
        if self.begin_suppress_tokens:
            first = len(self.decoder_prefix) or (1 if self.forced_bos_token_id is not None and encoder_ids is not None else 0)
            p.append(BeginSuppress(self.begin_suppress_tokens, vocab_size, first, prompt_length))
        p.extend(extra)
        if self.renormalize_logits:
            p.append(Renormalize())
        return ProcessorList(p)
