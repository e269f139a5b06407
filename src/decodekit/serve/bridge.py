"""Engine -> event loop: the engine steps in its background thread (or its own process);
after each step one call into the loop wakes every request handler, which then drains its
requests' events without blocking. No thread per request, no call per token, and no timer per
wait: one ticker wakes every handler once a second, so that a handler whose engine has
nothing new for it can still notice that its client has gone."""

from __future__ import annotations

import asyncio

TICK = 1.0
"""Seconds between the ticker's wake-ups."""


class Waiter(asyncio.Event):
    """An event set after every engine step (``stepped``) and on every tick."""

    stepped = False


class Bridge:
    def __init__(self, engine):
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: set[Waiter] = set()
        self.scheduled = False
        self.ticker: asyncio.TimerHandle | None = None

    def attach(self) -> None:
        """Bind to the running loop (once) and make sure the engine steps in the background."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.engine.add_listener(self._stepped)
            self.ticker = self.loop.call_later(TICK, self._tick)
        if not self.engine.in_background:
            self.engine.run_in_background()

    def _stepped(self) -> None:  # the engine's thread
        if not self.scheduled and self.loop is not None:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed: the server has stopped
                pass

    def _wake(self) -> None:
        self.scheduled = False
        for waiter in self.waiters:
            waiter.stepped = True
            waiter.set()

    def _tick(self) -> None:
        for waiter in self.waiters:
            waiter.set()
        self.ticker = self.loop.call_later(TICK, self._tick)

    def register(self) -> Waiter:
        """A waiter set after every engine step until :meth:`unregister`. Clear it before
        looking for news, so that a step in between is never missed."""
        waiter = Waiter()
        self.waiters.add(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        self.waiters.discard(waiter)

    @staticmethod
    async def wait(waiter: Waiter) -> bool:
        """True if the engine stepped, False if only the ticker woke us (up to a second)."""
        await waiter.wait()
        stepped, waiter.stepped = waiter.stepped, False
        return stepped
