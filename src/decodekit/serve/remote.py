"""The engine in a process of its own, behind the interface the server uses of a
:class:`~decodekit.Decoder`: ``submit`` returns pending handles (``done``, ``result()``,
``events(wait=False)``, ``abort()``), ``encode`` / ``decode_text`` / ``tokenizer`` work on the
server's side, and ``engine`` takes listeners and reports its queue and rows.

Why a process: the engine's forward is a stream of small torch calls, each giving up and
retaking the interpreter lock. In one process with a busy event loop every retake waits for
the loop, and a forward takes far longer than alone; in its own process it does not wait.
"""

from __future__ import annotations

import itertools
import pickle
import socket
import subprocess
import sys
import threading
from collections import deque
from multiprocessing.connection import Connection

from decodekit.api import Decoder
from decodekit.errors import ConfigError, DecodeKitError


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:
        return False


class EngineExited(DecodeKitError):
    """The engine's process ended while requests were in flight."""


class RemoteRequest:
    def __init__(self, prompt: list[int]):
        self.prompt = prompt


class RemotePending:
    """One submitted prompt, decoding in the engine's process."""

    def __init__(self, owner: EngineProcess, rid: int, prompt_ids: list[int], prompt):
        self.decoder, self.rid, self.prompt = owner, rid, prompt
        self.request = RemoteRequest(prompt_ids)
        self._events: deque = deque()
        self._ended = threading.Event()
        self._result = self._error = None

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    def _update(self, events, ended: bool, result, error) -> None:  # the reader thread
        self._events.extend(events)
        if ended:
            self._result, self._error = result, error
            self._ended.set()

    def result(self, timeout: float | None = None):
        if not self._ended.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def events(self, wait: bool = False):
        """Its stream events as they arrive; None whenever nothing is new (never blocks)."""
        if wait:
            raise ValueError("a remote request streams with wait=False only")
        while True:
            if self._events:
                yield self._events.popleft()
                continue
            if self._ended.is_set() and not self._events:
                if self._error is not None:
                    raise self._error
                return
            yield None

    def abort(self) -> None:
        if not self._ended.is_set():
            try:
                self.decoder._send(("abort", self.rid))
            except EngineExited:  # nothing decodes it any more
                pass


class RemoteEngine:
    """The part of :class:`~decodekit.engine.Engine` a server touches."""

    in_background = True  # the engine's process steps it

    def __init__(self, owner: EngineProcess):
        self.owner = owner
        self.queued = 0
        self.running_rows = 0
        self.prompt_cache_hits = 0
        self.prompt_cache_prefix_tokens = 0
        self.listeners: list = []

    def add_listener(self, listener) -> None:
        self.listeners.append(listener)

    def run_in_background(self) -> None:
        pass

    def stop_background(self) -> None:
        self.owner.close()


