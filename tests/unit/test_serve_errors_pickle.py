"""Errors cross from the engine's process to the server's intact: their kind and fields."""

from __future__ import annotations

import pickle

from decodekit.engine import AbortedError
from decodekit.errors import ConfigError, DecodeKitError, InputError, NumericalError
from decodekit.serve.worker import portable


def test_decodekit_errors_pickle_with_their_fields():
    config = pickle.loads(pickle.dumps(ConfigError("top_p", 1.5, "a number in (0, 1]")))
    assert (type(config), config.field, config.value, config.allowed) == (ConfigError, "top_p", 1.5, "a number in (0, 1]")
    numerical = pickle.loads(pickle.dumps(NumericalError(3, 1, "NaN logits")))
    assert (numerical.step, numerical.row, numerical.what, str(numerical)) == (3, 1, "NaN logits", str(NumericalError(3, 1, "NaN logits")))
    for error in (InputError("prompt: empty"), AbortedError("aborted")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)


def test_portable_keeps_a_config_error_whose_value_does_not_pickle():
    error = ConfigError("stopping", lambda: None, "a list of criteria")
    sent = pickle.loads(pickle.dumps(portable(error)))
    assert isinstance(sent, ConfigError) and sent.field == "stopping" and "<function" in str(sent)


def test_portable_turns_any_other_unpicklable_error_into_a_decodekit_error():
    class Local(Exception):  # a local class does not pickle
        pass

    sent = pickle.loads(pickle.dumps(portable(Local("boom"))))
    assert type(sent) is DecodeKitError and "Local: boom" in str(sent)
