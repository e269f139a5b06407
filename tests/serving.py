"""Start a real uvicorn server for an app on 127.0.0.1 (a random free port), in a thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(app, log_level: str = "warning"):
    """``(server, thread, base_url)``; stop with ``server.should_exit = True; thread.join()``."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start within 30 s"
    return server, thread, f"http://127.0.0.1:{port}"


def embedded(name: str = "stdlib-code"):
    """A module fixture's body: ``(decoder, base_url)`` of the embedded model served on a free
    port, stopped after the module."""
    import decodekit
    from decodekit.serve import create_app

    decoder = decodekit.load()
    server, thread, url = start(create_app(decoder, name))
    yield decoder, url
    server.should_exit = True
    thread.join(timeout=10)


def openai_client(url: str):
    """The official client for a server at ``url``: no retries, a generous timeout."""
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
