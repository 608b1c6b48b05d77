"""One operation this process runs: its record and everything observed of it (what streams read).

Apart from the runner so that the runner keeps to an operation's steps; the two signals that
end a run early without failing the update live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from service.core.errors import (
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    OperationMoved,
    ProxyError,
)
from service.core.model import (
    Caller,
    ImageSetKey,
    ImageSetStatus,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
)
from service.journal.codec import fingerprint
from service.operations.events import Cancelled, Event, Item, Queued
from service.operations.stream_wakeup import Wakeup

if TYPE_CHECKING:
    from service.journal import Journal

log = structlog.get_logger("service.operations.runner")


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
    let_go: bool = False
    """This process no longer owns it (lease lapsed, fenced): it publishes and saves nothing."""
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

    @property
    def image_set(self) -> ImageSetKey:
        request = self.record.request
        return ImageSetKey(request.datastore_id, request.image_set_id)

    @property
    def described(self) -> str:
        status = self.record.last_status
        return status.workflow_status if status else "not submitted"

    def publish(self, item: Item) -> None:
        if isinstance(item, ProxyError):
            self.error = item
        elif isinstance(item, Queued) and self.events and isinstance(self.events[-1], Queued):
            self.events[-1] = item  # a replay needs only the latest position
        else:
            self.events.append(item)
        self.wakeup.notify()

    def moved(self, why: str) -> OperationMoved:
        """The error ending its streams here: it goes on elsewhere, and how to re-attach."""
        self.let_go = True
        return OperationMoved(
            f"this replica no longer runs operation {self.id} ({why}); it continues on another "
            f"replica: re-attach with WatchUpdate({self.id!r})"
        )


class Lost(Exception):
    """Another replica has taken this operation over (or fenced this one): let go of it."""


class Unwatched(Exception):
    """Watching ran out of time: streams are told, the next WatchUpdate watches again."""

    def __init__(self, error: DeadlineExceeded) -> None:
        super().__init__(error.message)
        self.error = error


def same_request(record: OperationRecord, request: UpdateRequest) -> None:
    """An idempotency key names only the request it was first given with."""
    if record.fingerprint != fingerprint(request):
        raise InvalidArgument(
            [
                FieldViolation(
                    "idempotency_key",
                    f"already used for a different request (operation {record.id})",
                )
            ]
        )


async def end_cancelled(
    operation: Operation,
    save: Callable[..., Awaitable[None]],
    emit: Callable[[Operation, Item], None],
) -> None:
    """Its task, cancelled for CancelUpdate (service/operations/steering.py), ends here: saved
    `cancelled`
    (when another replica cancelled it, the journal already says so) and its streams told."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()  # the cancel was ours: the task finishes cleanly
    by = operation.cancelled_by or ""
    with contextlib.suppress(Lost, ProxyError, OSError):
        await save(operation, state="cancelled", cancelled_by=by)
    emit(operation, Cancelled(operation.id, time.time(), by))


async def tell_lost(operation: Operation, journal: Journal) -> None:
    """Another replica took it over, or cancelled it while queued (the owner may have missed the
    word on the `CANCELS` channel): its streams here are told which."""
    log.info("operation_taken_over", operation_id=operation.id)
    with contextlib.suppress(ProxyError, OSError):
        record = await journal.get(operation.id)
        if record is not None and record.state == "cancelled":
            operation.record = record
            operation.publish(Cancelled(record.id, time.time(), record.cancelled_by))
            return
    operation.publish(operation.moved("another replica took it over"))
