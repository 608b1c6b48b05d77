"""Streams of an operation run here: one wake-up per operation, read positions, heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from devstack.polling import eventually
from service.core.errors import DeadlineExceeded
from service.core.model import ImageSetStatus
from service.operations.event_streams import Cursor, LocalStream
from service.operations.events import (
    Authorized,
    Event,
    Finished,
    Heartbeat,
    Queued,
    StatusChanged,
    Submitted,
    to_payload,
)
from service.operations.operation import Operation
from tests.unit.operations.inmemory import ALLOWED, CALLER, new_record, plan_of, update_request

QUIET = 3600.0  # no heartbeat can come during a test
WITHIN = 5.0


def operation() -> Operation:
    record = new_record(update_request())
    op = Operation(record, CALLER, plan_of(record))
    op.publish(Authorized(op.id, 1.0, ALLOWED))
    return op


def status(workflow: str, state: str = "LOCKED") -> ImageSetStatus:
    return ImageSetStatus("d", "i", "2", state, workflow)


async def read(stream: LocalStream, into: list[Event]) -> None:
    async for event in stream:
        into.append(event)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (streams caught up), without timing anything."""

    async def check() -> bool:
        return condition()

    await eventually(check, WITHIN, until=bool, interval=0.0)


async def test_a_late_stream_gets_the_replay_then_live_items_in_order_none_twice() -> None:
    op = operation()
    op.publish(Queued(op.id, 2.0, 3, 0.0))
    second = Queued(op.id, 3.0, 2, 0.0)
    op.publish(second)  # replaces the first in place: a replay tells the latest position only
    early: list[Event] = []
    readers = [asyncio.create_task(read(LocalStream(op, QUIET), early))]
    await until(lambda: len(early) == 2)
    late: list[list[Event]] = []

    async def publish() -> None:
        op.publish(Queued(op.id, 4.0, 1, 0.0))
        await until(lambda: len(early) == 3)  # a live new position is told to who follows
        for n in range(20):
            op.publish(StatusChanged(op.id, 5.0 + n, status(f"S{n}")))
            if n % 3 == 0:  # attach while items keep coming, between and within loop turns
                late.append([])
                readers.append(asyncio.create_task(read(LocalStream(op, QUIET), late[-1])))
            await asyncio.sleep(0)
        op.publish(Finished(op.id, 30.0, status("DONE", "ACTIVE")))

    await publish()
    await asyncio.wait_for(asyncio.gather(*readers), WITHIN)
    assert early == [op.events[0], second, *op.events[1:]]
    assert len(late) == 7
    for events in late:
        assert events == op.events  # the replay so far, then the rest: nothing lost or repeated


async def test_many_streams_of_one_operation_each_get_every_item_exactly_once() -> None:
    op = operation()
    seen: list[list[Event]] = [[] for _ in range(300)]
    readers = [asyncio.create_task(read(LocalStream(op, QUIET), into)) for into in seen]
    await until(lambda: all(len(events) == 1 for events in seen))
    op.publish(Submitted(op.id, 2.0, status("SUBMITTED")))
    for n in range(5):  # several publishes within one loop turn, then some apart
        op.publish(StatusChanged(op.id, 3.0 + n, status(f"S{n}")))
    await asyncio.sleep(0)
    op.publish(StatusChanged(op.id, 9.0, status("S9")))
    op.publish(Finished(op.id, 10.0, status("DONE", "ACTIVE")))
    await asyncio.wait_for(asyncio.gather(*readers), WITHIN)
    assert len(op.events) == 9
    for events in seen:
        assert events == op.events


async def test_heartbeats_come_only_during_silences_with_the_last_known_status() -> None:
    op = operation()
    seen: list[Event] = []
    reader = asyncio.create_task(read(LocalStream(op, 0.02), seen))
    await until(lambda: len(seen) == 3)
    assert isinstance(seen[0], Authorized)
    assert [type(event) for event in seen[1:]] == [Heartbeat, Heartbeat]
    assert all(isinstance(e, Heartbeat) and e.status is None for e in seen[1:])
    submitted = status("SUBMITTED")
    op.record = replace(op.record, last_status=submitted)
    op.publish(Submitted(op.id, 2.0, submitted))
    await until(lambda: sum(isinstance(e, Heartbeat) for e in seen) == 4)
    after = seen[seen.index(op.events[-1]) + 1 :]
    assert after and all(isinstance(e, Heartbeat) and e.status == submitted for e in after)
    op.publish(Finished(op.id, 3.0, status("DONE", "ACTIVE")))
    await asyncio.wait_for(reader, WITHIN)
    assert isinstance(seen[-1], Finished)


