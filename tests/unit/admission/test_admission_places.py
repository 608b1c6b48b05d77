"""A ticket that goes back into the queue keeps its place at the front of its principal's line."""

from __future__ import annotations

import asyncio

from service.admission.buckets import LocalStore
from service.admission.budget import Budget
from service.admission.fairness import Flows
from service.admission.write_queue import Admission, TicketQueue
from service.core.config import AdmissionSettings, BudgetSettings
from service.observability.metrics import Metrics
from tests.unit.admission.test_admission import Held, admission, ids, queue_of, ticket


def test_a_ticket_pushed_to_the_front_goes_before_its_principals_others() -> None:
    queue = queue_of(ticket("a", 2), ticket("a", 3), ticket("b", 1))
    queue.push(ticket("a", 1), front=True)
    assert ids(queue.order()) == ["a1", "b1", "a2", "a3"]


def test_a_ticket_pushed_back_behind_would_lose_its_place() -> None:
    queue = TicketQueue()
    for one in (ticket("a", 2), ticket("a", 1)):
        queue.push(one)
    assert ids(queue.order()) == ["a2", "a1"]  # the contrast: only `front` keeps a place


async def test_a_requeued_ticket_gets_the_next_turn_of_its_principal() -> None:
    queue, _ = admission()
    order: list[str] = []
    later = [queue.enqueue(ticket("a", n), lambda *_: None) for n in (2, 3)]
    interrupted = queue.requeue(ticket("a", 1), lambda *_: None)
    turns = [interrupted, *later]
    for name, turn in zip(("a1", "a2", "a3"), turns, strict=True):
        turn.add_done_callback(lambda _, op=name: order.append(op))  # type: ignore[misc]
    queue.start()
    try:
        await asyncio.wait_for(asyncio.gather(*turns), 5)
    finally:
        await queue.close()
    assert order == ["a1", "a2", "a3"]


class Contended(Held):
    """Another replica holds the image set the first time this process tries to mark it."""

    def __init__(self, contended_once: str) -> None:
        super().__init__()
        self._contended = {contended_once}

    async def mark(self, key: tuple[str, str], operation_id: str) -> bool:
        if operation_id in self._contended:
            self._contended.discard(operation_id)
            return False
        return await super().mark(key, operation_id)


async def test_a_contended_ticket_keeps_its_place_in_its_principals_line() -> None:
    settings = BudgetSettings(update_rate=50.0, update_burst=1.0, headroom=1.0)
    budget = Budget(settings, "test", LocalStore(settings), Metrics())
    limits = AdmissionSettings(position_interval_seconds=0.05)
    flows = Flows(limits.max_queued_per_principal)
    queue = Admission(limits, budget, Contended("a1"), Metrics(), flows)
    order: list[str] = []
    turns = [queue.enqueue(ticket("a", n), lambda *_: None) for n in (1, 2, 3)]
    for n, turn in enumerate(turns, start=1):
        turn.add_done_callback(lambda _, op=f"a{n}": order.append(op))  # type: ignore[misc]
    queue.start()
    try:
        await asyncio.wait_for(asyncio.gather(*turns), 5)
    finally:
        await queue.close()
    assert order == ["a1", "a2", "a3"]
