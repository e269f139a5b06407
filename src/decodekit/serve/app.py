"""The FastAPI app: HTTP requests become engine requests, engine events become chunks.

Handlers only translate (:mod:`.translate`) and format; the engine decodes. Waiting on the
engine happens in worker threads (a waiting thread drives the engine's steps for everyone),
so the event loop stays free; a client that disconnects aborts its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from decodekit.engine import AbortedError
from decodekit.errors import ConfigError, DecodeKitError, InputError
from decodekit.serve.bridge import Bridge
from decodekit.serve.format import (
    api_finish,
    body_echo,
    chat_message,
    chat_prompt,
    choice,
    chunk_choice,
    completion_prompts,
    echo_text,
    echoed_prompts,
    finite,
    joined,
    logprobs_object,
    prompt_logprobs_object,
    sequence_logprobs,
)
from decodekit.serve.limits import APIError, BodyLimit, ServerLimits, error_response, union_tag
from decodekit.serve.metrics import Metrics
from decodekit.serve.protocol import ChatCompletionRequest, CompletionRequest, ErrorBody
from decodekit.serve.remote import EngineExited
from decodekit.serve.translate import api_param, decoding


def create_app(decoder, model_name: str = "decodekit", limits: ServerLimits | None = None, close_on_shutdown: bool = False) -> FastAPI:
    """An app serving ``decoder`` (a :class:`~decodekit.Decoder`, or an
    :class:`~decodekit.serve.remote.EngineProcess`) under the model id ``model_name``, within
    ``limits``; ``close_on_shutdown``: close it when the server shuts down."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # the engine steps in its own thread while the server runs: handlers only wait
        started = not decoder.engine.in_background
        if started:
            decoder.engine.run_in_background()
        try:
            yield
        finally:
            if started:
                decoder.engine.stop_background()
            if close_on_shutdown:
                decoder.close()

    app = FastAPI(title="decodekit", version="0.1", lifespan=lifespan)
    metrics = Metrics(decoder.engine)
    app.state.decoder, app.state.metrics = decoder, metrics
    limits = limits or ServerLimits()
    bridge = Bridge(decoder.engine)
    slots = asyncio.Semaphore(limits.max_concurrent_requests)
    queued = [0]

    routes = {"/v1/completions", "/v1/chat/completions"}

    def label(path: str) -> str:  # the metrics' path label: a route's, or "other" (bounded)
        return path if path in routes else "other"

    def too_big(path: str) -> JSONResponse:
        metrics.requests.labels(label(path), "413").inc()
        return error_response(APIError(413, f"the request body is larger than this server's limit of {limits.max_body_bytes} bytes"))

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes, reject=too_big)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its loc is a character position, not a field
            param, message = None, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', 'invalid')}"
        else:
            loc = [str(x) for x in first.get("loc", ()) if x != "body" and not union_tag(x)]
            param = ".".join(loc) or None
            message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request"))
        metrics.requests.labels(label(request.url.path), "400").inc()
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown routes, wrong methods
        metrics.requests.labels("other", str(exc.status_code)).inc()
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else f"{request.method} {request.url.path}: {exc.detail}"
        response = error_response(APIError(exc.status_code, message, kind))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: still OpenAI's error shape
        metrics.requests.labels(label(request.url.path), "500").inc()
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}", "server_error"))

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        metrics.requests.labels(label(request.url.path), str(exc.status)).inc()
        return error_response(exc)

    @app.get("/health")
    async def health():
        exited = getattr(decoder, "exited", None)  # an engine in its own process that has died
        if exited is not None:
            return JSONResponse({"status": "error", "message": str(exited)}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "decodekit"}]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != model_name:
            raise APIError(404, f"model {model_id!r} is not served here; this server serves {model_name!r}", "not_found_error", "model")
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "decodekit"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = completion_prompts(body.prompt)
        return await _serve(request, body, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await _serve(request, body, [chat_prompt(decoder, body)], chat=True)

    async def _serve(request: Request, body, prompts: list, chat: bool):
        bridge.attach()
        if slots.locked() and queued[0] >= limits.max_queued_requests:
            raise APIError(429, f"the server is busy: {limits.max_concurrent_requests} requests decoding and {queued[0]} waiting; retry later", "rate_limit_error")
        queued[0] += 1
        try:
            await slots.acquire()
        finally:
            queued[0] -= 1
        released = [False]

        def release() -> None:  # once, by whichever ends first: the response or its stream
            if not released[0]:
                released[0] = True
                slots.release()

        try:
            response = await _admitted(request, body, prompts, chat, release)
        except BaseException:
            release()
            raise
        if isinstance(response, StreamingResponse):
            response.background = BackgroundTask(release)
        else:
            release()
        return response

    def _check_sizes(plan, body, prompts: list, chat: bool) -> None:
        if plan.settings["max_new_tokens"] > limits.max_tokens:
            field = "max_completion_tokens" if chat and body.max_completion_tokens is not None else "max_tokens"
            raise APIError(400, f"{field}={plan.settings['max_new_tokens']} is over this server's limit of {limits.max_tokens}", param=field)
        width = getattr(plan.strategy, "num_beams", None) or getattr(plan.strategy, "n", 1)
        if len(prompts) * width > limits.max_request_rows:
            param = "prompt" if len(prompts) > 1 else "n"
            raise APIError(400, f"{param}: {len(prompts)} prompt(s) x {width} rows each is over this server's limit of {limits.max_request_rows} rows per request", param=param)
        if limits.max_prompt_tokens is not None:
            for prompt in prompts:
                if len(decoder.encode(prompt)) > limits.max_prompt_tokens:
                    param = "messages" if chat else "prompt"
                    raise APIError(400, f"{param}: longer than this server's limit of {limits.max_prompt_tokens} tokens", param=param)

    async def _admitted(request: Request, body, prompts: list, chat: bool, release):
        arrived = time.perf_counter()
        if body.model not in (None, model_name):
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {model_name!r}", "not_found_error", "model")
        try:
            plan = decoding(body, default_max_tokens=min(256 if chat else 16, limits.max_tokens))
            _check_sizes(plan, body, prompts, chat)
            scored = None
            if not chat and body.echo and body.logprobs is not None:  # the echoed prompts' own log-probs
                scored = await anyio.to_thread.run_sync(lambda: [(ids, decoder.prompt_logprobs(ids, body.logprobs)) for ids in (decoder.encode(p) for p in prompts)])
            if not chat and body.echo and plan.settings["max_new_tokens"] == 0:  # scoring prompts: nothing to decode
                return _echoed(request, body, *echoed_prompts(decoder, prompts, scored, plan.choices_per_prompt))
            pending = await anyio.to_thread.run_sync(
                lambda: decoder.submit(prompts, plan.strategy, constraint=plan.constraint, stream=body.stream and not plan.whole, **plan.settings)
            )
            prompt_parts = [prompt_logprobs_object(decoder, ids, s) for ids, s in scored] if scored is not None else [None] * len(pending)
        except ConfigError as error:
            param = api_param(error.field, body)
            raise APIError(400, f"{param}={error.value!r} is not allowed: {error.allowed}", param=param) from None
        except InputError as error:
            raise APIError(400, str(error), param="messages" if chat else "prompt") from None
        except EngineExited as error:
            raise APIError(503, str(error), "server_error") from None
        except DecodeKitError as error:  # a request this model cannot decode exactly, refused
            raise APIError(400, str(error)) from None
        metrics.prompt_tokens.inc(sum(len(p.request.prompt) for p in pending))
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            stream = _stream(request, body, pending, plan, chat, ident, arrived, release, prompt_parts)
            return StreamingResponse(stream, media_type="text/event-stream")
        results = await _wait(request, pending)
        if results is None:
            metrics.requests.labels(request.url.path, "499").inc()
            return Response(status_code=499)
        first = time.perf_counter() - arrived
        choices, completion_tokens = [], 0
        for p, result, part in zip(pending, results, prompt_parts):
            for sequence in result.sequences:
                choices.append(choice(len(choices), p, sequence, body, chat, plan.settings["max_new_tokens"], plan.tools, part))
                completion_tokens += len(sequence.token_ids)
        metrics.generated_tokens.inc(completion_tokens)
        metrics.ttft.observe(first)
        if completion_tokens:
            metrics.token_latency.observe(first / completion_tokens)
        metrics.requests.labels(request.url.path, "200").inc()
        prompt_tokens = sum(len(p.request.prompt) for p in pending)
        return {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": finite(choices),
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }

    def _echoed(request: Request, body, choices: list[dict], prompt_tokens: int):
        """The response to ``echo`` with ``max_tokens`` 0: the prompts (and their log-probs)."""
        ident, created = "cmpl-" + uuid.uuid4().hex[:24], int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}
        metrics.requests.labels(request.url.path, "200").inc()
        whole = {"id": ident, "object": "text_completion", "created": created, "model": model_name, "choices": finite(choices), "usage": usage}
        if not body.stream:
            return whole
        head = {k: v for k, v in whole.items() if k not in ("choices", "usage")}
        events = ["data: " + json.dumps({**head, "choices": [c]}, allow_nan=False) + "\n\n" for c in whole["choices"]]
        if body.stream_options is not None and body.stream_options.include_usage:
            events.append("data: " + json.dumps({**whole, "choices": []}) + "\n\n")
        return StreamingResponse(iter(events + ["data: [DONE]\n\n"]), media_type="text/event-stream")

    async def _wait(request: Request, pending):
        """Every pending result once all are done, or None if the client left first."""
        waiter = bridge.register()
        finished = False
        try:
            while True:
                waiter.clear()
                if all(p.done for p in pending):
                    finished = True
                    break
                if not await bridge.wait(waiter) and await request.is_disconnected():
                    return None
        finally:
            bridge.unregister(waiter)
            if not finished:  # the client left, or the server cancelled us (shutdown): stop decoding
                for p in pending:
                    if not p.done:
                        p.abort()
        try:
            return [p.result() for p in pending]
        except AbortedError:
            return None
        except DecodeKitError as error:
            raise APIError(500, str(error), "server_error") from None

    async def _stream(request: Request, body, pending, plan, chat: bool, ident: str, arrived: float, release, prompt_parts) -> AsyncIterator[str]:
        """Server-sent events: one chunk per streamed token (or block), then each choice's
        finish, then usage (``stream_options.include_usage``) and ``[DONE]``."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())
        width = 1 if plan.beam else plan.choices_per_prompt

        def news(index: int, p, source):
            """What request ``p`` has for the client now: ``(what, choice index, item)``
            tuples, then ``("end", ...)`` once it is over; stops early when nothing is new."""
            try:
                if source is None:  # beam searches: the n-best once finished
                    if not p.done:
                        return
                    for j, sequence in enumerate(p.result().sequences):
                        yield "final", index * plan.choices_per_prompt + j, sequence
                else:
                    for event in source:
                        if event is None:
                            return
                        yield "event", index * width + event.row, event
            except AbortedError:
                pass
            except Exception as error:  # delivered to the client as an error chunk
                yield "error", index, error
            yield "end", index, None

        def chunk(entry: dict) -> str:
            return "data: " + json.dumps(finite({"id": ident, "object": kind, "created": created, "model": model_name, "choices": [entry]}), allow_nan=False) + "\n\n"

        tokens, first_seen, started, counts, echoed, sent = 0, None, set(), {}, set(), {}
        wants_logprobs = bool(body.logprobs) if chat else body.logprobs is not None
        pending_decoder = pending[0].decoder
        sources = {index: (p, None if plan.whole else p.events(wait=False)) for index, p in enumerate(pending)}
        waiter = bridge.register()
        try:
            while sources:
                waiter.clear()
                items = []
                for key, (p, source) in list(sources.items()):
                    for what, index, item in news(key, p, source):
                        if what == "end":
                            del sources[key]
                        else:
                            items.append((what, index, key, p, item))
                if not items and sources:
                    if not await bridge.wait(waiter) and await request.is_disconnected():
                        return
                    continue
                out = []  # this wake's chunks, sent in one write
                for what, index, key, p, item in items:
                    if what == "error":
                        out.append("data: " + json.dumps({"error": ErrorBody(message=str(item), type="server_error").model_dump()}) + "\n\n")
                        continue
                    if first_seen is None:
                        first_seen = time.perf_counter() - arrived
                        metrics.ttft.observe(first_seen)
                    if chat and index not in started:
                        started.add(index)
                        out.append(chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}))
                    if what == "final":
                        tokens += len(item.token_ids)
                        echoed_text = echo_text(p) if body_echo(body) else ""
                        text = echoed_text + (item.text or "")
                        limit = plan.settings["max_new_tokens"]
                        reason, delta = api_finish(item.finish_reason, len(item.token_ids), limit), {"content": text} if chat else None
                        if chat and plan.tools is not None:  # a call: its whole message in one delta
                            message, reason = chat_message(item, plan.tools, limit)
                            delta = {"content": text} if message["content"] is not None else {"tool_calls": [{"index": j, **c} for j, c in enumerate(message["tool_calls"])]}
                        logprobs = joined(prompt_parts[key], sequence_logprobs(item, pending_decoder, chat, len(echoed_text))) if wants_logprobs else None
                        out.append(chunk(chunk_choice(index, text, delta, reason, item, chat, logprobs)))
                        continue
                    event = item
                    if event.token_id is not None:
                        tokens += 1
                        counts[index] = counts.get(index, 0) + 1
                    prefix = ""
                    if body_echo(body) and index not in echoed:  # the prompt first, once per choice
                        echoed.add(index)
                        prefix = echo_text(p)
                    logprobs = None
                    if wants_logprobs and event.token_id is not None and event.finish_reason != "eos":  # an ending EOS is not text
                        top = [event.top_logprobs] if event.top_logprobs is not None else None
                        logprobs = logprobs_object([event.token_id], [event.logprob], top, pending_decoder, chat, sent.get(index, 0) + len(prefix))
                    if prefix and wants_logprobs:  # the prompt's own tokens ahead of this one's
                        logprobs = joined(prompt_parts[key], logprobs)
                    text = prefix + event.text
                    sent[index] = sent.get(index, 0) + len(text)
                    if text or event.finish_reason or logprobs is not None:
                        reason = api_finish(event.finish_reason, counts.get(index, 0), plan.settings["max_new_tokens"])
                        delta = {"content": text} if chat else None
                        out.append(chunk(chunk_choice(index, text, delta, reason, None, chat, logprobs)))
                if out:
                    yield "".join(out)
            if body.stream_options is not None and body.stream_options.include_usage:
                prompt_tokens = sum(len(x.request.prompt) for x in pending)
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
                yield "data: " + json.dumps({"id": ident, "object": kind, "created": created, "model": model_name, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
            metrics.generated_tokens.inc(tokens)
            if tokens and first_seen is not None:
                metrics.token_latency.observe((time.perf_counter() - arrived) / tokens)
            metrics.requests.labels(request.url.path, "200").inc()
        finally:
            bridge.unregister(waiter)
            release()
            for p in pending:
                if not p.done:
                    p.abort()

    return app



