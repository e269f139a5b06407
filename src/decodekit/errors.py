"""decodekit's errors: every one is a ``ValueError`` that names what was wrong and what is allowed."""

from __future__ import annotations


class DecodeKitError(ValueError):
    """Base class of every error decodekit raises on bad input or bad numbers."""


class ConfigError(DecodeKitError):
    """A setting is out of range or unknown. Raised before any model call.

    ``field`` is the setting's name as the user spelled it (config attribute or CLI flag);
    ``allowed`` says what would have been accepted.
    """

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")

    def __reduce__(self):  # pickles with its fields (the engine's process sends it to the server)
        return type(self), (self.field, self.value, self.allowed)


class InputError(DecodeKitError):
    """A prompt, tokenizer or model does not fit the request. Raised before any model call."""


class NumericalError(DecodeKitError):
    """The model produced NaN or infinite logits; names the decoding step and the row."""

    def __init__(self, step: int, row: int, what: str = "NaN, +inf or all -inf logits"):
        self.step, self.row, self.what = step, row, what
        super().__init__(f"{what} at step {step}, row {row}: the model's output is unusable")

    def __reduce__(self):
        return type(self), (self.step, self.row, self.what)


class ModelError(DecodeKitError):
    """The model's own forward failed (names the architecture and the call); or the model is
    one decodekit cannot drive exactly."""


def check(condition: bool, field: str, value: object, allowed: str) -> None:
    """Raise ``ConfigError(field, value, allowed)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, value, allowed)
