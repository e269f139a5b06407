"""Length normalisation of a hypothesis' log-probability: ``score = logprob / penalty(length)``."""

from __future__ import annotations

from dataclasses import dataclass

from decodekit.errors import check
from decodekit.validation import number

FORMS = ("exponent", "gnmt")


@dataclass(frozen=True)
class LengthPenalty:
    """``exponent``: ``length ** alpha`` (transformers' ``length_penalty``);
    ``gnmt``: ``((5 + length) / 6) ** alpha`` (Wu et al., 2016, "Google's Neural Machine
    Translation System", eq. 14). ``length`` counts generated tokens, EOS included.
    ``alpha > 0`` favours longer outputs, ``alpha < 0`` shorter ones, 0 disables."""

    alpha: float = 1.0
    form: str = "exponent"

    def validate(self, field: str = "length_penalty") -> None:
        check(isinstance(self.form, str) and self.form in FORMS, f"{field}_form", self.form, f"one of {', '.join(FORMS)}")
        # |alpha| <= 50 keeps length ** alpha finite for any length a model can reach
        number(field, self.alpha, -50.0, 50.0)

    @property
    def favors_long(self) -> bool:
        return self.alpha > 0

    def __call__(self, length: int) -> float:
        if self.form == "gnmt":
            return ((5 + length) / 6) ** self.alpha
        return length**self.alpha
