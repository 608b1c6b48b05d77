"""Admission stage: allowed updates wait their turn in a fair, bounded, deadline-aware queue.

Round-robin between principals (first come, first served within one), so a noisy caller cannot
starve the others. One dispatcher hands out turns: it waits until some queued update may go (its
image set has no update in flight, its data store is under the concurrent-update quota), then for
a write slot from the quota budget, and gives the slot to the fairest update that may go at that
moment. Callers learn their position and estimated start while they wait; a request whose deadline
the queue cannot meet is refused at once, and one whose deadline passes while queued is dropped,
never submitted late.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from service.admission.budget import UPDATE, Budget
from service.admission.fairness import FairQueue, Flows
from service.core.config import AdmissionSettings
from service.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from service.core.model import ImageSetKey
from service.observability.metrics import Metrics

log = structlog.get_logger(__name__)

Notify = Callable[[int, float], None]
"""Told (position, estimated start as epoch seconds) while an update waits."""

_RECOMPUTE_SECONDS = 0.25  # positions of the whole queue are recomputed at most this often
_SWEEP_SECONDS = 5.0  # how often holds blocking queued updates are checked for staleness


@dataclass(frozen=True)
class Ticket:
    """One update waiting for its turn."""

    operation_id: str
    principal: str
    datastore_id: str
    image_set_id: str
    enqueued_at: float
    deadline: float | None = None
    """Epoch seconds by which it must have started; None = no deadline."""

    @property
    def key(self) -> ImageSetKey:
        return ImageSetKey(self.datastore_id, self.image_set_id)


class TicketQueue(FairQueue[Ticket]):
    """The fair queue of updates waiting for a write: a flow per principal."""

    def __init__(self) -> None:
        super().__init__(lambda ticket: ticket.principal)

    def withdraw(self, operation_id: str) -> Ticket | None:
        for ticket in self.items():
            if ticket.operation_id == operation_id:
                self.remove(ticket)
                return ticket
        return None

    def oldest(self) -> float | None:
        """When the longest-waiting ticket was enqueued (each principal's queue is FIFO)."""
        return min((ticket.enqueued_at for ticket in self.heads()), default=None)

    def expired(self, now: float) -> list[Ticket]:
        """Remove and return the tickets whose deadline has passed."""
        return self.drop(lambda ticket: ticket.deadline is not None and ticket.deadline <= now)


def estimated_start(base: float, position: int, interval: float) -> float:
    """Position 1 starts at `base` (the next write slot); each one ahead costs one interval."""
    return base + (position - 1) * interval


class InFlight(Protocol):
    """Image sets with a submitted, unfinished update (shared by replicas when the journal is)."""

    async def snapshot(self) -> Mapping[ImageSetKey, str]: ...
    async def mark(self, key: ImageSetKey, operation_id: str) -> bool: ...
    async def release(self, key: ImageSetKey, operation_id: str) -> None: ...

    async def stale(self, operation_id: str) -> bool:
        """Whether this holder's operation is over or unknown (it died before releasing)."""
        ...


class Draining(Unavailable):
    """This process is shutting down; the queued update stays recorded for whoever resumes it."""

    reason = "PROXY_SHUTTING_DOWN"


@dataclass(eq=False)
class _Waiter:
    ticket: Ticket
    notify: Notify
    turn: asyncio.Future[None] = field(default_factory=asyncio.Future)
    position: int = 0
    told_at: float = 0.0


class Admission:
    """The queue of this process and its dispatcher."""

    def __init__(
        self,
        settings: AdmissionSettings,
        budget: Budget,
        in_flight: InFlight,
        metrics: Metrics,
        flows: Flows,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._flows = flows
        self._budget = budget
        self._in_flight = in_flight
        self._metrics = metrics
        self._clock = clock
        self._queue = TicketQueue()
        flows.register(self)
        self._waiters: dict[str, _Waiter] = {}
        self._changed = asyncio.Event()
        self._slot_at: float | None = None
        self._recomputed_at = 0.0
        self._swept_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        metrics.queue_depth.set_function(lambda: len(self._queue))
        metrics.oldest_waiting.labels("queued").set_function(
            lambda: max(0.0, self._clock() - (self._queue.oldest() or self._clock()))
        )

    def __len__(self) -> int:
        return len(self._queue)

    def waiting(self, principal: str) -> int:
        return self._queue.count(principal)

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch_forever(), name="admission")

    async def close(self) -> None:
        """Stop handing out turns; waiting updates are told to go elsewhere (they stay recorded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiter in self._waiters.values():
            if not waiter.turn.done():
                waiter.turn.set_exception(
                    Draining(
                        "this proxy is shutting down; the update stays queued: re-attach with "
                        f"WatchUpdate({waiter.ticket.operation_id!r})"
                    )
                )
        self._waiters.clear()

    # --- callers -----------------------------------------------------------------------------

    async def admit(self, principal: str, deadline: float | None) -> None:
        """Refuse now what the queue cannot take or serve in time (RESOURCE_EXHAUSTED)."""
        settings = self._settings
        interval = max(1.0, self._budget.interval(UPDATE))
        if len(self._queue) >= settings.max_queued:
            self._refuse("queue_full", "the update queue is full", interval)
        try:  # everything this caller has waiting, at every stage
            # One of this caller's updates leaves the queue about once per round of callers.
            self._flows.admit(principal, interval * max(1, self._queue.flows))
        except ResourceExhausted:
            self._metrics.queue_refusals.labels("principal_full").inc()
            raise
        if deadline is None:
            return
        now = self._clock()
        start = await self.estimate(self._queue.position_if_added(principal))
        if start > now and start + settings.deadline_margin_seconds > deadline:
            self._metrics.queue_refusals.labels("deadline").inc()
            raise ResourceExhausted(
                f"the update would start in about {start - now:.1f} s, too close to the call's "
                f"deadline (a {settings.deadline_margin_seconds:g} s margin is kept to submit); "
                "retry with a longer deadline or later",
                retry_after_seconds=start - now,
                reason="QUEUE_WAIT_EXCEEDS_DEADLINE",
            )

    def _refuse(self, reason: str, message: str, retry: float) -> None:
        self._metrics.queue_refusals.labels(reason).inc()
        raise ResourceExhausted(message, retry_after_seconds=retry, reason=reason.upper())

    def enqueue(self, ticket: Ticket, notify: Notify) -> asyncio.Future[None]:
        """Queue `ticket`; the future resolves when it is its turn to be submitted."""
        busy = self._slot_at is not None or len(self._queue) > 0
        position = self._queue.position_if_added(ticket.principal)
        waiter = _Waiter(ticket, notify)
        self._queue.push(ticket)
        self._waiters[ticket.operation_id] = waiter
        if busy:  # otherwise the dispatcher may take it at once, without a `queued` event
            base = self._slot_at or self._clock()
            start = estimated_start(base, position, self._budget.interval(UPDATE))
            self._tell(waiter, position, start, time.monotonic())
        self._changed.set()
        return waiter.turn

    def requeue(self, ticket: Ticket, notify: Notify) -> asyncio.Future[None]:
        """Queue again at the front of its principal's line (an interrupted submit)."""
        waiter = _Waiter(ticket, notify)
        self._queue.push(ticket, front=True)
        self._waiters[ticket.operation_id] = waiter
        self._changed.set()
        return waiter.turn

    def withdraw(self, operation_id: str) -> None:
        self._queue.withdraw(operation_id)
        self._waiters.pop(operation_id, None)

    async def hold(self, key: ImageSetKey, operation_id: str) -> None:
        """An update resumed after a restart is in flight again."""
        await self._in_flight.mark(key, operation_id)

    async def release(self, key: ImageSetKey, operation_id: str) -> None:
        await self._in_flight.release(key, operation_id)
        self._changed.set()

    async def estimate(self, position: int) -> float:
        if self._slot_at is not None:
            base = self._slot_at
        else:
            base = self._clock() + await self._budget.next_start(UPDATE)
        return estimated_start(base, position, self._budget.interval(UPDATE))

    # --- the dispatcher ----------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            try:
                await self._dispatch_next()
            except Exception:  # the queue must outlive a journal or Redis hiccup (logged)
                log.exception("dispatch_failed")
                self._slot_at = None
                await asyncio.sleep(1.0)

    async def _dispatch_next(self) -> None:
        await self._until_one_may_go()
        wait = await self._budget.reserve(UPDATE)
        if wait > 0:
            self._slot_at = self._clock() + wait
            await self._idle(wait)
            self._slot_at = None
        await self._dispatch_one()

    async def _until_one_may_go(self) -> None:
        while True:
            self._changed.clear()
            self._drop_expired()
            if len(self._queue):
                in_flight = await self._snapshot()
                if self._queue.first(self._may_go(in_flight)):
                    return
                await self._sweep(in_flight)
                await self._publish_positions()
            await self._wait_changed(self._settings.position_interval_seconds)

    async def _idle(self, seconds: float) -> None:
        """Sleep until the reserved slot, telling waiters their positions meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._changed.clear()
            await self._publish_positions()
            await self._wait_changed(min(left, self._settings.position_interval_seconds))

    async def _wait_changed(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()

    async def _dispatch_one(self) -> None:
        self._drop_expired()
        ticket = self._queue.pop(self._may_go(await self._snapshot()))
        if ticket is None:
            return  # the slot goes unused: never worse for the quota
        marked = False
        try:
            marked = await self._in_flight.mark(ticket.key, ticket.operation_id)
        finally:
            if not marked:  # another replica got there first, or the journal did not answer
                self._queue.push(ticket, front=True)
        if not marked:
            return
        waiter = self._waiters.pop(ticket.operation_id)
        self._metrics.queue_wait_seconds.observe(max(0.0, self._clock() - ticket.enqueued_at))
        self._recomputed_at = 0.0  # everyone behind moved up
        if not waiter.turn.done():
            waiter.turn.set_result(None)

    async def _sweep(self, in_flight: Mapping[ImageSetKey, str]) -> None:
        """Free image sets held by operations that ended without letting go (a crash)."""
        moment = time.monotonic()
        if moment - self._swept_at < _SWEEP_SECONDS:
            return
        self._swept_at = moment
        for key in {ticket.key for ticket in self._queue.order()} & in_flight.keys():
            holder = in_flight[key]
            if await self._in_flight.stale(holder):
                log.warning(
                    "stale_hold_released", image_set_id=key.image_set_id, operation_id=holder
                )
                await self._in_flight.release(key, holder)
                self._changed.set()

    async def _snapshot(self) -> Mapping[ImageSetKey, str]:
        return await self._in_flight.snapshot()

    def _may_go(self, in_flight: Mapping[ImageSetKey, str]) -> Callable[[Ticket], bool]:
        per_datastore = Counter(datastore for datastore, _ in in_flight)
        limit = self._settings.max_in_flight_per_datastore

        def may_go(ticket: Ticket) -> bool:
            holder = in_flight.get(ticket.key)
            if holder is not None:
                return holder == ticket.operation_id
            return per_datastore[ticket.datastore_id] < limit

        return may_go

    def _drop_expired(self) -> None:
        for ticket in self._queue.expired(self._clock()):
            waiter = self._waiters.pop(ticket.operation_id, None)
            if waiter is not None and not waiter.turn.done():
                waiter.turn.set_exception(
                    DeadlineExceeded(
                        "the call's deadline passed while the update waited for its turn; "
                        "it was not submitted"
                    )
                )

    async def _publish_positions(self) -> None:
        """Tell each waiter whose position changed (at most once per position interval)."""
        moment = time.monotonic()
        if not self._waiters or moment - self._recomputed_at < _RECOMPUTE_SECONDS:
            return
        self._recomputed_at = moment
        base = await self.estimate(1)
        interval = self._budget.interval(UPDATE)
        for position, ticket in enumerate(self._queue.order(), 1):
            waiter = self._waiters.get(ticket.operation_id)
            if waiter is None or waiter.position == position:
                continue
            if (
                waiter.position
                and moment - waiter.told_at < self._settings.position_interval_seconds
            ):
                continue
            self._tell(waiter, position, estimated_start(base, position, interval), moment)

    def _tell(self, waiter: _Waiter, position: int, start: float, moment: float) -> None:
        waiter.position, waiter.told_at = position, moment
        waiter.notify(position, max(start, self._clock()))  # a turn that is due starts now
