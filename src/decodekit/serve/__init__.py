"""``decodekit serve``: an OpenAI-compatible HTTP server on the engine (FastAPI + uvicorn).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus). Every request becomes engine requests of the
one decoder, so concurrent HTTP requests are batched continuously; a client that disconnects
aborts its requests. decodekit's own strategies and constraints travel in one ``decodekit``
object on the request (``extra_body={"decodekit": {...}}`` with the ``openai`` client).
"""

from decodekit.serve.app import ServerLimits, create_app

__all__ = ["ServerLimits", "create_app"]
