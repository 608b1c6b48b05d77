"""One operation this process runs, and everything observed of it (what its streams read).

The runner (service/runner.py) publishes into it; streams (service/streams.py) read it at their
own positions, all woken by its one `Wakeup`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.errors import ProxyError
from service.events import Event, Item, Queued
from service.model import Caller, ImageSetKey, ImageSetStatus, OperationRecord, UpdatePlan
from service.wakeup import Wakeup


@dataclass(eq=False)
class Operation:
    """One update this process runs, and everything observed of it (what streams read)."""

    record: OperationRecord
    caller: Caller
    plan: UpdatePlan
    events: list[Event] = field(default_factory=list)
    error: ProxyError | None = None
    wakeup: Wakeup = field(default_factory=Wakeup)
    """What its streams wait on; each stream keeps only its read position in `events`."""
    task: asyncio.Task[None] | None = None
    seq: int = 0
    cancelled_by: str | None = None
    """Who asked to take it back (its task is being cancelled for them)."""
    nudged: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when its record was changed by someone else (an approver): its task reads it again."""

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
        self.wakeup.notify()


def image_set_of(operation: Operation) -> ImageSetKey:
    request = operation.record.request
    return ImageSetKey(request.datastore_id, request.image_set_id)


def describe(status: ImageSetStatus | None) -> str:
    return status.workflow_status if status else "not submitted"
