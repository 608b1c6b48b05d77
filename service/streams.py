"""Streams: an operation's events so far, then live ones until it ends, with heartbeats.

Read one way from the runner: an operation this process runs (an `Operation`, holding what has
been observed of it) is read at a position of its own by each stream, all woken by the
operation's one `Wakeup`; one run by another replica (or already over) is replayed from its
record, then followed on the journal's pub/sub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from service.admission import Draining
from service.errors import ProxyError, Unavailable
from service.events import (
    Event,
    Finished,
    Heartbeat,
    Item,
    StatusChanged,
    Submitted,
    from_payload,
    replay,
)
from service.journal import Journal
from service.model import ImageSetStatus, OperationRecord
from service.operation import Operation
from service.runner import Runner

_TIMER_SLACK = 0.01
"""Timers fire a little early or late: after a live event, a beat may come this share early."""


class Streams:
    """Streams of operations: local (run here), recorded (run elsewhere or over) and remote."""

    def __init__(self, runner: Runner, journal: Journal, heartbeat_seconds: float) -> None:
        self._runner = runner
        self._journal = journal
        self._heartbeat_seconds = heartbeat_seconds

    def follow(self, record: OperationRecord) -> AsyncIterator[Event]:
        """Events so far, then live ones until the operation ends; heartbeats during silences.

        An `unwatched` operation (its watch timed out) is adopted: watched again, here."""
        local = self._runner.operation(record.id)
        if local is not None:  # the common case: no generator between the stream and it
            return self.local(local)
        return self._elsewhere(record)

    def local(self, operation: Operation) -> AsyncIterator[Event]:
        return LocalStream(operation, self._heartbeat_seconds)

    async def _elsewhere(self, record: OperationRecord) -> AsyncIterator[Event]:
        local = await self._runner.adopt(record.id) if record.state == "unwatched" else None
        events = self.local(local) if local is not None else self.recorded(record.id)
        async for event in events:
            yield event

    async def recorded(self, operation_id: str) -> AsyncIterator[Event]:
        """An operation run elsewhere (another replica) or already over: replay, then listen."""
        if not self._journal.shared:
            record = await self._runner.lookup(operation_id)
            if not record.finished:
                raise Unavailable("the operation is not running in this process; retry")
            async for event in _replayed(record):
                yield event
            return
        async with self._journal.subscribe(operation_id) as payloads:
            # Read after subscribing, so no event falls between the record and the channel.
            record = await self._runner.lookup(operation_id)
            async for event in _replayed(record):
                yield event
            if record.finished:
                return
            async for event in self._remote(record, payloads):
                yield event

    async def _remote(
        self, record: OperationRecord, payloads: asyncio.Queue[dict[str, Any]]
    ) -> AsyncIterator[Event]:
        seen, last = record.seq, record.last_status
        while True:
            payload = await self._next(payloads, record.id, last)
            if isinstance(payload, Heartbeat):
                yield payload
                continue
            if not isinstance(payload, dict) or payload["seq"] <= seen:
                continue
            seen = payload["seq"]
            item = from_payload(record.id, payload)
            if isinstance(item, ProxyError) and item.reason == Draining.reason:
                continue  # its replica is leaving; another one will take the operation over
            if isinstance(item, ProxyError):
                raise item
            if isinstance(item, Submitted | StatusChanged | Finished):
                last = item.status
            yield item
            if isinstance(item, Finished):
                return

    async def _next(
        self,
        queue: asyncio.Queue[Any],
        operation_id: str,
        status: ImageSetStatus | None,
    ) -> Any:
        """The next item, or a heartbeat (with the last known state) after a silence."""
        try:
            async with asyncio.timeout(self._heartbeat_seconds):
                return await queue.get()
        except TimeoutError:
            return Heartbeat(operation_id, time.time(), status)


async def _replayed(record: OperationRecord) -> AsyncIterator[Event]:
    for item in replay(record):
        if isinstance(item, ProxyError):
            raise item
        yield item


class LocalStream:
    """One stream of an operation run here: only its read position and when it last spoke.

    Heartbeats: after a live event, one only after a full interval of silence. After a
    heartbeat (or the replay on attaching), the next may come up to half an interval early,
    so the silent streams of one operation fall into step and one timer serves them all.
    """

    __slots__ = ("_interval", "_operation", "_over", "_read", "_slack", "_spoke_at", "_told")

    def __init__(self, operation: Operation, interval: float) -> None:
        self._operation = operation
        self._interval = interval
        self._read = 0
        """`operation.events[:_read]` have been told."""
        self._told: Item | None = None
        """The last one told: a `Queued` replaced in place by a newer position is told again."""
        self._spoke_at = time.monotonic()
        self._slack = interval / 2
        self._over = False

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> Event:
        operation = self._operation
        while True:
            item = self._unread()
            if item is not None:
                live = operation.wakeup.notified_at >= self._spoke_at
                # A live item dates from its publish, the same instant for every stream of the
                # operation: their next heartbeats fall due together, on one timer.
                self._spoke_at = operation.wakeup.notified_at if live else time.monotonic()
                self._slack = self._interval * _TIMER_SLACK if live else self._interval / 2
                return item
            due = self._spoke_at + self._interval
            if time.monotonic() >= due - self._slack:
                self._spoke_at, self._slack = time.monotonic(), self._interval / 2
                return Heartbeat(operation.id, time.time(), operation.last_status)
            await operation.wakeup.wait(due)

    def _unread(self) -> Event | None:
        """The next item to tell (None: nothing yet); the error ending the stream is raised."""
        if self._over:
            raise StopAsyncIteration
        events, read = self._operation.events, self._read
        if read and events[read - 1] is not self._told:
            item = events[read - 1]  # a newer position in the queue
        elif read < len(events):
            item, self._read = events[read], read + 1
        elif self._operation.error is not None:
            self._over = True
            raise self._operation.error
        else:
            return None
        self._told = item
        self._over = isinstance(item, Finished)
        return item
