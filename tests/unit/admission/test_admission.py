"""Admission: fair order, positions, bounds, deadlines, one update in flight per image set."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.admission.buckets import LocalStore
from service.admission.budget import Budget
from service.admission.fairness import Flows
from service.admission.write_queue import (
    Admission,
    Draining,
    Notify,
    Ticket,
    TicketQueue,
    estimated_start,
)
from service.core.config import AdmissionSettings, BudgetSettings
from service.core.errors import DeadlineExceeded, ResourceExhausted
from service.core.model import ImageSetKey
from service.observability.metrics import Metrics


def ticket(principal: str, n: int, image_set: str = "", deadline: float | None = None) -> Ticket:
    return Ticket(f"{principal}{n}", principal, "ds", image_set or f"{principal}{n}", 0.0, deadline)


def ids(tickets: list[Ticket]) -> list[str]:
    return [t.operation_id for t in tickets]


def queue_of(*tickets: Ticket) -> TicketQueue:
    queue = TicketQueue()
    for one in tickets:
        queue.push(one)
    return queue


# --- the pure queue -------------------------------------------------------------------------------


def test_order_is_round_robin_between_principals_and_fifo_within_one() -> None:
    queue = queue_of(*(ticket("a", n) for n in range(1, 4)), ticket("b", 1), ticket("c", 1))
    queue.push(ticket("c", 2))
    assert ids(queue.order()) == ["a1", "b1", "c1", "a2", "c2", "a3"]


def test_pop_serves_the_next_principal_then_moves_it_to_the_back() -> None:
    queue = queue_of(ticket("a", 1), ticket("a", 2), ticket("b", 1))
    served = [queue.pop(lambda t: True) for _ in range(3)]
    assert ids([t for t in served if t]) == ["a1", "b1", "a2"]
    assert len(queue) == 0
    assert queue.pop(lambda t: True) is None


def test_a_noisy_principal_cannot_starve_a_quiet_one() -> None:
    queue = queue_of(*(ticket("noisy", n) for n in range(100)))
    queue.push(ticket("quiet", 1))
    assert queue.order().index(ticket("quiet", 1)) == 1


def test_a_ticket_that_may_not_go_keeps_its_place_and_the_next_one_goes() -> None:
    queue = queue_of(ticket("a", 1, image_set="locked"), ticket("a", 2), ticket("b", 1))
    first = queue.pop(lambda t: t.image_set_id != "locked")
    assert first is not None and first.operation_id == "a2"
    assert ids(queue.order()) == ["b1", "a1"]


def test_expired_tickets_leave_the_queue() -> None:
    queue = queue_of(ticket("a", 1, deadline=10.0), ticket("a", 2), ticket("b", 1, deadline=30.0))
    assert ids(queue.expired(now=20.0)) == ["a1"]
    assert ids(queue.order()) == ["a2", "b1"]


def test_remove_takes_one_ticket_out() -> None:
    queue = queue_of(ticket("a", 1), ticket("b", 1))
    removed = queue.withdraw("a1")
    assert removed is not None and ids(queue.order()) == ["b1"]
    assert queue.withdraw("missing") is None


@given(st.lists(st.sampled_from("abcd"), max_size=30), st.sampled_from("abcde"), st.integers(0, 5))
def test_position_if_added_is_where_the_ticket_lands(
    pushes: list[str], newcomer: str, pops: int
) -> None:
    queue = queue_of(*(ticket(p, n) for n, p in enumerate(pushes)))
    for _ in range(pops):
        queue.pop(lambda t: True)
    predicted = queue.position_if_added(newcomer)
    late = ticket(newcomer, 999)
    queue.push(late)
    assert queue.order().index(late) + 1 == predicted


def test_estimated_start_is_one_interval_per_place_ahead() -> None:
    assert estimated_start(100.0, 1, 4.0) == 100.0
    assert estimated_start(100.0, 3, 4.0) == 108.0


# --- the dispatcher -------------------------------------------------------------------------------


class Held:
    """Image sets in flight, in memory (what the SQLite journal keeps for one process)."""

    def __init__(self) -> None:
        self.keys: dict[ImageSetKey, str] = {}
        self.ended: set[str] = set()

    async def snapshot(self) -> Mapping[ImageSetKey, str]:
        return self.keys

    async def mark(self, key: ImageSetKey, operation_id: str) -> bool:
        return self.keys.setdefault(key, operation_id) == operation_id

    async def release(self, key: ImageSetKey, operation_id: str) -> None:
        if self.keys.get(key) == operation_id:
            del self.keys[key]

    async def stale(self, operation_id: str) -> bool:
        return operation_id in self.ended


def admission(
    rate: float = 50.0, limits: AdmissionSettings | None = None
) -> tuple[Admission, Held]:
    budget_settings = BudgetSettings(update_rate=rate, update_burst=1.0, headroom=1.0)
    budget = Budget(budget_settings, "test", LocalStore(budget_settings), Metrics())
    held = Held()
    limits = limits or AdmissionSettings(position_interval_seconds=0.05)
    return Admission(limits, budget, held, Metrics(), Flows(limits.max_queued_per_principal)), held


Told = list[tuple[str, int, float]]


def notifier(told: Told, operation_id: str) -> Notify:
    return lambda position, start: told.append((operation_id, position, start))


async def test_turns_are_given_round_robin() -> None:
    queue, held = admission()
    tickets = [ticket("a", 1), ticket("a", 2), ticket("a", 3), ticket("b", 1), ticket("b", 2)]
    order: list[str] = []
    turns = [queue.enqueue(t, lambda *_: None) for t in tickets]
    for one, turn in zip(tickets, turns, strict=True):
        turn.add_done_callback(lambda _, op=one.operation_id: order.append(op))  # type: ignore[misc]
    queue.start()
    try:
        await asyncio.wait_for(asyncio.gather(*turns), 5)
    finally:
        await queue.close()
    assert order == ["a1", "b1", "a2", "b2", "a3"]
    assert set(held.keys.values()) == {t.operation_id for t in tickets}


async def test_waiters_hear_their_positions_move_up() -> None:
    queue, _ = admission(rate=5.0)
    told: Told = []
    turns = [queue.enqueue(ticket("a", n), notifier(told, f"a{n}")) for n in range(1, 4)]
    queue.start()
    try:
        await asyncio.wait_for(asyncio.gather(*turns), 5)
    finally:
        await queue.close()
    last = [(op, position) for op, position, _ in told if op == "a3"]
    assert [position for _, position in last] == sorted({p for _, p in last}, reverse=True)
    assert last[-1][1] == 1
    starts = [start for op, _, start in told if op == "a3"]
    assert starts[0] >= time.time() - 5  # an estimate in epoch seconds, not a duration


async def test_an_image_set_with_an_update_in_flight_waits_until_it_is_released() -> None:
    queue, held = admission()
    first = queue.enqueue(ticket("a", 1, image_set="same"), lambda *_: None)
    second = queue.enqueue(ticket("b", 1, image_set="same"), lambda *_: None)
    queue.start()
    try:
        await asyncio.wait_for(first, 5)
        await asyncio.sleep(0.3)
        assert not second.done()
        await queue.release(ImageSetKey("ds", "same"), "a1")
        await asyncio.wait_for(second, 5)
    finally:
        await queue.close()
    assert held.keys == {("ds", "same"): "b1"}


async def test_the_data_store_quota_of_concurrent_updates_is_kept() -> None:
    queue, held = admission(limits=AdmissionSettings(max_in_flight_per_datastore=2))
    turns = [queue.enqueue(ticket("a", n), lambda *_: None) for n in range(3)]
    queue.start()
    try:
        await asyncio.wait_for(asyncio.gather(*turns[:2]), 5)
        await asyncio.sleep(0.3)
        assert not turns[2].done()
        await queue.release(ImageSetKey("ds", "a0"), "a0")
        await asyncio.wait_for(turns[2], 5)
    finally:
        await queue.close()
    assert len(held.keys) == 2


async def test_the_queue_is_bounded_in_total_and_per_principal() -> None:
    queue, _ = admission(limits=AdmissionSettings(max_queued=3, max_queued_per_principal=2))
    queue.enqueue(ticket("a", 1), lambda *_: None)
    queue.enqueue(ticket("a", 2), lambda *_: None)
    with pytest.raises(ResourceExhausted) as per_principal:
        await queue.admit("a", None)
    assert per_principal.value.reason == "PRINCIPAL_FULL"
    assert per_principal.value.retry_after_seconds > 0
    await queue.admit("b", None)
    queue.enqueue(ticket("b", 1), lambda *_: None)
    with pytest.raises(ResourceExhausted) as full:
        await queue.admit("c", None)
    assert full.value.reason == "QUEUE_FULL"


async def test_a_deadline_the_queue_cannot_meet_is_refused_at_once() -> None:
    queue, _ = admission(rate=1.0)  # one write a second, and three queued ahead
    for n in range(3):
        queue.enqueue(ticket("a", n), lambda *_: None)
    with pytest.raises(ResourceExhausted) as refused:
        await queue.admit("b", deadline=time.time() + 1.5)
    assert refused.value.reason == "QUEUE_WAIT_EXCEEDS_DEADLINE"
    assert refused.value.retry_after_seconds >= 1.0
    await queue.admit("b", deadline=time.time() + 60)
    await queue.admit("b", deadline=None)


async def test_a_deadline_that_passes_while_queued_drops_the_update() -> None:
    queue, held = admission()
    blocker = queue.enqueue(ticket("a", 1, image_set="same"), lambda *_: None)
    late = queue.enqueue(ticket("b", 1, "same", deadline=time.time() + 0.2), lambda *_: None)
    queue.start()
    try:
        await asyncio.wait_for(blocker, 5)
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(late, 5)
    finally:
        await queue.close()
    assert held.keys == {("ds", "same"): "a1"}


async def test_closing_tells_waiters_to_go_elsewhere() -> None:
    queue, _ = admission()
    blocker = queue.enqueue(ticket("a", 1, image_set="same"), lambda *_: None)
    waiting = queue.enqueue(ticket("a", 2, image_set="same"), lambda *_: None)
    queue.start()
    await asyncio.wait_for(blocker, 5)
    await queue.close()
    with pytest.raises(Draining):
        await waiting


async def test_a_hold_left_by_an_operation_that_ended_is_swept_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.admission.write_queue._SWEEP_SECONDS", 0.0)
    queue, held = admission()
    # its process died between finishing and releasing
    held.keys[ImageSetKey("ds", "same")] = "crashed"
    held.ended.add("crashed")
    turn = queue.enqueue(ticket("a", 1, image_set="same"), lambda *_: None)
    queue.start()
    try:
        await asyncio.wait_for(turn, 5)
    finally:
        await queue.close()
    assert held.keys == {("ds", "same"): "a1"}
