"""The runner without processes: an in-memory journal, a disabled budget, a scripted image set,
and a real watcher and admission. Each test reads the journal's writes in order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from devstack.polling import eventually
from service.core.errors import Aborted, ProxyError, Unavailable
from service.core.model import ImageSetStatus, OperationRecord, State, UpdatePlan
from service.observability import audit
from service.operations.events import Authorized, Finished, StatusChanged, Submitted
from tests.unit.operations.inmemory import (
    CALLER,
    ImageSet,
    MemoryJournal,
    Shared,
    new_record,
    plan_of,
    replica,
    update_request,
)

WITHIN = 5.0  # a follow that does not end (a terminal state missed) fails in seconds, not minutes


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """The audit records written meanwhile."""
    with audit.capture() as captured:
        yield captured


def outcomes(records: list[dict[str, Any]]) -> list[object]:
    """The audit's operation outcomes, in order."""
    return [record["outcome"] for record in records if record["event"] == "finish"]


def crashed_while(
    shared: Shared, state: State, status: ImageSetStatus | None = None
) -> OperationRecord:
    """A record its process left in `state` when it died (its lease is gone)."""
    gone = MemoryJournal(shared, "gone")
    record = new_record(update_request())
    left = replace(record, seq=2, state=state, submitted=status, last_status=status)
    gone.write(left)
    shared.leases.discard(gone.replica)
    return left


async def test_an_update_is_journaled_queued_submitted_finished_in_order() -> None:
    shared, image_set = Shared(), ImageSet(reads=2)
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        record = await one.runner.record(new_record(update_request()))
        one.runner.launch(record, CALLER, plan_of(record))
        events = await asyncio.wait_for(one.events(record), WITHIN)
    assert [type(event) for event in events] == [Authorized, Submitted, StatusChanged, Finished]
    assert shared.states(record.id) == [
        "queued",
        "submitting",
        "submitted",
        "submitted",
        "finished",
    ]
    assert image_set.submits == 1
    final = shared.records[record.id]
    assert final.last_status is not None and final.last_status.workflow_status == "UPDATED"
    assert shared.in_flight == {}  # its image set's turn is given back


async def test_an_interrupted_submit_that_never_landed_is_submitted_again_once() -> None:
    shared, image_set = Shared(), ImageSet()
    left = crashed_while(shared, "submitting")
    async with replica(MemoryJournal(shared, "after-restart"), image_set) as one:
        assert await one.runner.resume() == 1
        events = await asyncio.wait_for(one.events(left), WITHIN)
    assert image_set.submits == 1
    assert shared.states(left.id)[-5:] == [
        "queued",  # HealthImaging still shows the old version: the write never happened
        "submitting",
        "submitted",
        "submitted",
        "finished",
    ]
    assert isinstance(events[-1], Finished)


async def test_an_interrupted_submit_that_landed_is_followed_not_submitted_again() -> None:
    shared, image_set = Shared(), ImageSet()
    left = crashed_while(shared, "submitting")
    image_set.land(plan_of(left))  # the write reached HealthImaging; its answer was lost
    async with replica(MemoryJournal(shared, "after-restart"), image_set) as one:
        assert await one.runner.resume() == 1
        await asyncio.wait_for(one.events(left), WITHIN)
    assert image_set.submits == 0
    assert shared.states(left.id)[-2:] == ["submitted", "finished"]
    final = shared.records[left.id]
    assert final.submitted is not None and final.submitted.version_id == "2"


async def test_an_acknowledged_record_is_only_followed_never_submitted_again() -> None:
    shared, image_set = Shared(), ImageSet()
    status = image_set.land(plan_of(new_record(update_request())))
    left = crashed_while(shared, "submitted", status)
    assert shared.records[left.id].request.updatable_attributes is None  # stored at rest
    async with replica(MemoryJournal(shared, "after-restart"), image_set) as one:
        assert await one.runner.resume() == 1
        events = await asyncio.wait_for(one.events(left), WITHIN)
    assert image_set.submits == 0
    assert shared.states(left.id)[-1:] == ["finished"]
    assert "submitting" not in shared.states(left.id)[1:]
    assert isinstance(events[-1], Finished)
    assert shared.in_flight == {}


