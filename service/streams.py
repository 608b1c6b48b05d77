"""Operation streams: the events so far, then live ones until the end, with heartbeats.

An operation this process runs (an `Operation`, holding what has been observed of it) is
followed through its subscribers; one run by another replica (or already over) is replayed from
its record, then followed on the journal's pub/sub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from service.admission import Draining
from service.errors import ProxyError, Unavailable
from service.events import (
    Event,
    Finished,
    Heartbeat,
    Item,
    Queued,
    StatusChanged,
    Submitted,
    from_payload,
    replay,
)
from service.healthimaging import ImageSetStatus
from service.identity import Caller
from service.journal import Journal, OperationRecord
from service.updates import UpdatePlan


@dataclass(eq=False)
class Operation:
    """One update this process runs, and everything observed of it."""

    record: OperationRecord
    caller: Caller
    plan: UpdatePlan
    events: list[Event] = field(default_factory=list)
    error: ProxyError | None = None
    subscribers: set[asyncio.Queue[Item]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    seq: int = 0

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def last_status(self) -> ImageSetStatus | None:
        return self.record.last_status

    def publish(self, item: Item) -> None:
        if isinstance(item, ProxyError):
            self.error = item
        elif isinstance(item, Queued) and self.events and isinstance(self.events[-1], Queued):
            self.events[-1] = item  # a replay needs only the latest position
        else:
            self.events.append(item)
        for queue in self.subscribers:
            queue.put_nowait(item)


class Streams:
    """Streams of operations, local or recorded; `lookup` reads a record (NotFound if none)."""

    def __init__(
        self,
        journal: Journal,
        lookup: Callable[[str], Awaitable[OperationRecord]],
        heartbeat_seconds: float,
    ) -> None:
        self._journal = journal
        self._lookup = lookup
        self._heartbeat_seconds = heartbeat_seconds

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
            record = await self._lookup(operation_id)
            if not record.finished:
                raise Unavailable("the operation is not running in this process; retry")
            async for event in _replayed(record):
                yield event
            return
        async with self._journal.subscribe(operation_id) as payloads:
            record = await self._lookup(operation_id)  # after subscribing: nothing falls between
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
