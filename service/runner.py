"""Running: an allowed update's life (queued → submitted → finished), journaled at every step.

An operation runs as its own task and outlives the stream that started it: a client that goes
away does not cancel its update, and WatchUpdate re-attaches to it by id, on any replica. Every
step is journaled before anyone is told: the record exists before `authorized` is sent, a submit
is marked before it is made, a result is saved before it is published. After a restart (or when
another replica's lease lapses) unfinished operations resume where their record left them:
queued ones queue again, an interrupted submit is checked against HealthImaging, submitted ones
are watched again. A record drops the update's document once HealthImaging has acknowledged the
submit (`journal.at_rest`): an operation resumed past its submit only follows its image set.

The runner publishes what it observes into each `Operation`; streams (service/streams.py) read
it there, and ask only `adopt`: an `unwatched` operation is watched again when followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, cast

import structlog

from service import audit, tracing
from service.admission import Admission, Draining, Ticket
from service.budget import GET_IMAGE_SET, UPDATE, Budget
from service.config import LimitSettings, WatchSettings
from service.errors import (
    DeadlineExceeded,
    FieldViolation,
    Internal,
    InvalidArgument,
    NoCredentials,
    NotFound,
    ProxyError,
    Unavailable,
    echo,
)
from service.events import (
    Authorized,
    Event,
    Finished,
    Item,
    Queued,
    StatusChanged,
    Submitted,
    record_error,
    replay,
    to_payload,
)
from service.healthimaging import HealthImaging
from service.journal import RESUBMITTABLE, Journal, fingerprint, followed
from service.metrics import Metrics
from service.model import (
    AuthMethod,
    Caller,
    ImageSetKey,
    ImageSetStatus,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
)
from service.updates import normalise
from service.wakeup import Wakeup
from service.watch import Watcher

log = structlog.get_logger(__name__)


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


class _Lost(Exception):
    """Another replica has taken this operation over; this process lets go of it."""


class _Unwatched(Exception):
    """Watching ran out of time: streams are told, the next WatchUpdate watches again."""

    def __init__(self, error: DeadlineExceeded) -> None:
        super().__init__(error.message)
        self.error = error


class Runner:
    """Records, runs and resumes operations; the journal is the source of truth."""

    def __init__(
        self,
        backend: HealthImaging,
        watcher: Watcher,
        admission: Admission,
        budget: Budget,
        journal: Journal,
        settings: WatchSettings,
        metrics: Metrics,
        limits: LimitSettings,
    ) -> None:
        self._backend = backend
        self._watcher = watcher
        self._admission = admission
        self._budget = budget
        self._journal = journal
        self._settings = settings
        self._limits = limits  # a resumed queued record is checked as it was admitted
        self._operations: dict[str, Operation] = {}
        metrics.running_operations.set_function(lambda: self.running)

    @property
    def running(self) -> int:
        return len(self._operations)

    def operation(self, operation_id: str) -> Operation | None:
        """The operation if this process runs it."""
        return self._operations.get(operation_id)

    # --- the steps of the request path -------------------------------------------------------

    async def lookup(self, operation_id: str) -> OperationRecord:
        local = self._operations.get(operation_id)
        record = local.record if local else await self._journal.get(operation_id)
        if record is None:
            raise NotFound(f"no operation {echo(operation_id)}")
        return record

    async def existing(self, principal: str, request: UpdateRequest) -> OperationRecord | None:
        """The operation this caller's idempotency key already names, if the request matches."""
        if not request.idempotency_key:
            return None
        record = await self._journal.by_key(principal, request.idempotency_key)
        if record is not None:
            _same_request(record, request)
        return record

    async def admit(self, principal: str, deadline: float | None) -> None:
        """Refuse now what the queue cannot take in time (RESOURCE_EXHAUSTED)."""
        await self._admission.admit(principal, deadline)

    async def record(self, fresh: OperationRecord) -> OperationRecord:
        """Journal a new operation; the earlier one if its idempotency key won a race with us."""
        record = await self._journal.create(fresh)
        if record.id != fresh.id:
            _same_request(record, fresh.request)
        return record

    def launch(self, record: OperationRecord, caller: Caller, plan: UpdatePlan) -> None:
        """Acknowledge a newly recorded operation (`authorized`) and run it."""
        operation = Operation(record, caller, plan)
        self._emit(operation, Authorized(record.id, record.created_at, record.decision))
        self._start(operation)

    # --- resuming ----------------------------------------------------------------------------

    async def resume(self) -> int:
        """Run the unfinished operations nobody else runs (after a restart or a takeover)."""
        records = await self._journal.take_over()
        for record in records:
            if record.id not in self._operations:
                await self._resume(record)
        return len(records)

    async def adopt(self, operation_id: str) -> Operation | None:
        """Watch again an operation whose watch had timed out (None: someone else does)."""
        record = await self._journal.adopt(operation_id)
        if operation_id in self._operations:
            return self._operations[operation_id]
        if record is None:
            return None
        return await self._resume(record)

    async def take_over_forever(self, interval: float) -> None:
        """Several replicas: keep adopting the operations of replicas that went away."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.resume()
            except (ProxyError, OSError) as exc:  # the journal speaks domain errors only
                log.warning("takeover_failed", error=type(exc).__name__)

    async def _resume(self, record: OperationRecord) -> Operation | None:
        log.info("operation_resumed", operation_id=record.id, state=record.state)
        caller = Caller(record.principal, cast(AuthMethod, record.auth_method), record.roles)
        try:
            plan = (
                normalise(record.request, self._limits)
                if record.state in RESUBMITTABLE
                else followed(record)
            )
        except InvalidArgument as error:  # the update rules changed since it was accepted
            failed = replace(record, seq=record.seq + 1, state="failed", error=record_error(error))
            await self._journal.save(failed)
            return None
        operation = Operation(record, caller, plan, seq=record.seq)
        operation.events = [item for item in replay(record) if not isinstance(item, ProxyError)]
        self._start(operation)
        return operation

    def _start(self, operation: Operation) -> None:
        self._operations[operation.id] = operation
        operation.task = asyncio.create_task(self._run(operation), name=f"op-{operation.id}")

    # --- the life of an operation ------------------------------------------------------------

    async def _run(self, operation: Operation) -> None:
        try:
            await self._advance(operation)
        except Draining as error:
            operation.publish(error)  # it stays recorded as it was, for whoever resumes it
        except _Lost:
            log.info("operation_taken_over", operation_id=operation.id)
        except _Unwatched as stop:
            await self._unwatch(operation, stop.error)
        except ProxyError as error:
            await self._fail(operation, error)
        except Exception as exc:
            log.exception("operation_crashed", operation_id=operation.id)
            await self._fail(operation, Internal(f"operation failed: {type(exc).__name__}"))
        finally:
            self._operations.pop(operation.id, None)
            if operation.record.finished:
                await self._finished(operation)

    async def _advance(self, operation: Operation) -> None:
        interrupted = operation.record.state == "submitting"
        if interrupted:
            await self._recover_submit(operation)
        if operation.record.state == "queued":
            await self._take_turn(operation, again=interrupted)
            await self._submit(operation)
            await self._follow(operation, operation.record.submitted)
        else:  # submitted before this process took it on: watch it again, at once
            await self._admission.hold(_key(operation), operation.id)
            await self._follow(operation, None)

    @tracing.stage("admission.queue")
    async def _take_turn(self, operation: Operation, *, again: bool) -> None:
        record = operation.record
        ticket = Ticket(
            record.id, record.principal, *_key(operation), record.created_at, record.deadline
        )

        def notify(position: int, start: float) -> None:
            self._emit(operation, Queued(record.id, time.time(), position, start))

        queue = self._admission.requeue if again else self._admission.enqueue
        try:
            await queue(ticket, notify)
        except asyncio.CancelledError:
            self._admission.withdraw(record.id)
            raise
        await self._save(operation, state="submitting")

    @tracing.stage("healthimaging.submit")
    async def _submit(self, operation: Operation) -> None:
        plan = operation.plan
        try:
            status = await self._budget.call(
                UPDATE,
                lambda: self._backend.update(plan),
                acquired=True,
                deadline=operation.record.deadline,
            )
        except NoCredentials:
            await self._forget_key(operation.record)  # nothing was sent: a retry submits again
            raise
        except Unavailable as error:  # never retried blindly: say whether it happened
            applied, outcome = await self._write_outcome(plan)
            if applied is False:  # a retry with the same key must submit again, not replay this
                await self._forget_key(operation.record)
            raise Unavailable(f"{error.message}; {outcome}", aws_code=error.aws_code) from error
        await self._save(operation, state="submitted", submitted=status, last_status=status)
        audit.submitted(operation.caller, operation.record)
        self._emit(operation, Submitted(operation.id, time.time(), status))

    async def _write_outcome(self, plan: UpdatePlan) -> tuple[bool | None, str]:
        """After a submit without an answer: did the write reach HealthImaging (None: unknown)?"""
        try:
            latest = await self._get(plan.datastore_id, plan.image_set_id)
        except ProxyError:
            return (
                None,
                "the update may or may not have been applied: check the image set's version",
            )
        if latest.untouched_since(plan.latest_version_id):
            return False, "the update was not applied (the image set is unchanged): resubmit it"
        return (
            None,
            "the update may have been applied: check the image set's version before retrying",
        )

    async def _forget_key(self, record: OperationRecord) -> None:
        key = record.request.idempotency_key
        if key:
            await self._journal.forget_key(record.principal, key, record.id)

    async def _recover_submit(self, operation: Operation) -> None:
        """Interrupted while submitting: did the write reach HealthImaging before the restart?"""
        request = operation.record.request
        latest = await self._get(request.datastore_id, request.image_set_id)
        if latest.untouched_since(request.latest_version_id):
            await self._save(operation, state="queued")  # it did not: submit it again
            return
        version = str(int(request.latest_version_id) + 1)
        status = latest
        if latest.version_id != version:
            status = await self._get(request.datastore_id, request.image_set_id, version)
        await self._save(operation, state="submitted", submitted=status, last_status=status)
        audit.submitted(operation.caller, operation.record)
        self._emit(operation, Submitted(operation.id, time.time(), status))

    async def _get(self, datastore_id: str, image_set_id: str, version: str = "") -> ImageSetStatus:
        return await self._budget.call(
            GET_IMAGE_SET, lambda: self._backend.get_image_set(datastore_id, image_set_id, version)
        )

    @tracing.stage("watch.follow")
    async def _follow(self, operation: Operation, submitted: ImageSetStatus | None) -> None:
        record = operation.record
        assert record.submitted is not None
        request = record.request
        updates = self._watcher.follow(
            record.principal,
            request.datastore_id,
            request.image_set_id,
            record.submitted.version_id,
            submitted,
        )
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                async for status in updates:
                    state = "finished" if status.terminal else "submitted"
                    await self._save(operation, state=state, last_status=status)
                    event = Finished if status.terminal else StatusChanged
                    self._emit(operation, event(operation.id, time.time(), status))
        except TimeoutError:
            raise _Unwatched(
                DeadlineExceeded(
                    f"update still {_describe(operation.last_status)} after "
                    f"{self._settings.timeout_seconds:g} s; "
                    f"re-attach with WatchUpdate({operation.id})"
                )
            ) from None

    async def _unwatch(self, operation: Operation, error: DeadlineExceeded) -> None:
        """Stop polling a stuck update; it no longer holds its image set's turn either."""
        await self._end(operation, error, state="unwatched")
        with contextlib.suppress(ProxyError, OSError):
            await self._admission.release(_key(operation), operation.id)

    async def _fail(self, operation: Operation, error: ProxyError) -> None:
        await self._end(operation, error, state="failed", error=record_error(error))

    async def _end(self, operation: Operation, told: ProxyError, **changes: Any) -> None:
        """Journal how the operation ends, then tell its streams even if that write failed."""
        try:
            await self._save(operation, **changes)
        except _Lost:
            pass
        except Exception as exc:  # noqa: BLE001 - the streams are told below either way
            log.error("journal_write_failed", operation_id=operation.id, error=type(exc).__name__)
        self._emit(operation, told)

    async def _finished(self, operation: Operation) -> None:
        with contextlib.suppress(ProxyError, OSError):
            await self._admission.release(_key(operation), operation.id)
        audit.finished(operation.caller, operation.record)

    async def _save(self, operation: Operation, **changes: Any) -> None:
        """Journal a step; the event telling it gets the next sequence number."""
        record = replace(operation.record, seq=operation.seq + 1, **changes)
        if not await self._journal.save(record):
            raise _Lost(operation.id)
        operation.record = record

    def _emit(self, operation: Operation, item: Item) -> None:
        operation.seq += 1
        operation.publish(item)
        if self._journal.shared:
            self._journal.publish(operation.id, to_payload(operation.seq, item))

    async def close(self) -> None:
        """Cancel every running operation; their records stay as they were, for the next owner."""
        tasks = [op.task for op in self._operations.values() if op.task and not op.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _same_request(record: OperationRecord, request: UpdateRequest) -> None:
    if record.fingerprint != fingerprint(request):
        raise InvalidArgument(
            [
                FieldViolation(
                    "idempotency_key",
                    f"already used for a different request (operation {record.id})",
                )
            ]
        )


def _key(operation: Operation) -> ImageSetKey:
    request = operation.record.request
    return ImageSetKey(request.datastore_id, request.image_set_id)


def _describe(status: ImageSetStatus | None) -> str:
    return status.workflow_status if status else "not submitted"
