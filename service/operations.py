"""Operations: an authorized update runs as its own task (submit, then watch); streams fan out.

An operation outlives the stream that started it: a client that goes away does not cancel its
update, and WatchUpdate re-attaches to it by id. Each subscriber gets the operation's events so
far, then live ones, with heartbeats during silences.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from service import audit
from service.config import WatchSettings
from service.errors import DeadlineExceeded, Internal, NotFound, PermissionDenied, ProxyError
from service.healthimaging import HealthImaging, ImageSetStatus
from service.identity import Caller
from service.policy import Decision
from service.updates import UpdatePlan
from service.watch import Watcher

log = structlog.get_logger(__name__)

ADMIN_ROLE = "metadata-admin"


@dataclass(frozen=True)
class Authorized:
    operation_id: str
    at: float
    decision: Decision


@dataclass(frozen=True)
class Queued:
    operation_id: str
    at: float
    position: int
    estimated_start: float


@dataclass(frozen=True)
class Submitted:
    operation_id: str
    at: float
    status: ImageSetStatus


@dataclass(frozen=True)
class StatusChanged:
    operation_id: str
    at: float
    status: ImageSetStatus


@dataclass(frozen=True)
class Finished:
    operation_id: str
    at: float
    status: ImageSetStatus


@dataclass(frozen=True)
class Heartbeat:
    operation_id: str
    at: float
    status: ImageSetStatus | None


Event = Authorized | Queued | Submitted | StatusChanged | Finished | Heartbeat
_Item = Event | ProxyError


@dataclass(eq=False)
class Operation:
    """One authorized update and everything observed of it."""

    id: str
    caller: Caller
    plan: UpdatePlan
    decision: Decision
    events: list[Event] = field(default_factory=list)
    error: ProxyError | None = None
    subscribers: set[asyncio.Queue[_Item]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or any(isinstance(e, Finished) for e in self.events)

    @property
    def last_status(self) -> ImageSetStatus | None:
        for event in reversed(self.events):
            if isinstance(event, Submitted | StatusChanged | Finished):
                return event.status
        return None

    def publish(self, item: _Item) -> None:
        if isinstance(item, ProxyError):
            self.error = item
        else:
            self.events.append(item)
        for queue in self.subscribers:
            queue.put_nowait(item)


class Operations:
    """Starts, runs and serves the operations of this process."""

    def __init__(self, backend: HealthImaging, watcher: Watcher, settings: WatchSettings) -> None:
        self._backend = backend
        self._watcher = watcher
        self._settings = settings
        self._operations: dict[str, Operation] = {}

    @property
    def running(self) -> int:
        return sum(1 for op in self._operations.values() if op.task and not op.task.done())

    def start(self, caller: Caller, plan: UpdatePlan, decision: Decision) -> Operation:
        operation = Operation(str(uuid.uuid4()), caller, plan, decision)
        operation.publish(Authorized(operation.id, time.time(), decision))
        self._operations[operation.id] = operation
        operation.task = asyncio.create_task(self._run(operation), name=f"op-{operation.id}")
        return operation

    def get(self, operation_id: str, caller: Caller) -> Operation:
        """The operation, if this caller may see it (its owner or an admin)."""
        operation = self._operations.get(operation_id)
        if operation is None:
            raise NotFound(f"no operation {operation_id!r}")
        owner = operation.caller.principal == caller.principal
        if not owner and ADMIN_ROLE not in caller.roles:
            raise PermissionDenied("only the caller who started an operation may watch it")
        return operation

    async def _run(self, operation: Operation) -> None:
        try:
            submitted = await self._backend.update(operation.plan)
            operation.publish(Submitted(operation.id, time.time(), submitted))
            await self._follow(operation, submitted.version_id)
        except ProxyError as error:
            operation.publish(error)
        except Exception as exc:
            log.exception("operation_crashed", operation_id=operation.id)
            operation.publish(Internal(f"operation failed unexpectedly: {type(exc).__name__}"))
        finally:
            audit.operation_outcome(
                operation.caller, operation.plan, operation.decision, _outcome(operation)
            )

    async def _follow(self, operation: Operation, version_id: str) -> None:
        plan = operation.plan
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                async for status in self._watcher.follow(
                    plan.datastore_id, plan.image_set_id, version_id
                ):
                    event_type = Finished if status.terminal else StatusChanged
                    operation.publish(event_type(operation.id, time.time(), status))
        except TimeoutError:
            operation.publish(
                DeadlineExceeded(
                    f"update still {_describe(operation.last_status)} after "
                    f"{self._settings.timeout_seconds:g} s; "
                    f"re-attach with WatchUpdate({operation.id})"
                )
            )

    async def stream(self, operation: Operation) -> AsyncIterator[Event]:
        """Events so far, then live ones until the operation ends; heartbeats during silences."""
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        backlog: list[_Item] = [*operation.events]
        if operation.error is not None:
            backlog.append(operation.error)
        operation.subscribers.add(queue)
        try:
            for item in backlog:
                queue.put_nowait(item)
            while True:
                item = await self._next(queue, operation)
                if isinstance(item, ProxyError):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            operation.subscribers.discard(queue)

    async def _next(self, queue: asyncio.Queue[_Item], operation: Operation) -> _Item:
        try:
            async with asyncio.timeout(self._settings.heartbeat_seconds):
                return await queue.get()
        except TimeoutError:
            return Heartbeat(operation.id, time.time(), operation.last_status)

    async def close(self) -> None:
        tasks = [op.task for op in self._operations.values() if op.task and not op.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _describe(status: ImageSetStatus | None) -> str:
    return status.workflow_status if status else "not submitted"


def _outcome(operation: Operation) -> str:
    if operation.error is not None:
        return operation.error.reason
    status = operation.last_status
    return status.workflow_status if status else "UNKNOWN"
