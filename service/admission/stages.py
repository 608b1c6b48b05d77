"""Shared stages: a resource callers share, handed out in fair turns
(service/admission/fairness.py).

A stage lets `concurrency` holders in at once; the others wait in their principal's queue and
are served round-robin between principals. The OPA decisions are one stage (`max_deciding` at
once); the GetImageSetMetadata reads and the GetImageSet polls are stages of one holder that
waits for the budget's next slot, so each slot of the quota goes to the fairest waiter rather
than to whoever happened to ask first. A waiter is refused only when its principal's queues are
full (across every stage, `Flows`) or its deadline passes before its turn (RESOURCE_EXHAUSTED +
RetryInfo); one whose caller goes away leaves the queue, and a turn it was just given passes on.

The free path (nobody waiting, a holder's place free) is a counter: no future, no queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from service.admission.budget import GET_IMAGE_SET, GET_IMAGE_SET_METADATA, Budget
from service.admission.fairness import FairQueue, Flows
from service.core.config import AdmissionSettings, LimitSettings
from service.core.errors import ResourceExhausted
from service.observability.metrics import Metrics

T = TypeVar("T")

DEADLINE = "QUEUE_WAIT_EXCEEDS_DEADLINE"


@dataclass(eq=False)
class _Waiter:
    flow: str
    turn: asyncio.Future[None] = field(default_factory=asyncio.Future)


class Turn:
    """One place in a stage for an `async with` block (a plain object: this is the hot path)."""

    __slots__ = ("_deadline", "_flow", "_refusable", "_stage")

    def __init__(
        self, stage: FairStage, flow: str, deadline: float | None, refusable: bool
    ) -> None:
        self._stage, self._flow, self._deadline, self._refusable = stage, flow, deadline, refusable

    async def __aenter__(self) -> None:
        await self._stage.acquire(self._flow, self._deadline, self._refusable)

    async def __aexit__(self, *exc_info: object) -> None:
        self._stage.release()


class FairStage:
    """At most `concurrency` holders; the rest wait their principal's turn."""

    def __init__(
        self,
        name: str,
        concurrency: int,
        flows: Flows,
        metrics: Metrics,
        *,
        retry_after_seconds: float = 1.0,
        deadline_margin_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self._free = concurrency
        self._flows = flows
        self._metrics = metrics
        self._retry_after = retry_after_seconds
        self._margin = deadline_margin_seconds
        self._queue: FairQueue[_Waiter] = FairQueue(lambda waiter: waiter.flow)
        flows.register(self)
        metrics.stage_waiting.labels(name).set_function(lambda: len(self._queue))

    def waiting(self, flow: str) -> int:
        return self._queue.count(flow)

    def turn(self, flow: str, deadline: float | None = None, *, refusable: bool = True) -> Turn:
        """Hold one place for an `async with` block. `deadline`: epoch seconds by which the turn
        must come (less the margin); `refusable=False` (the proxy's own polls) is never refused
        for a full queue, only counted."""
        return Turn(self, flow, deadline, refusable)

    async def acquire(self, flow: str, deadline: float | None, refusable: bool) -> None:
        """Take a place, waiting the flow's turn if none is free (`turn` is the way in)."""
        if self._free and not self._queue:
            self._free -= 1
        else:
            await self._wait(flow, deadline, refusable)

    async def _wait(self, flow: str, deadline: float | None, refusable: bool) -> None:
        if refusable:
            try:
                self._flows.admit(flow, self._retry_after)
            except ResourceExhausted as refused:
                self._metrics.stage_refusals.labels(self.name, refused.reason.lower()).inc()
                raise
        waiter = _Waiter(flow)
        self._queue.push(waiter)
        try:
            if deadline is None:
                await waiter.turn
                return
            left = deadline - self._margin - time.time()
            async with asyncio.timeout(max(0.0, left)):
                await waiter.turn
        except TimeoutError:
            if self._given(waiter):
                return  # the turn came as the deadline did: take it
            self._queue.remove(waiter)
            self._metrics.stage_refusals.labels(self.name, "deadline").inc()
            raise ResourceExhausted(
                "the request waited its turn until too close to the call's deadline; "
                "retry with a longer deadline or later",
                self._retry_after,
                reason=DEADLINE,
            ) from None
        except BaseException:  # the caller went away: leave, or pass on a turn just given
            if self._given(waiter):
                self.release()
            else:
                self._queue.remove(waiter)
            raise

    @staticmethod
    def _given(waiter: _Waiter) -> bool:
        return waiter.turn.done() and not waiter.turn.cancelled()

    def release(self) -> None:
        """The place goes straight to the fairest waiter, else back to the free ones."""
        while (waiter := self._queue.pop()) is not None:
            if not waiter.turn.done():  # a cancelled one is on its way out
                waiter.turn.set_result(None)
                return
        self._free += 1


class PacedCalls:
    """HealthImaging calls of one operation through its budget, each slot to the fairest waiter:
    one holder of `stage` waits for the budget's next slot at a time, then makes its call."""

    def __init__(self, stage: FairStage, budget: Budget, operation: str) -> None:
        self._stage = stage
        self._budget = budget
        self._operation = operation

    async def call(
        self,
        flow: str,
        request: Callable[[], Awaitable[T]],
        deadline: float | None = None,
        *,
        refusable: bool = True,
    ) -> T:
        if self._budget.enabled:  # without budgets there is no slot to share: no turn to wait
            async with self._stage.turn(flow, deadline, refusable=refusable):
                await self._budget.acquire(self._operation)
        return await self._budget.call(
            self._operation, request, acquired=self._budget.enabled, deadline=deadline
        )


@dataclass(frozen=True)
class Stages:
    """Every stage callers share, bounded together per principal by `flows`."""

    flows: Flows
    decisions: FairStage
    reference_reads: PacedCalls
    polls: PacedCalls


def shared_stages(
    admission: AdmissionSettings, limits: LimitSettings, budget: Budget, metrics: Metrics
) -> Stages:
    flows = Flows(admission.max_queued_per_principal)

    def stage(name: str, concurrency: int) -> FairStage:
        return FairStage(
            name,
            concurrency,
            flows,
            metrics,
            retry_after_seconds=limits.retry_after_seconds,
            deadline_margin_seconds=admission.deadline_margin_seconds,
        )

    return Stages(
        flows,
        stage("decisions", admission.max_deciding),
        PacedCalls(stage("reference_reads", 1), budget, GET_IMAGE_SET_METADATA),
        PacedCalls(stage("polls", 1), budget, GET_IMAGE_SET),
    )