async def test_no_heartbeat_while_items_keep_coming() -> None:
    op = operation()
    seen: list[Event] = []
    reader = asyncio.create_task(read(LocalStream(op, 2.0), seen))
    for n in range(50):  # each told at once, far within an interval of the one before
        op.publish(StatusChanged(op.id, 2.0 + n, status(f"S{n}")))
        await until(lambda n=n: len(seen) == n + 2)
    op.publish(Finished(op.id, 99.0, status("DONE", "ACTIVE")))
    await asyncio.wait_for(reader, WITHIN)
    assert seen == op.events


async def test_an_error_ends_every_stream_after_the_items_before_it() -> None:
    op = operation()
    op.publish(Submitted(op.id, 2.0, status("SUBMITTED")))
    waiting: list[Event] = []
    reader = asyncio.create_task(read(LocalStream(op, QUIET), waiting))
    await until(lambda: len(waiting) == 2)
    error = DeadlineExceeded("update still UPDATING after 900s")
    op.publish(error)
    late: list[Event] = []
    stream = LocalStream(op, QUIET)
    for task in (reader, asyncio.create_task(read(stream, late))):
        with pytest.raises(DeadlineExceeded) as raised:
            await asyncio.wait_for(task, WITHIN)
        assert raised.value is error
    assert waiting == late == op.events
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_finished_ends_the_stream_and_a_stream_attached_after_it() -> None:
    op = operation()
    seen: list[Event] = []
    reader = asyncio.create_task(read(LocalStream(op, QUIET), seen))
    op.publish(Finished(op.id, 2.0, status("DONE", "ACTIVE")))
    await asyncio.wait_for(reader, WITHIN)
    after: list[Event] = []
    await asyncio.wait_for(read(LocalStream(op, QUIET), after), WITHIN)
    assert seen == after == op.events


async def test_a_stream_that_goes_away_does_not_disturb_the_others() -> None:
    op = operation()
    gone: list[Event] = []
    staying: list[Event] = []
    leaving = asyncio.create_task(read(LocalStream(op, QUIET), gone))
    reader = asyncio.create_task(read(LocalStream(op, QUIET), staying))
    await until(lambda: len(gone) == len(staying) == 1)
    leaving.cancel()  # its client left while it waited on the operation's shared wake-up
    await asyncio.gather(leaving, return_exceptions=True)
    op.publish(Finished(op.id, 2.0, status("DONE", "ACTIVE")))
    await asyncio.wait_for(reader, WITHIN)
    assert staying == op.events


# --- remote streams (another replica's operation): the cursor, pure ------------------------------


def payload(epoch: int, seq: int, kind: str, workflow: str = "UPDATING") -> dict[str, Any]:
    """What an owner publishes: a status change, or the end."""
    event: Event = StatusChanged("op-1", 1.0, status(workflow))
    if kind == "finished":
        event = Finished("op-1", 1.0, status(workflow, "ACTIVE"))
    return {**to_payload(seq, event), "epoch": epoch}


def test_a_fenced_owners_events_are_ignored_and_the_new_owners_told() -> None:
    record = replace(new_record(update_request(), "op-1"), epoch=2, seq=4)
    cursor = Cursor(record)
    assert cursor.accept(payload(1, 16, "status")) is None  # the old owner, thawed
    told = cursor.accept(payload(2, 5, "finished", "UPDATED"))  # numbering goes on from 4
    assert isinstance(told, Finished) and cursor.ended


def test_a_newer_epoch_numbering_from_the_record_is_not_dropped() -> None:
    record = replace(new_record(update_request(), "op-1"), epoch=1, seq=3)
    cursor = Cursor(record)
    assert isinstance(cursor.accept(payload(1, 12, "status")), StatusChanged)
    assert isinstance(cursor.accept(payload(2, 4, "finished", "UPDATED")), Finished)


def test_a_re_read_record_tells_what_pub_sub_lost() -> None:
    record = replace(new_record(update_request(), "op-1"), epoch=1, seq=2)
    cursor = Cursor(record)
    done = status("UPDATED", "ACTIVE")
    fresh = replace(record, seq=5, state="finished", submitted=status("UPDATING"), last_status=done)
    told = cursor.catch_up(fresh)
    assert [type(item) for item in told] == [Submitted, Finished] and cursor.ended
    assert cursor.accept(payload(1, 5, "finished", "UPDATED")) is None  # not told twice
