"""Engine -> event loop: the engine steps in its background thread; after each step one call
into the loop wakes every request handler, which then drains its requests' events without
blocking. No thread per request, no call per token."""

from __future__ import annotations

import asyncio


class Bridge:
    def __init__(self, engine):
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: set[asyncio.Event] = set()
        self.scheduled = False

    def attach(self) -> None:
        """Bind to the running loop (once) and make sure the engine steps in the background."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.engine.add_listener(self._stepped)
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
            waiter.set()

    def register(self) -> asyncio.Event:
        """A waiter set after every engine step until :meth:`unregister`. Clear it before
        looking for news, so that a step in between is never missed."""
        waiter = asyncio.Event()
        self.waiters.add(waiter)
        return waiter

    def unregister(self, waiter: asyncio.Event) -> None:
        self.waiters.discard(waiter)

    @staticmethod
    async def wait(waiter: asyncio.Event, timeout: float) -> bool:
        """True if the engine stepped, False after ``timeout`` seconds without a step."""
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
