"""The engine's own process (the child side of :class:`~decodekit.serve.remote.EngineProcess`).

It loads the model, steps the engine in its background thread and answers the server's
commands over one pipe: ``submit`` (reply: the requests' ids and prompt tokens, or the error)
and ``abort``. After every engine step it sends one message with every request's news: its
new stream events, or its result (or error) once it is over. So the server's event loop and
the engine never share an interpreter lock: a busy HTTP side cannot stall a forward.
"""

from __future__ import annotations

import itertools
import pickle
import signal
import threading

from decodekit.errors import ConfigError, DecodeKitError


class Shown:
    """A value that does not pickle, carried as its ``repr``."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling; else the same kind of error that does (a config
    error keeps its field, its value shown as text), or a :class:`DecodeKitError`."""
    candidates = [error]
    if isinstance(error, ConfigError):
        candidates.append(ConfigError(error.field, Shown(repr(error.value)), error.allowed))
    candidates.append(DecodeKitError(f"{type(error).__name__}: {error}"))
    for candidate in candidates:
        try:
            pickle.loads(pickle.dumps(candidate))
            return candidate
        except Exception:
            continue
    return candidates[-1]


class Worker:
    def __init__(self, conn, decoder):
        self.conn, self.decoder, self.engine = conn, decoder, decoder.engine
        self.live: dict[int, list] = {}  # id -> [pending, its events source or None]
        self.ids = itertools.count()
        self.lock = threading.Lock()  # guards ``live`` and the pipe's sending end
        self.last = (None, None)
        self.engine.add_listener(self.stepped)
        self.engine.run_in_background()

    def serve(self) -> None:
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):  # the server is gone
                    break
                if message[0] == "submit":
                    self.submit(*message[1:])
                elif message[0] == "abort":
                    with self.lock:
                        entry = self.live.get(message[1])
                    if entry is not None:
                        entry[0].abort()
                elif message[0] == "prompt_logprobs":
                    _, sid, ids, top = message
                    try:
                        reply = (self.decoder.prompt_logprobs(ids, top), None)
                    except Exception as error:
                        reply = (None, portable(error))
                    with self.lock:
                        self.conn.send(("answered", sid, *reply))
                elif message[0] == "close":
                    break
        finally:
            self.engine.stop_background()

    def submit(self, sid: int, prompts: list, strategy, kwargs: dict) -> None:
        try:
            pending = self.decoder.submit(prompts, strategy, **kwargs)
        except Exception as error:  # bad settings: the server turns them into a 400
            with self.lock:
                self.conn.send(("submitted", sid, None, portable(error)))
            return
        stream = bool(kwargs.get("stream"))
        with self.lock:
            described = []
            for p in pending:
                rid = next(self.ids)
                self.live[rid] = [p, p.events(wait=False) if stream else None]
                described.append((rid, list(p.request.prompt), p.prompt))
            self.conn.send(("submitted", sid, described, None))
        self.stepped()  # anything that finished already

    def stepped(self) -> None:
        """One message with every request's news (the engine's thread, after each step)."""
        with self.lock:
            news = []
            for rid, entry in list(self.live.items()):
                item = self._news(rid, entry)
                if item is not None:
                    news.append(item)
            state = (self.engine.queued, self.engine.running_rows, self.engine.prompt_cache_hits, self.engine.prompt_cache_prefix_tokens)
            if news or state != self.last:
                self.last = state
                try:
                    try:
                        self.conn.send(("news", news, *state))
                    except (pickle.PicklingError, TypeError, AttributeError):  # a value that does not pickle
                        self.conn.send(("news", [self._sendable(item) for item in news], *state))
                except OSError:  # the server is gone; serve() ends on its side of the pipe
                    pass

    def _sendable(self, item: tuple) -> tuple:
        """``item``, or its request ended with an error if it does not pickle."""
        try:
            pickle.dumps(item)
            return item
        except Exception as caught:
            self.live.pop(item[0], None)
            return item[0], [], True, None, DecodeKitError(f"its output could not be sent to the server: {caught}")

    def _news(self, rid: int, entry: list):
        """``(id, events, ended, result, error)``, or None if nothing is new."""
        pending, source = entry
        events, ended, result, error = [], False, None, None
        if source is not None:
            try:
                for event in source:
                    if event is None:
                        break
                    events.append(event)
                else:
                    ended = True
            except Exception as caught:
                ended, error = True, portable(caught)
        elif pending.done:
            ended = True
            try:
                result = pending.result()
            except Exception as caught:
                error = portable(caught)
        if ended:
            del self.live[rid]
        elif not events:
            return None
        return rid, events, ended, result, error


def main(conn, model, device: str, threads: int | None, prompt_cache_mib: int = 0) -> None:
    """The child process: load, say ready (with the tokenizer), then serve until told to stop
    or the server's end of the pipe closes."""
    import torch
    from transformers.utils import logging as transformers_logging

    import decodekit

    if threads:
        torch.set_num_threads(threads)
    transformers_logging.disable_progress_bar()
    try:
        decoder = decodekit.load(model, device=device, prompt_cache_mib=prompt_cache_mib)
    except Exception as error:
        conn.send(("failed", portable(error)))
        return
    conn.send(("ready", decoder.tokenizer, decoder.name))
    Worker(conn, decoder).serve()


if __name__ == "__main__":  # python -m decodekit.serve.worker FD MODEL DEVICE THREADS PROMPT_CACHE_MIB
    import sys
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which drains us
    fd, model, device, threads, prompt_cache_mib = sys.argv[1:6]
    main(Connection(int(fd)), model or None, device, int(threads) or None, int(prompt_cache_mib))