async def test_update_failed_ends_the_operation_with_that_outcome(
    logs: list[dict[str, Any]],
) -> None:
    shared, image_set = Shared(), ImageSet(outcome="UPDATE_FAILED")
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        record = await one.runner.record(new_record(update_request()))
        one.runner.launch(record, CALLER, plan_of(record))
        events = await asyncio.wait_for(one.events(record), WITHIN)

        async def audited() -> None:
            assert one.runner.running == 0
            assert outcomes(logs) == ["UPDATE_FAILED"]

        await eventually(audited, within=WITHIN)
    last = events[-1]
    assert isinstance(last, Finished) and last.status.workflow_status == "UPDATE_FAILED"
    assert shared.states(record.id)[-1] == "finished"
    assert shared.in_flight == {}


class Refusing(ImageSet):
    """HealthImaging refusing the submit (a ConflictException: the image set changed)."""

    async def update(self, plan: UpdatePlan) -> ImageSetStatus:
        self.submits += 1
        raise Aborted("HealthImaging ConflictException: version changed", reason="BACKEND_CONFLICT")


async def test_a_refused_submit_fails_the_operation_and_its_stream() -> None:
    shared, image_set = Shared(), Refusing()
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        record = await one.runner.record(new_record(update_request()))
        one.runner.launch(record, CALLER, plan_of(record))
        with pytest.raises(ProxyError) as refused:
            await asyncio.wait_for(one.events(record), WITHIN)
    assert refused.value.reason == "BACKEND_CONFLICT"
    assert shared.states(record.id) == ["queued", "submitting", "failed"]
    failed = shared.records[record.id]
    assert failed.error is not None and failed.error.reason == "BACKEND_CONFLICT"
    assert image_set.submits == 1


class JournalDown(MemoryJournal):
    """A journal whose writes fail once the operation is recorded (a full disk, Redis gone)."""

    async def save(self, record: OperationRecord) -> bool:
        raise Unavailable("journal: unavailable (OperationalError)")


async def test_a_journal_that_cannot_be_written_still_ends_the_stream() -> None:
    shared, image_set = Shared(), ImageSet()
    with capture_logs() as logs:
        async with replica(JournalDown(shared, "a"), image_set) as one:
            record = await one.runner.record(new_record(update_request()))
            one.runner.launch(record, CALLER, plan_of(record))
            with pytest.raises(ProxyError) as ended:
                await asyncio.wait_for(one.events(record), WITHIN)  # not heartbeats forever
    assert ended.value.status == "UNAVAILABLE"
    assert image_set.submits == 0  # the submit is marked before it is made: never unmarked
    assert [e["event"] for e in logs if e["event"] == "journal_write_failed"]


async def test_a_replica_takes_over_an_operation_whose_owner_lease_is_gone(
    logs: list[dict[str, Any]],
) -> None:
    shared, image_set = Shared(), ImageSet()
    image_set.stuck = True  # LOCKED until the takeover
    async with (
        replica(MemoryJournal(shared, "a", is_shared=True), image_set) as a,
        replica(MemoryJournal(shared, "b", is_shared=True), image_set) as b,
    ):
        record = await a.runner.record(new_record(update_request()))
        a.runner.launch(record, CALLER, plan_of(record))

        async def followed_by_a() -> None:
            assert shared.states(record.id)[-1] == "submitted"

        await eventually(followed_by_a, within=WITHIN)
        assert await b.runner.resume() == 0  # a's lease is live: nothing to take
        shared.leases.discard("a")  # a stops renewing its lease (dead, or cut off)
        taken_at, told_by_a = len(shared.writes), len(a.journal.published)
        assert await b.runner.resume() == 1
        image_set.stuck = False
        events = await asyncio.wait_for(b.events(shared.records[record.id]), WITHIN)

        async def a_let_go() -> None:
            assert a.runner.running == 0  # its next save said another replica owns it

        await eventually(a_let_go, within=WITHIN)
    assert isinstance(events[-1], Finished)
    assert {writer for writer, _, _ in shared.writes[taken_at:]} == {"b"}
    assert len(a.journal.published) == told_by_a  # a tells nobody anything once it has lost it
    assert outcomes(logs) == ["UPDATED"]  # audited once, by the replica that finished it
    assert shared.states(record.id)[-1] == "finished"
    assert shared.owners[record.id] == "b"
    assert image_set.submits == 1  # taken over past its submit: followed, never submitted again
    assert shared.in_flight == {}


