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

from service.admission.write_queue import Draining
from service.core.errors import JournalLost, ProxyError, Unavailable
from service.core.model import OperationRecord
from service.journal import Journal
from service.operations.events import (
    Cancelled,
    Event,
    Finished,
    Heartbeat,
    Item,
    StatusChanged,
    Submitted,
    Terminal,
    error_from,
    from_payload,
    replay,
)
from service.operations.operation import Operation
from service.operations.runner import Runner

_MISSING_BEATS = 3
"""Heartbeats a remote stream waits for a record Redis lost to be written back by its owner."""
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
        """Live events from the owner's pub/sub; the record re-read after a silence of one
        heartbeat or a gap in the numbering (pub/sub is a wake-up, never the only copy)."""
        cursor, missing = Cursor(record), 0
        while True:
            payload = await self._next(payloads)
            if payload is None or cursor.gap(payload):
                fresh = await self._journal.get(record.id)
                if fresh is None:  # Redis lost it: its owner writes it back within a renewal
                    missing += 1
                    if missing >= _MISSING_BEATS:
                        raise JournalLost(record.id)
                    yield Heartbeat(record.id, time.time(), cursor.last)
                    continue
                missing = 0
                for item in cursor.catch_up(fresh):
                    yield _told(item)
                if cursor.ended:
                    return
                if payload is None:
                    yield Heartbeat(record.id, time.time(), cursor.last)
                    continue
            live = cursor.accept(payload)
            if live is None:
                continue
            yield _told(live)
            if cursor.ended:
                return

    async def _next(self, queue: asyncio.Queue[dict[str, Any]]) -> dict[str, Any] | None:
        """The next payload, or None after a heartbeat interval of silence."""
        try:
            async with asyncio.timeout(self._heartbeat_seconds):
                return await queue.get()
        except TimeoutError:
            return None


def _told(item: Item) -> Event:
    if isinstance(item, ProxyError):
        raise item
    return item


class Cursor:
    """What a remote stream has told, ordered by (epoch, seq): events of an older epoch (a
    fenced owner's) or already told (replayed from the record) are not told again. Pure."""

    def __init__(self, record: OperationRecord) -> None:
        self.id = record.id
        self.seen = (record.epoch, record.seq)
        self.last = record.last_status
        self.submitted = record.submitted is not None
        self.ended = record.finished

    def gap(self, payload: dict[str, Any]) -> bool:
        epoch, seq = payload.get("epoch", 0), payload["seq"]
        return bool(epoch == self.seen[0] and seq > self.seen[1] + 1)

    def accept(self, payload: dict[str, Any]) -> Item | None:
        place = (payload.get("epoch", 0), payload["seq"])
        # A cancel made on another replica is numbered from the record: it may trail the queue
        # positions its owner told, but it ends the stream all the same.
        if place <= self.seen and payload["kind"] != "cancelled":
            return None
        self.seen = max(self.seen, place)
        item = from_payload(self.id, payload)
        if isinstance(item, ProxyError) and item.reason == Draining.reason:
            return None  # its replica is leaving; another one will take the operation over
        return self._new(item)

    def catch_up(self, record: OperationRecord) -> list[Item]:
        """What `record` (re-read) shows that this stream has not told yet."""
        self.seen = max(self.seen, (record.epoch, record.seq))
        items: list[Item] = []
        if record.submitted is not None and not self.submitted:
            items.append(Submitted(record.id, time.time(), record.submitted))
        status = record.last_status
        if status is not None and (status != self.last or record.state == "finished"):
            final = record.state == "finished"
            event = Finished if final else StatusChanged
            if status != record.submitted or final:
                items.append(event(record.id, time.time(), status))
        if record.error is not None:
            items.append(error_from(record.error))
        if record.state == "cancelled":
            items.append(Cancelled(record.id, time.time(), record.cancelled_by))
        told = [new for item in items if (new := self._new(item)) is not None]
        if record.finished:
            self.ended = True
        return told

    def _new(self, item: Item) -> Item | None:
        if isinstance(item, ProxyError):
            self.ended = True
            return item
        if isinstance(item, Submitted):
            if self.submitted:
                return None
            self.submitted = True
        if isinstance(item, Submitted | StatusChanged | Finished):
            if isinstance(item, StatusChanged) and item.status == self.last:
                return None
            self.last = item.status
        self.ended = isinstance(item, Terminal)
        return item


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
        self._over = isinstance(item, Terminal)
        return item