class EngineProcess:
    """``decodekit.load(model, device=device)`` in a child process, served over a pipe."""

    encode = Decoder.encode
    decode_text = Decoder.decode_text

    def __init__(self, model=None, device: str = "cpu", threads: int | None = None, start_timeout: float = 600.0, prompt_cache_mib: int = 0):
        # a socket pair, the child's end inherited by a fresh interpreter: no fork of a process
        # with threads, and no re-import of the caller's main module
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "decodekit.serve.worker", str(theirs.fileno()), "" if model is None else str(model), str(device), str(threads or 0), str(prompt_cache_mib)]
        self._process = subprocess.Popen(command, pass_fds=(theirs.fileno(),))
        theirs.close()
        self._conn = Connection(ours.detach())
        if not self._conn.poll(start_timeout):
            self._process.kill()
            raise EngineExited(f"the engine's process did not load the model within {start_timeout:.0f} s")
        message = self._recv()
        if message[0] != "ready":
            self._process.wait(10)
            raise message[1]
        _, self.tokenizer, self.name = message
        self.engine = RemoteEngine(self)
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._replies: dict[int, list] = {}
        self._live: dict[int, RemotePending] = {}
        self._closed = False
        self.exited: EngineExited | None = None
        self._reader = threading.Thread(target=self._read, name="decodekit-engine-reader", daemon=True)
        self._reader.start()

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return ("failed", EngineExited(f"the engine's process exited (code {self._process.poll()})"))

    def _send(self, message) -> None:
        """Send a message (or its pickled bytes)."""
        with self._send_lock:
            if self._closed or self.exited is not None:
                raise self.exited or EngineExited("the engine's process is closed")
            try:
                self._conn.send_bytes(message if isinstance(message, bytes) else pickle.dumps(message))
            except OSError:
                raise EngineExited(f"the engine's process exited (code {self._process.poll()})") from None

    def submit(self, prompts, strategy=None, **kwargs) -> list[RemotePending]:
        """Submit to the engine's process and wait for its answer: the pending requests, or
        the error that ``Decoder.submit`` raised there (a bad setting, a bad prompt)."""
        sid = next(self._ids)
        try:  # pickled here, so that what cannot cross (a lambda, an open file, ...) is named
            data = pickle.dumps(("submit", sid, list(prompts), strategy, kwargs))
        except Exception as error:
            field = next((k for k, v in [("strategy", strategy), *kwargs.items()] if not _picklable(v)), "prompts")
            raise ConfigError(field, "...", f"a value that pickles: the engine runs in another process ({type(error).__name__})") from None
        return self._ask(sid, data)

    def prompt_logprobs(self, prompt_ids, top: int = 0) -> list:
        """:meth:`decodekit.api.Decoder.prompt_logprobs`, computed in the engine's process."""
        sid = next(self._ids)
        return self._ask(sid, ("prompt_logprobs", sid, [int(t) for t in prompt_ids], int(top)))

    def _ask(self, sid: int, message):
        """Send ``message`` (request ``sid``) and wait for its answer: its value, or the error
        raised for it there (or the process's exit)."""
        reply = [threading.Event(), None]
        self._replies[sid] = reply
        try:
            self._send(message)
            reply[0].wait()
        finally:
            self._replies.pop(sid, None)
        value, error = reply[1]
        if error is not None:
            raise error
        return value

    def _read(self) -> None:
        while True:
            message = self._recv()
            if message[0] == "submitted":
                _, sid, described, error = message
                pendings = [RemotePending(self, rid, ids, prompt) for rid, ids, prompt in described or ()]
                self._live.update((p.rid, p) for p in pendings)
                reply = self._replies.get(sid)
                if reply is not None:
                    reply[1] = (pendings, error)
                    reply[0].set()
            elif message[0] == "answered":
                _, sid, value, error = message
                reply = self._replies.get(sid)
                if reply is not None:
                    reply[1] = (value, error)
                    reply[0].set()
            elif message[0] == "news":
                _, news, self.engine.queued, self.engine.running_rows, self.engine.prompt_cache_hits, self.engine.prompt_cache_prefix_tokens = message
                for rid, events, ended, result, error in news:
                    pending = self._live.pop(rid) if ended else self._live.get(rid)
                    if pending is not None:
                        pending._update(events, ended, result, error)
                self._wake()
            else:  # the process is gone: fail whatever waits on it
                error = message[1] if isinstance(message[1], EngineExited) else EngineExited(str(message[1]))
                self.exited = error
                for pending in list(self._live.values()):
                    pending._update((), True, None, error)
                self._live.clear()
                for reply in list(self._replies.values()):
                    reply[1] = (None, error)
                    reply[0].set()
                self._wake()
                return

    def _wake(self) -> None:
        for listener in self.engine.listeners:
            listener()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the engine's process (requests still in flight end with :class:`EngineExited`)."""
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.send(("close",))
            except OSError:
                pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._reader.join(5)
        self._conn.close()