# --- issue 24: what a resumed or conflicting submit tells ------------------------------------


async def test_a_submit_that_landed_and_finished_before_the_crash_is_not_sent_again() -> None:
    shared, image_set = Shared(), ImageSet()
    left = crashed_while(shared, "submitting")
    image_set.land(plan_of(left))  # the write reached HealthImaging, then the process died
    image_set.versions["2"] = ("ACTIVE", "UPDATED")  # ... and the update finished meanwhile
    async with replica(MemoryJournal(shared, "after-restart"), image_set) as one:
        assert await one.runner.resume() == 1
        events = await asyncio.wait_for(one.events(left), WITHIN)
    assert image_set.submits == 0
    last = events[-1]
    assert isinstance(last, Finished)
    assert (last.status.version_id, last.status.workflow_status) == ("2", "UPDATED")


async def test_a_watch_whose_first_reads_lag_waits_and_reports_the_new_version() -> None:
    shared, image_set = Shared(), ImageSet(reads=1)
    image_set.lagging_reads = 3  # GetImageSet shows version 1 for a while after the submit
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        record = await one.runner.record(new_record(update_request()))
        one.runner.launch(record, CALLER, plan_of(record))
        events = await asyncio.wait_for(one.events(record), WITHIN)
    assert image_set.lagging_reads == 0  # the lagging reads were all made, and waited out
    told = [e.status.version_id for e in events if isinstance(e, Submitted | StatusChanged)]
    assert set(told) == {"2"}  # the old version is never told as this update's state
    last = events[-1]
    assert isinstance(last, Finished)
    assert (last.status.version_id, last.status.workflow_status) == ("2", "UPDATED")
    assert image_set.submits == 1


async def test_a_conflict_with_our_own_landed_write_is_reported_as_applied() -> None:
    """Split-brain: a frozen owner's write landed; the successor's resubmit gets a 409."""
    shared, image_set = Shared(), ImageSet()
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        record = await one.runner.record(new_record(update_request()))
        image_set.land(plan_of(record))  # the same update, sent by the earlier owner
        one.runner.launch(record, CALLER, plan_of(record))
        events = await asyncio.wait_for(one.events(record), WITHIN)
    last = events[-1]
    assert isinstance(last, Finished) and last.status.version_id == "2"
    assert image_set.submits == 1  # the resubmit, refused by the compare-and-set
    assert shared.records[record.id].error is None


async def test_a_conflict_with_someone_elses_write_is_reported_as_a_conflict() -> None:
    shared, image_set = Shared(), ImageSet()
    async with replica(MemoryJournal(shared, "a"), image_set) as one:
        record = await one.runner.record(new_record(update_request()))
        image_set.land_theirs()
        one.runner.launch(record, CALLER, plan_of(record))
        with pytest.raises(ProxyError) as refused:
            await asyncio.wait_for(one.events(record), WITHIN)
    assert refused.value.reason == "BACKEND_CONFLICT"


async def test_an_interrupted_submit_beside_someone_elses_write_is_a_conflict() -> None:
    shared, image_set = Shared(), ImageSet()
    left = crashed_while(shared, "submitting")
    image_set.land_theirs()  # not ours: our write never landed, and now never can
    async with replica(MemoryJournal(shared, "after-restart"), image_set) as one:
        assert await one.runner.resume() == 1
        with pytest.raises(ProxyError) as refused:
            await asyncio.wait_for(one.events(left), WITHIN)
    assert refused.value.reason == "BACKEND_CONFLICT"
    assert image_set.submits == 0
