"""User processors and stopping criteria: decodekit processors as they are, transformers'
``LogitsProcessor``/``StoppingCriteria`` objects through an adapter, and transformers'
``prefix_allowed_tokens_fn``.

transformers' objects expect unpadded histories (or a batch padded with a pad token), so the
adapter hands them the history as it is when no row is padded, and each row alone, without its
padding, when some are: a row's result never depends on its neighbours."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from decodekit.errors import ConfigError

NEG_INF = float("-inf")


def _is_transformers(obj, name: str) -> bool:
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(obj, getattr(transformers, name))


def _rows(token_ids: torch.Tensor):
    """Each row's history without padding, as ``(1, length)``."""
    for row in range(token_ids.shape[0]):
        ids = token_ids[row]
        yield row, ids[ids >= 0][None]


class TransformersProcessor:
    """A transformers ``LogitsProcessor`` as a decodekit processor."""

    changes_argmax = True

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if bool((token_ids >= 0).all()):
            return self.processor(token_ids, scores)
        out = scores.clone()
        for row, ids in _rows(token_ids):
            out[row : row + 1] = self.processor(ids, scores[row : row + 1].clone())
        return out


class PrefixAllowedTokens:
    """transformers' ``prefix_allowed_tokens_fn(batch_id, input_ids) -> allowed token ids``:
    every other token is banned. ``batch_id`` is the prompt's index in the call; ``input_ids``
    the row's unpadded history (prompt and generated tokens; the decoder's for an
    encoder-decoder model)."""

    changes_argmax = True

    def __init__(self, function: Callable[[int, torch.Tensor], Sequence[int]]):
        self.function = function
        self.prompt_of: list[int] = []

    def bind(self, prompt_indices: Sequence[int], width: int) -> None:
        """The group's rows: ``width`` per prompt, for the prompts at these call indices."""
        self.prompt_of = [i for i in prompt_indices for _ in range(width)]

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(scores, NEG_INF)
        for row, ids in _rows(token_ids):
            batch_id = self.prompt_of[row] if self.prompt_of else row
            allowed = list(self.function(batch_id, ids[0]))
            if allowed:
                mask[row, allowed] = 0.0
        return scores + mask


def processor(obj):
    """A user processor as decodekit applies it (``ConfigError`` if it is not callable)."""
    if _is_transformers(obj, "LogitsProcessor"):
        return TransformersProcessor(obj)
    if not callable(obj):
        raise ConfigError("processors", obj, "callables (token_ids, scores) -> scores, or transformers LogitsProcessor objects")
    if not hasattr(obj, "changes_argmax"):
        return _Assume(obj)
    return obj


class _Assume:
    """A plain callable: assumed to be able to change the argmax."""

    changes_argmax = True

    def __init__(self, function):
        self.function = function

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.function(token_ids, scores)


class Stopping:
    """Stopping criteria: a row stops (finish reason ``stop``) once any criterion says so.
    A criterion is a transformers ``StoppingCriteria`` or a callable ``(token_ids, scores) ->
    (rows,) bool`` on the unpadded history and the step's processed scores."""

    def __init__(self, criteria: Sequence):
        for c in criteria:
            if not callable(c):
                raise ConfigError("stopping", c, "callables (token_ids, scores) -> (rows,) bool, or transformers StoppingCriteria objects")
        self.criteria = list(criteria)

    def __call__(self, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        stop = torch.zeros(token_ids.shape[0], dtype=torch.bool, device=token_ids.device)
        padded = not bool((token_ids >= 0).all())
        for criterion in self.criteria:
            if not padded:
                stop |= torch.as_tensor(criterion(token_ids, scores), device=stop.device).reshape(-1).bool()
                continue
            for row, ids in _rows(token_ids):
                stop[row] |= bool(torch.as_tensor(criterion(ids, scores[row : row + 1])).reshape(-1)[0])
        return stop


def user_hooks(strategy, processors, stopping, prefix_allowed_tokens_fn) -> tuple[list, Any]:
    """The user's processors (adapted; ``prefix_allowed_tokens_fn`` last) and stopping
    criteria (None if none), checked for ``strategy``."""
    user = []
    if processors is not None:
        if not isinstance(processors, Sequence) or isinstance(processors, str):
            raise ConfigError("processors", processors, "a list of processors")
        user = [processor(p) for p in processors]
    if prefix_allowed_tokens_fn is not None:
        if not callable(prefix_allowed_tokens_fn):
            raise ConfigError("prefix_allowed_tokens_fn", prefix_allowed_tokens_fn, "a callable (batch_id, input_ids) -> allowed token ids")
        user.append(PrefixAllowedTokens(prefix_allowed_tokens_fn))
    if stopping is not None:
        if not isinstance(stopping, Sequence) or isinstance(stopping, str):
            raise ConfigError("stopping", stopping, "a list of stopping criteria")
        stopping = Stopping(stopping) if stopping else None
    if (user or stopping is not None) and getattr(strategy, "speculative", None) is not None:
        field = "processors" if user else "stopping"
        raise ConfigError(field, "...", "no custom processors or stopping criteria with speculative decoding (they run with plain decoding)")
    return user, stopping
