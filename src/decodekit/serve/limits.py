"""The server's limits and errors: :class:`ServerLimits`, the body-size middleware, and
:class:`APIError` in OpenAI's error shape (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse

from decodekit.serve.protocol import ErrorBody


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        self.status, self.body = status, ErrorBody(message=message, type=kind, param=param, code=None)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse({"error": error.body.model_dump()}, status_code=error.status)


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts. ``max_concurrent_requests``: requests decoding (or waiting in
    the engine) at once; ``max_queued_requests``: requests waiting for one of those slots
    (beyond: 429); ``max_prompt_tokens`` (None: the model's context) and ``max_tokens``: sizes
    per request (beyond: 400 naming the field); ``max_body_bytes``: request body size (beyond:
    413); ``max_request_rows``: rows one request decodes at once, its prompts times ``n`` (or
    beams) (beyond: 400), so that no single request holds the engine for everyone else."""

    max_concurrent_requests: int = 256
    max_queued_requests: int = 1024
    max_prompt_tokens: int | None = None
    max_tokens: int = 4096
    max_body_bytes: int = 1 << 20
    max_request_rows: int = 256


class BodyLimit:
    """Pure ASGI middleware (so disconnects still reach the app): a body over ``limit`` bytes
    gets ``reject(path)`` (a 413). With a Content-Length the header decides; without one the
    body is read first, then replayed to the app."""

    def __init__(self, app, limit: int, reject):
        self.app, self.limit, self.reject = app, limit, reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await self.reject(scope["path"])(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self.reject(scope["path"])(scope, receive, send)
        replayed = [False]

        async def replay():
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def union_tag(part) -> bool:
    """Whether a validation error's location part names a branch of a union type
    (``prompt.str``, ``content.list[dict[str,any]]``), not a field: fields are lowercase words."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part[:1].isupper() or "-" in part)
