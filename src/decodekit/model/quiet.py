"""Quiets transformers' spurious padding warning for the calls decodekit makes."""

from __future__ import annotations

import contextlib
import logging
import threading

_driving = threading.local()


class _PaddingWarningFilter(logging.Filter):
    """Drops transformers' "passing in an attention_mask" warning for calls decodekit makes:
    decodekit passes a mask whenever a slot is masked, and leaves it out only when none is, so
    the warning (raised when a pad-valued token id is seen) is always spurious for them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_driving, "on", False) and "passing in an `attention_mask`" in record.getMessage())


logging.getLogger("transformers.modeling_utils").addFilter(_PaddingWarningFilter())


@contextlib.contextmanager
def driven():
    _driving.on = True
    try:
        yield
    finally:
        _driving.on = False
