"""The engine: requests, one scheduler and one loop for every strategy (see :mod:`.core`)."""

from decodekit.engine.checks import check_prompts
from decodekit.engine.core import Engine
from decodekit.engine.decoding import Decoding, decode
from decodekit.engine.request import (
    AbortedError,
    EngineEvent,
    Request,
    RequestHandle,
    RequestOutput,
)

__all__ = [
    "AbortedError",
    "Decoding",
    "Engine",
    "EngineEvent",
    "Request",
    "RequestHandle",
    "RequestOutput",
    "check_prompts",
    "decode",
]
