"""Settings shared by every strategy: lengths, EOS, stop strings and the processors."""

from __future__ import annotations

from dataclasses import dataclass

from decodekit.errors import check
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
        check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "an integer >= 1")
        check(
            isinstance(self.min_new_tokens, int) and 0 <= self.min_new_tokens <= self.max_new_tokens,
            "min_new_tokens",
            self.min_new_tokens,
            f"an integer in [0, max_new_tokens={self.max_new_tokens}]",
        )
        check(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "a number > 0 (1 disables)")
        check(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", self.no_repeat_ngram_size, "an integer >= 0 (0 disables)")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "non-empty strings")
        in_vocab = f"token ids in [0, {vocab_size})"
        for name, ids in (("eos_token_ids", self.eos_token_ids or ()), ("suppress_tokens", self.suppress_tokens)):
            check(all(0 <= int(i) < vocab_size for i in ids), name, ids, in_vocab)
        check(
            all(len(w) >= 1 and all(0 <= int(i) < vocab_size for i in w) for w in self.bad_words),
            "bad_words",
            self.bad_words,
            f"non-empty sequences of {in_vocab}",
        )

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
