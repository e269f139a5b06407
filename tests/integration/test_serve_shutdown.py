"""Graceful shutdown of the server: in-flight requests finish, or are cancelled cleanly."""

from __future__ import annotations

import threading
import time

import openai
import serving
import uvicorn

import decodekit
from decodekit.serve import create_app


def _server(decoder, grace: float | None):
    port = serving.free_port()
    config = uvicorn.Config(create_app(decoder, "stdlib-code"), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=grace)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    return server, thread, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)


def _in_flight(decoder, call) -> tuple[threading.Thread, dict]:
    """Run ``call`` in a thread; return once its rows decode in the engine."""
    out: dict = {}

    def run():
        try:
            out["response"] = call()
        except Exception as error:  # what the client saw
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 30
    while decoder.engine.running_rows == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert decoder.engine.running_rows > 0
    return thread, out


def test_shutdown_lets_in_flight_requests_finish():
    decoder = decodekit.load()
    server, thread, client = _server(decoder, grace=None)
    worker, out = _in_flight(decoder, lambda: client.completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=300, temperature=0))
    server.should_exit = True
    worker.join(60)
    thread.join(60)
    assert not thread.is_alive()
    response = out["response"]
    assert response.choices[0].finish_reason in ("length", "stop")
    assert response.usage.completion_tokens > 0
    # the answer is the whole decoding, as generate gives it
    assert response.choices[0].text == decoder.generate("def f(x):", max_new_tokens=300).text
    assert decoder.engine.running_rows == 0 and not decoder.engine.in_background


def test_shutdown_past_its_grace_period_cancels_and_frees_every_row():
    decoder = decodekit.load()
    server, thread, client = _server(decoder, grace=0.2)
    calls = [
        lambda: client.completions.create(model="stdlib-code", prompt="def f(x):", max_tokens=3000, temperature=0),
        lambda: list(client.completions.create(model="stdlib-code", prompt="class A:", max_tokens=3000, temperature=0, stream=True)),
    ]
    workers = [_in_flight(decoder, call) for call in calls]
    server.should_exit = True
    thread.join(60)
    for worker, _ in workers:
        worker.join(60)
    assert not thread.is_alive() and all(not w.is_alive() for w, _ in workers)
    for _, out in workers:  # cut short: an error, or a stream that ended early; never a full answer
        assert "error" in out or len(out["response"]) < 3000
    deadline = time.time() + 10
    while decoder.engine.running_rows and time.time() < deadline:
        decoder.engine.drive(lambda: decoder.engine.running_rows == 0, timeout=0.5)
    assert decoder.engine.running_rows == 0
