"""Settings shared by every strategy: lengths, EOS, stop strings and the processors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from decodekit import validation as v
from decodekit.errors import ConfigError
from decodekit.logits.base import ProcessorList
from decodekit.logits.penalties import (
    BadWords,
    ForceEOSAtLimit,
    MinNewTokens,
    NoRepeatNGram,
    RepetitionPenalty,
    SuppressTokens,
)


@dataclass(frozen=True)
class DecodeOptions:
    """``max_new_tokens``/``min_new_tokens``: bounds on generated tokens (EOS included).
    ``eos_token_ids``: tokens that end a sequence (None: the model's). ``stop``: strings that end
    a sequence (greedy and sampling), cut from the returned text. The rest configure processors."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    eos_token_ids: tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    suppress_tokens: tuple[int, ...] = ()
    bad_words: tuple[tuple[int, ...], ...] = ()
    force_eos_at_max_length: bool = False

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

    def processors(self, prompt_length: int, eos_token_ids: tuple[int, ...], vocab_size: int) -> ProcessorList:
        """The processors these options ask for, in transformers' order."""
        processors = []
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenalty(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            processors.append(NoRepeatNGram(self.no_repeat_ngram_size))
        if self.bad_words:
            processors.append(BadWords(self.bad_words, vocab_size))
        if self.min_new_tokens > 0 and eos_token_ids:
            processors.append(MinNewTokens(self.min_new_tokens, prompt_length, eos_token_ids))
        if self.suppress_tokens:
            processors.append(SuppressTokens(self.suppress_tokens, vocab_size))
        if self.force_eos_at_max_length and eos_token_ids:
            processors.append(ForceEOSAtLimit(self.max_new_tokens, prompt_length, eos_token_ids[0]))
        return ProcessorList(processors)
