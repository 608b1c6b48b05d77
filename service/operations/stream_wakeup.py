"""Wake-ups: what every stream of one operation waits on, instead of a queue per stream.

One future, resolved and dropped on each `notify` (a publish), so a publish costs the same
however many streams watch; and one heartbeat timer, armed at the earliest moment one of the
waiting streams is due a heartbeat. Times are `time.monotonic()` seconds.
"""

from __future__ import annotations

import asyncio
import time


class Wakeup:
    """One operation's wake-up: every stream of it awaits the same future."""

    __slots__ = ("_future", "_timer", "_timer_at", "notified_at")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.notified_at = 0.0
        """When the last item was published: a live item's time for every stream alike."""

    def notify(self) -> None:
        """An item was published: wake every waiting stream (each arms the timer again)."""
        self.notified_at = time.monotonic()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    async def wait(self, until: float) -> None:
        """Until the next publish, or about `until` at the latest (woken early or late: check).

        Cancelling the waiter (its client went away) leaves the shared future alone."""
        loop = asyncio.get_running_loop()
        if self._future is None:
            self._future = loop.create_future()
        if self._timer is None or until < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = until
            self._timer = loop.call_later(max(until - time.monotonic(), 0.0), self._beat)
        await asyncio.shield(self._future)

    def _beat(self) -> None:
        self._timer = None
        self._wake()

    def _wake(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)
