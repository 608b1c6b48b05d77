"""Cancelling without processes: a queued operation (waiting behind a stuck one on its image
set) is taken back by its own runner, or by another replica through the journal; either way
it is never submitted and its stream ends with `Cancelled`. Listing pages are pure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from service.core.errors import InvalidArgument, NotCancellable, PermissionDenied
from service.core.model import Caller, Decision, OperationQuery, OperationRecord
from service.observability import audit
from service.observability.metrics import Metrics
from service.operations.events import Cancelled, Event
from service.operations.steering import Steering, page
from tests.unit.operations.inmemory import (
    CALLER,
    ImageSet,
    MemoryJournal,
    Replica,
    Shared,
    new_record,
    plan_of,
    replica,
    update_request,
)

WITHIN = 5.0
STRANGER = Caller("dev:mallory", "dev")
ADMIN = Caller("dev:root", "dev")


class Policy:
    """policies/imaging/operations.rego as far as these tests go: ADMIN may, others not."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def permits(
        self, caller: Caller, action: str, datastore_id: str, facts: dict[str, Any]
    ) -> Decision:
        self.asked.append(action)
        allow = caller == ADMIN
        return Decision(allow, () if allow else ("requires role metadata-admin",), "ops-1")


async def soon(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until `condition` holds."""
    for _ in range(int(WITHIN / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def audited() -> Iterator[list[dict[str, Any]]]:
    with audit.capture() as records:
        yield records


async def launched(one: Replica, operation_id: str) -> OperationRecord:
    record = await one.runner.record(new_record(update_request(), operation_id))
    one.runner.launch(record, CALLER, plan_of(record))
    return record


async def stream(one: Replica, record: OperationRecord) -> list[Event]:
    return [event async for event in one.streams.follow(record)]


async def queued_behind_a_stuck_update(one: Replica, image_set: ImageSet) -> OperationRecord:
    """`first` holds the image set (LOCKED for good); `second` waits for its turn."""
    image_set.stuck = True
    await launched(one, "first")
    await soon(lambda: image_set.submits == 1)
    second = await launched(one, "second")
    await asyncio.sleep(0.05)
    assert one.runner.operation("second") is not None
    assert one.runner.operation("second").record.state == "queued"  # type: ignore[union-attr]
    return second


async def test_the_owner_cancels_a_queued_update_and_its_stream_ends_cancelled(
    audited: list[dict[str, Any]],
) -> None:
    shared, image_set = Shared(), ImageSet()
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        second = await queued_behind_a_stuck_update(one, image_set)
        events = asyncio.create_task(stream(one, second))
        steering = Steering(Policy(), one.runner, one.journal, Metrics())  # type: ignore[arg-type]
        cancelled = await steering.cancel(CALLER, "second")
        told = await asyncio.wait_for(events, WITHIN)
        image_set.stuck = False
    assert cancelled.state == "cancelled" and cancelled.cancelled_by == CALLER.principal
    assert told[-1] == Cancelled("second", told[-1].at, CALLER.principal)
    assert shared.states("second") == ["queued", "cancelled"]
    assert image_set.submits == 1  # the first one only
    [cancel] = [record for record in audited if record["event"] == "cancel"]
    assert (cancel["outcome"], cancel["operation_id"]) == ("cancelled", "second")
    assert not [r for r in audited if r["event"] == "finish" and r["operation_id"] == "second"]


async def test_a_stranger_may_not_cancel_and_a_submitted_update_cannot_be() -> None:
    shared, image_set = Shared(), ImageSet()
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        await queued_behind_a_stuck_update(one, image_set)
        policy = Policy()
        steering = Steering(policy, one.runner, one.journal, Metrics())  # type: ignore[arg-type]
        with pytest.raises(PermissionDenied, match="requires role metadata-admin"):
            await steering.cancel(STRANGER, "second")
        with pytest.raises(NotCancellable) as refused:
            await steering.cancel(ADMIN, "first")  # allowed, but already submitted
        assert refused.value.state == "submitted"
        assert policy.asked == ["cancel", "cancel"]  # the owner is never asked about
        image_set.stuck = False
    assert "cancelled" not in shared.states("first")


async def test_another_replica_cancels_through_the_journal_and_the_owner_never_submits() -> None:
    shared, image_set = Shared(), ImageSet()
    async with (
        replica(MemoryJournal(shared, "a"), image_set) as owner,
        replica(MemoryJournal(shared, "b"), image_set) as other,
    ):
        second = await queued_behind_a_stuck_update(owner, image_set)
        events = asyncio.create_task(stream(owner, second))
        steering = Steering(Policy(), other.runner, other.journal, Metrics())  # type: ignore[arg-type]
        cancelled = await steering.cancel(ADMIN, "second")
        assert cancelled.state == "cancelled"
        image_set.stuck = False  # the first finishes; the owner's turn for the second comes
        told = await asyncio.wait_for(events, WITHIN)  # its next save fails: it lets go
        assert isinstance(told[-1], Cancelled) and told[-1].cancelled_by == ADMIN.principal
        await soon(lambda: owner.runner.operation("second") is None)
    assert image_set.submits == 1
    assert shared.states("second") == ["queued", "cancelled"]  # "submitting" never stored
    assert shared.records["second"].request.updatable_attributes is None  # no document kept


async def test_listing_filters_and_pages_oldest_first() -> None:
    shared, image_set = Shared(), ImageSet()
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        for n in range(5):
            record = new_record(update_request(), f"op-{n}")
            principal = CALLER.principal if n % 2 == 0 else STRANGER.principal
            one.journal.write(replace(record, created_at=float(n), principal=principal))
        policy = Policy()
        steering = Steering(policy, one.runner, one.journal, Metrics())  # type: ignore[arg-type]
        own, token = await steering.list(CALLER, OperationQuery(principal=CALLER.principal))
        assert [r.id for r in own] == ["op-0", "op-2", "op-4"] and token == ""
        assert policy.asked == []  # one's own needs no decision
        mine, _ = await steering.list(CALLER, OperationQuery())  # not allowed others': own
        assert [r.id for r in mine] == ["op-0", "op-2", "op-4"]
        with pytest.raises(PermissionDenied):
            await steering.list(CALLER, OperationQuery(principal=STRANGER.principal))
        first, token = await steering.list(ADMIN, OperationQuery(max_results=2))
        rest, last = await steering.list(ADMIN, OperationQuery(max_results=2, next_token=token))
        assert [r.id for r in first + rest] == ["op-0", "op-1", "op-2", "op-3"] and last
        with pytest.raises(InvalidArgument) as bad:
            await steering.list(ADMIN, OperationQuery(state="paused", next_token="%%"))
        assert [v.field for v in bad.value.violations] == ["state", "next_token"]


def test_a_page_ends_with_an_empty_token() -> None:
    records = [replace(new_record(update_request(), f"op-{n}"), created_at=1.0) for n in range(3)]
    shown, token = page(records, 3, None)
    assert [r.id for r in shown] == ["op-0", "op-1", "op-2"] and token == ""
    shown, token = page(records, 2, (1.0, "op-0"))
    assert [r.id for r in shown] == ["op-1", "op-2"] and token == ""
