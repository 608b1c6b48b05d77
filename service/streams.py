"""Streams: an operation's events so far, then live ones until it ends, with heartbeats.

Read one way from the runner: an operation this process runs (an `Operation`, holding what has
been observed of it) is followed through its subscribers; one run by another replica (or already
over) is replayed from its record, then followed on the journal's pub/sub.
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
from service.runner import Operation, Runner


class Streams:
    """Streams of operations: local (run here), recorded (run elsewhere or over) and remote."""

    def __init__(self, runner: Runner, journal: Journal, heartbeat_seconds: float) -> None:
        self._runner = runner
        self._journal = journal
        self._heartbeat_seconds = heartbeat_seconds

    async def follow(self, record: OperationRecord) -> AsyncIterator[Event]:
        """Events so far, then live ones until the operation ends; heartbeats during silences.

        An `unwatched` operation (its watch timed out) is adopted: watched again, here."""
        local = self._runner.operation(record.id)
        if local is None and record.state == "unwatched":
            local = await self._runner.adopt(record.id)
        events = self.local(local) if local is not None else self.recorded(record.id)
        async for event in events:
            yield event

    async def local(self, operation: Operation) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Item] = asyncio.Queue()
        for item in [*operation.events, *([operation.error] if operation.error else [])]:
            queue.put_nowait(item)
        operation.subscribers.add(queue)
        try:
            while True:
                item = await self._next(queue, operation.id, operation.last_status)
                if isinstance(item, ProxyError):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            operation.subscribers.discard(queue)

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
