"""decodekit: exact, fast decoding for neural sequence models.

>>> import decodekit
>>> decoder = decodekit.load()                       # the embedded code model
>>> decoder.generate("def fibonacci(n):", decodekit.BeamSearch(num_beams=4)).text
"""

from decodekit.api import Decoder, make_strategy
from decodekit.constraints import Catalog, CorpusSubstring, Grammar, JsonSchema, Regex
from decodekit.errors import ConfigError, DecodeKitError, InputError, ModelError, NumericalError
from decodekit.loading import load
from decodekit.options import DecodeOptions
from decodekit.results import GeneratedSequence, GenerationResult, StreamEvent
from decodekit.scoring.length import LengthPenalty
from decodekit.search.beam import BeamSearch
from decodekit.search.constrained_beam import ConstrainedBeamSearch
from decodekit.search.context_aware import ContextAwareDecoding
from decodekit.search.diverse import DiverseBeamSearch
from decodekit.search.dola import DoLa
from decodekit.search.momentum import MomentumDecoding
from decodekit.search.sampling import Greedy, Sampling
from decodekit.search.stochastic_beam import StochasticBeamSearch
from decodekit.speculative import Speculative

__all__ = [
    "BeamSearch",
    "Catalog",
    "ContextAwareDecoding",
    "CorpusSubstring",
    "Grammar",
    "JsonSchema",
    "Regex",
    "ConfigError",
    "DecodeKitError",
    "DecodeOptions",
    "Decoder",
    "DiverseBeamSearch",
    "GeneratedSequence",
    "GenerationResult",
    "Greedy",
    "InputError",
    "ModelError",
    "LengthPenalty",
    "NumericalError",
    "Sampling",
    "ConstrainedBeamSearch",
    "DoLa",
    "MomentumDecoding",
    "StochasticBeamSearch",
    "Speculative",
    "StreamEvent",
    "load",
    "make_strategy",
]
__version__ = "0.1.0"
