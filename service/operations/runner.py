"""Running: an allowed update's life (queued → submitted → finished), journaled at every step.

An operation runs as its own task and outlives the stream that started it: a client that goes
away does not cancel its update, and WatchUpdate re-attaches to it by id, on any replica. Every
step is journaled before anyone is told: the record exists before `authorized` is sent, a submit
is marked before it is made, a result is saved before it is published. After a restart (or when
another replica's lease lapses) unfinished operations resume where their record left them:
queued ones queue again, an interrupted submit is checked against HealthImaging, submitted ones
are watched again. A record drops the update's document once HealthImaging has acknowledged the
submit (`journal.at_rest`): an operation resumed past its submit only follows its image set.

The runner publishes what it observes into each `Operation`; streams
(service/operations/event_streams.py) read
it there, and ask only `adopt`: an `unwatched` operation is watched again when followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any, cast

import structlog

from service.admission.budget import UPDATE, Budget
from service.admission.write_queue import Admission, Draining, Ticket
from service.backend.healthimaging import HealthImaging
from service.core.config import LimitSettings, WatchSettings
from service.core.errors import (
    Aborted,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NoCredentials,
    NotFound,
    ProxyError,
    RedisUnavailable,
    Unavailable,
    echo,
)
from service.core.model import (
    AuthMethod,
    Caller,
    ImageSetStatus,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
)
from service.journal import RESUBMITTABLE, Journal, followed
from service.normaliser.updates import normalise
from service.observability import audit, tracing
from service.observability.metrics import Metrics
from service.operations import awaiting
from service.operations import operation as ops
from service.operations.events import (
    Finished,
    Item,
    Queued,
    StatusChanged,
    Submitted,
    record_error,
    replay,
    to_payload,
)
from service.operations.image_set_polls import Watcher
from service.operations.landed import Landing
from service.operations.operation import Lost, Operation, Unwatched, same_request

log = structlog.get_logger(__name__)

__all__ = ["Operation", "Runner"]

_OUTAGE_PAUSE = 0.5
"""Seconds between tries while Redis is unreachable (each try is itself retried by redis-py)."""


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
        self._metrics = metrics
        self._landing = Landing(backend, budget, metrics)
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
            same_request(record, request)
        return record

    async def admit(self, principal: str, deadline: float | None) -> None:
        """Refuse now what the queue cannot take in time (RESOURCE_EXHAUSTED)."""
        await self._admission.admit(principal, deadline)

    async def record(self, fresh: OperationRecord) -> OperationRecord:
        """Journal a new operation; the earlier one if its idempotency key won a race with us."""
        record = await self._journal.create(fresh)
        if record.id != fresh.id:
            same_request(record, fresh.request)
        return record

    def launch(self, record: OperationRecord, caller: Caller, plan: UpdatePlan) -> None:
        """Acknowledge a new operation (`authorized`, or `approval_required`) and run it."""
        operation = Operation(record, caller, plan)
        self._emit(operation, replay(record)[0])
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
            await self._advance_through_outages(operation)
        except Draining as error:
            operation.publish(error)  # it stays recorded as it was, for whoever resumes it
        except Lost:
            await ops.tell_lost(operation, self._journal)
        except asyncio.CancelledError:
            if operation.cancelled_by is not None:  # CancelUpdate: it ends before any send
                await ops.end_cancelled(operation, self._save, self._emit)
            elif not operation.let_go:
                raise  # shutting down; a let-go one's streams were told by `let_go_all`
        except Unwatched as stop:
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

    async def _advance_through_outages(self, operation: Operation) -> None:
        """Redis unreachable is no failure of the update: pause, then go on from the record (the
        lease ends this if the outage outlasts it: `let_go_all`)."""
        while True:
            try:
                return await self._advance(operation)
            except RedisUnavailable as exc:
                log.warning("operation_paused", operation_id=operation.id, error=exc.reason)
                self._admission.withdraw(operation.id)
                await asyncio.sleep(_OUTAGE_PAUSE)

    async def _advance(self, operation: Operation) -> None:
        if operation.record.state == "awaiting_approval":
            await awaiting.until_decided(operation, self._journal, self._emit)
        interrupted = operation.record.state == "submitting"
        if interrupted:
            await self._recover_submit(operation)
            if operation.record.state == "queued":
                self._metrics.resubmits_after_takeover.inc()
                log.warning("resubmit_after_takeover", operation_id=operation.id)
        if operation.record.state == "queued":
            await self._take_turn(operation, again=interrupted)
            await self._submit(operation)
            await self._follow(operation, operation.record.submitted)
        elif not operation.record.finished:  # submitted before this process took it on
            await self._admission.hold(operation.image_set, operation.id)
            await self._follow(operation, None)

    @tracing.stage("admission.queue")
    async def _take_turn(self, operation: Operation, *, again: bool) -> None:
        record = operation.record
        ticket = Ticket(
            record.id, record.principal, *operation.image_set, record.created_at, record.deadline
        )

        def notify(position: int, start: float) -> None:
            self._emit(operation, Queued(record.id, time.time(), position, start))

        queue = self._admission.requeue if again else self._admission.enqueue
        try:
            await queue(ticket, notify)
        except asyncio.CancelledError:
            self._admission.withdraw(record.id)
            raise

    @tracing.stage("healthimaging.submit")
    async def _submit(self, operation: Operation) -> None:
        plan, attempts = operation.plan, 0

        async def fenced_send() -> ImageSetStatus:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # again after a throttle: fenced again, with a new deadline
                await self._fence(operation)
            return await self._backend.update(plan)

        # Fenced (owner and epoch checked in the journal) right before the send, with how long
        # the call may still land: a successor waits that out before resubmitting.
        await self._fence(operation)
        try:
            status = await self._budget.call(
                UPDATE, fenced_send, acquired=True, deadline=operation.record.deadline
            )
        except NoCredentials:
            await self._forget_key(operation.record)  # nothing was sent: a retry submits again
            raise
        except RedisUnavailable:  # the budget's, before a send: nothing is in flight
            await self._save(operation, state="queued", inflight_until=0.0)
            raise  # paused, then queued again
        except Aborted as error:  # a ConflictException: maybe our own earlier write won
            if (
                error.reason != "BACKEND_CONFLICT"
                or (ours := await self._landing.ours(plan)) is None
            ):
                raise
            status = ours
        except Unavailable as error:  # never retried blindly: find out whether it happened
            landed, outcome = await self._landing.after_no_answer(plan)
            if not isinstance(landed, ImageSetStatus):
                if landed is False:  # a retry with the same key must submit again
                    await self._forget_key(operation.record)
                raise Unavailable(f"{error.message}; {outcome}", aws_code=error.aws_code) from error
            status = landed
        await self._save(operation, state="submitted", submitted=status, last_status=status)
        audit.submitted(operation.caller, operation.record)
        self._emit(operation, Submitted(operation.id, time.time(), status))

    async def _forget_key(self, record: OperationRecord) -> None:
        key = record.request.idempotency_key
        if key:
            await self._journal.forget_key(record.principal, key, record.id)

    async def _fence(self, operation: Operation) -> None:
        inflight_until = time.time() + self._backend.longest_call_seconds
        await self._save(operation, state="submitting", inflight_until=inflight_until)

    async def _recover_submit(self, operation: Operation) -> None:
        """Interrupted while submitting: did the write reach HealthImaging before the restart?"""
        record = operation.record
        status = await self._landing.after_interruption(operation.plan, record.inflight_until)
        if status is None:
            await self._save(operation, state="queued")  # it did not: submit it again
            return
        await self._save(operation, state="submitted", submitted=status, last_status=status)
        audit.submitted(operation.caller, operation.record)
        self._emit(operation, Submitted(operation.id, time.time(), status))

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
            raise Unwatched(
                DeadlineExceeded(
                    f"update still {operation.described} after "
                    f"{self._settings.timeout_seconds:g} s; "
                    f"re-attach with WatchUpdate({operation.id})"
                )
            ) from None

    async def _unwatch(self, operation: Operation, error: DeadlineExceeded) -> None:
        """Stop polling a stuck update; it no longer holds its image set's turn either."""
        await self._end(operation, error, state="unwatched")
        with contextlib.suppress(ProxyError, OSError):
            await self._admission.release(operation.image_set, operation.id)

    async def _fail(self, operation: Operation, error: ProxyError) -> None:
        await self._end(operation, error, state="failed", error=record_error(error))

    async def _end(self, operation: Operation, told: ProxyError, **changes: Any) -> None:
        """Journal how the operation ends, then tell its streams even if that write failed."""
        try:
            await self._save(operation, **changes)
        except Lost:  # fenced: another owner has it, and may well tell a different outcome
            told = operation.moved("another replica took it over")
        except Exception as exc:  # noqa: BLE001 - the streams are told below either way
            log.error("journal_write_failed", operation_id=operation.id, error=type(exc).__name__)
        self._emit(operation, told)

    async def _finished(self, operation: Operation) -> None:
        with contextlib.suppress(ProxyError, OSError):
            await self._admission.release(operation.image_set, operation.id)
        audit.finished(operation.caller, operation.record)

    async def _save(self, operation: Operation, **changes: Any) -> None:
        """Journal a step; the event telling it gets the next sequence number. Redis
        unreachable: wait and try again (a step that happened must not read as failed) until
        it answers, or this replica lets go of the operation (its lease lapsed)."""
        record = replace(operation.record, seq=operation.seq + 1, **changes)
        while True:
            if operation.let_go:
                raise Lost(operation.id)
            try:
                saved = await self._journal.save(record)
                break
            except RedisUnavailable:
                log.warning("journal_save_waiting", operation_id=operation.id)
                await asyncio.sleep(_OUTAGE_PAUSE)
        if not saved:
            raise Lost(operation.id)
        operation.record = record

    def _emit(self, operation: Operation, item: Item) -> None:
        if operation.let_go:
            return  # fenced: nothing more from this owner
        operation.seq += 1
        operation.publish(item)
        if self._journal.shared:
            payload = to_payload(operation.seq, item)
            payload["epoch"] = operation.record.epoch
            self._journal.publish(operation.id, payload)

    # --- ownership (service/operations/ownership.py)
    # -------------------------------------------------

    def let_go_all(self, why: str) -> list[OperationRecord]:
        """Stop running every operation (its streams end with the re-attach error); returns
        their records, as last known, in case the journal lost them."""
        held = list(self._operations.values())
        for operation in held:
            operation.publish(operation.moved(why))
            if operation.task is not None:
                operation.task.cancel()
            self._admission.withdraw(operation.id)
            self._operations.pop(operation.id, None)
        self._metrics.operations_let_go.inc(len(held))
        return [operation.record for operation in held]

    def held(self) -> list[OperationRecord]:
        return [operation.record for operation in self._operations.values()]

    async def restore(self, records: list[OperationRecord], *, run: bool) -> None:
        """Write back records the journal lost; `run`: run them here again (they were let go,
        so a newer epoch orders their events after the old owner's)."""
        for record in records:
            if not run:
                await self._journal.restore(record)
            elif record.id not in self._operations:
                await self._journal.restore(replace(record, epoch=record.epoch + 1))
                if not record.finished:
                    await self._resume(replace(record, epoch=record.epoch + 1))

    async def close(self) -> None:
        """Cancel every running operation; their records stay as they were, for the next owner."""
        tasks = [op.task for op in self._operations.values() if op.task and not op.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
