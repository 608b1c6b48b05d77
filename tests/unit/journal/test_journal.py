"""Journal: records round-trip, idempotency keys, resumption after a restart, replicas on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from service.core.config import JournalSettings
from service.core.model import (
    Approval,
    Decision,
    ImageSetKey,
    ImageSetStatus,
    OperationRecord,
    RecordedError,
    State,
    UpdateRequest,
)
from service.journal import Journal, open_journal
from service.journal.codec import at_rest, decode, encode, fingerprint
from service.journal.redis import RedisJournal
from service.journal.redis_client import RedisUnavailable
from service.journal.sealing import Sealer
from service.journal.sqlite import SqliteJournal
from service.operations.events import Queued, from_payload, replay, to_payload
from tests.e2e.conftest import redis_server

CLEAR = Sealer({})
LOCKED = ImageSetStatus("ds", "is", "2", "LOCKED", "UPDATING", 10.0, 11.0)
UPDATED = ImageSetStatus("ds", "is", "2", "ACTIVE", "UPDATED", 10.0, 13.0)


def request(
    name: bytes = b'{"Patient": {"DICOM": {"PatientName": "A^B"}}}', key: str = ""
) -> UpdateRequest:
    return UpdateRequest(
        datastore_id="d" * 32,
        image_set_id="i" * 32,
        latest_version_id="1",
        force=False,
        include_study_image_sets=False,
        updatable_attributes=name,
        removable_attributes=None,
        revert_to_version_id=None,
        kind="dicom_updates",
        idempotency_key=key,
    )


def record(operation_id: str = "op-1", key: str = "", principal: str = "svc") -> OperationRecord:
    made = request(key=key)
    return OperationRecord(
        id=operation_id,
        principal=principal,
        auth_method="dev",
        roles=("r",),
        request=made,
        decision=Decision(True, ("fine",), "decision-1"),
        fingerprint=fingerprint(made),
        created_at=time.time(),
        deadline=None,
        seq=1,
    )


def test_a_record_round_trips_through_its_json_form() -> None:
    original = replace(
        record(key="k"),
        state="submitting",
        submitted=LOCKED,
        last_status=UPDATED,
        error=RecordedError("ABORTED", "BACKEND_CONFLICT", "stale", 0.0),
        deadline=123.5,
        touched=("patient:00100010",),
    )
    assert decode(encode(original, CLEAR), original.id, CLEAR) == original


@pytest.mark.parametrize("state", ["submitted", "unwatched", "finished", "failed"])
def test_a_record_past_its_submit_is_stored_without_its_document(state: State) -> None:
    original = replace(record(), state=state, submitted=LOCKED)
    stored = decode(encode(original, CLEAR), original.id, CLEAR)
    assert stored.request.updatable_attributes is None
    assert b"A^B" not in encode(original, CLEAR).encode()
    assert stored == at_rest(original)
    assert stored.fingerprint == original.fingerprint  # a retry with its key still matches


@pytest.mark.parametrize("state", ["queued", "submitting"])
def test_a_record_that_may_still_submit_keeps_its_document(state: State) -> None:
    original = replace(record(), state=state)
    assert decode(encode(original, CLEAR), original.id, CLEAR) == original


def test_the_fingerprint_ignores_the_key_and_sees_every_byte() -> None:
    assert fingerprint(request(key="one")) == fingerprint(request(key="two"))
    assert fingerprint(request(b'{"a": 1}')) != fingerprint(request(b'{"a": 2}'))


def test_a_replay_tells_the_last_known_state() -> None:
    finished = replace(record(), state="finished", submitted=LOCKED, last_status=UPDATED)
    kinds = [type(item).__name__ for item in replay(finished)]
    assert kinds == ["Authorized", "Submitted", "Finished"]
    # Found landed and done when its submit was resumed: its first state was already the last.
    done = replace(record(), state="finished", submitted=UPDATED, last_status=UPDATED)
    assert [type(item).__name__ for item in replay(done)][-1] == "Finished"
    failed = replace(record(), state="failed", error=RecordedError("ABORTED", "X", "stale"))
    last = replay(failed)[-1]
    assert isinstance(last, Exception) and last.status == "ABORTED"


def test_events_survive_the_trip_between_replicas() -> None:
    event = Queued("op-1", 5.0, 3, 17.5)
    assert from_payload("op-1", to_payload(7, event)) == event


# --- behaviour shared by both journals -----------------------------------------------------------


async def check_round_trip(journal: Journal) -> None:
    created = await journal.create(record("op-rt"))
    assert created.id == "op-rt"
    assert await journal.get("op-rt") == created
    progressed = replace(created, state="submitted", seq=3, submitted=LOCKED, last_status=LOCKED)
    assert await journal.save(progressed)
    assert await journal.get("op-rt") == at_rest(progressed)  # the document is gone
    assert await journal.get("missing") is None


async def check_idempotency(journal: Journal) -> None:
    first = await journal.create(record("op-k1", key="retry-me"))
    again = await journal.create(record("op-k2", key="retry-me"))
    assert again.id == first.id == "op-k1"
    assert "op-k2" not in cached(journal)  # never stored: its document is not kept either
    assert (await journal.by_key("svc", "retry-me")) == first
    other_caller = await journal.create(record("op-k3", key="retry-me", principal="other"))
    assert other_caller.id == "op-k3"  # keys belong to one principal
    assert await journal.by_key("svc", "never-used") is None


async def check_in_flight(journal: Journal) -> None:
    key = ImageSetKey("ds", "image-set")
    assert await journal.mark(key, "op-a")
    assert await journal.mark(key, "op-a")  # the holder may mark again (a resumed operation)
    assert not await journal.mark(key, "op-b")
    await journal.release(key, "op-b")  # only the holder releases
    assert (await journal.snapshot()) == {key: "op-a"}
    await journal.release(key, "op-a")
    assert (await journal.snapshot()) == {}


def cached(journal: Journal) -> dict[str, Any]:
    """The journal's encoder cache: operation id → parts that may hold the document."""
    heads: dict[str, Any] = cast(Any, journal)._encoder._heads
    return heads


# --- SQLite ---------------------------------------------------------------------------------------


def sqlite_settings(folder: Path, key_ttl: float = 60.0) -> JournalSettings:
    return JournalSettings(data_dir=str(folder), idempotency_ttl_seconds=key_ttl)


async def test_sqlite_round_trip_keys_and_in_flight(tmp_path: Path) -> None:
    async with open_journal(sqlite_settings(tmp_path)) as journal:
        assert isinstance(journal, SqliteJournal)
        await check_round_trip(journal)
        await check_idempotency(journal)
        await check_in_flight(journal)


async def test_sqlite_in_memory_when_no_directory_is_set() -> None:
    async with open_journal(JournalSettings()) as journal:
        await check_round_trip(journal)


async def test_sqlite_keys_expire(tmp_path: Path) -> None:
    async with open_journal(sqlite_settings(tmp_path, key_ttl=0.05)) as journal:
        await journal.create(record("op-old", key="k"))
        await asyncio.sleep(0.1)
        assert await journal.by_key("svc", "k") is None
        assert (await journal.create(record("op-new", key="k"))).id == "op-new"


async def test_sqlite_concurrent_writes_are_all_durable(tmp_path: Path) -> None:
    async with open_journal(sqlite_settings(tmp_path)) as journal:
        created = await asyncio.gather(*(journal.create(record(f"op-{n}")) for n in range(50)))
    async with open_journal(sqlite_settings(tmp_path)) as reopened:
        unfinished = await reopened.take_over()
    assert {r.id for r in unfinished} == {r.id for r in created}


async def test_sqlite_after_a_restart_unfinished_operations_are_taken_over_once(
    tmp_path: Path,
) -> None:
    async with open_journal(sqlite_settings(tmp_path)) as journal:
        await journal.create(record("op-queued"))
        done = await journal.create(record("op-done"))
        await journal.save(replace(done, state="finished", last_status=UPDATED))
    async with open_journal(sqlite_settings(tmp_path)) as restarted:
        [queued] = await restarted.take_over()
        assert queued.id == "op-queued" and queued.request == request()  # its document is kept
        assert await restarted.take_over() == []
        finished = await restarted.get("op-done")
        assert finished is not None and finished.last_status == UPDATED


async def test_sqlite_directory_is_one_process_s(tmp_path: Path) -> None:
    async with open_journal(sqlite_settings(tmp_path)):
        with pytest.raises(ValueError, match="in use"):
            async with SqliteJournal.open(sqlite_settings(tmp_path), CLEAR):
                pass


# --- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-journal")) as url:
        yield url


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[JournalSettings]:
    settings = JournalSettings(url=redis_url, lease_seconds=1.0, key_prefix=f"t{time.time_ns()}")
    yield settings


@pytest.mark.redis
async def test_redis_round_trip_keys_and_in_flight(shared: JournalSettings) -> None:
    async with open_journal(shared) as journal:
        assert isinstance(journal, RedisJournal)
        await check_round_trip(journal)
        await check_idempotency(journal)
        await check_in_flight(journal)


@pytest.mark.redis
async def test_redis_one_key_one_operation_even_when_racing(shared: JournalSettings) -> None:
    async with open_journal(shared) as first, open_journal(shared) as second:
        journals = [first, second] * 5
        created = await asyncio.gather(
            *(j.create(record(f"op-{n}", key="same")) for n, j in enumerate(journals))
        )
    assert len({r.id for r in created}) == 1


@pytest.mark.redis
async def test_redis_a_live_replica_keeps_its_operations(shared: JournalSettings) -> None:
    async with open_journal(shared) as owner, open_journal(shared) as other:
        await owner.create(record("op-mine"))
        assert await other.take_over() == []
        assert await owner.take_over() == []  # its own are not "taken over"


@pytest.mark.redis
async def test_redis_a_replica_that_leaves_is_taken_over(shared: JournalSettings) -> None:
    async with open_journal(shared) as survivor:
        async with open_journal(shared) as leaving:
            created = await leaving.create(record("op-orphan"))
        taken = await survivor.take_over()
        assert [(r.id, r.epoch) for r in taken] == [("op-orphan", created.epoch + 1)]
        assert not await survivor.save(replace(created, state="submitted", seq=2))  # old epoch
        assert await survivor.save(replace(taken[0], state="submitted", seq=2))
        assert await survivor.take_over() == []


@pytest.mark.redis
async def test_redis_the_old_owner_can_no_longer_save(shared: JournalSettings) -> None:
    async with open_journal(shared) as survivor, open_journal(shared) as silent:
        created = await silent.create(record("op-lapsed"))
        assert isinstance(silent, RedisJournal)
        await silent._client.delete(silent._key("replica", silent.replica_id))  # lease lapses
        assert [r.id for r in await survivor.take_over()] == ["op-lapsed"]
        assert not await silent.save(replace(created, state="submitted", seq=2))
        assert "op-lapsed" not in cached(silent)  # it never saves it again: nothing kept


@pytest.mark.redis
async def test_redis_events_reach_other_replicas(shared: JournalSettings) -> None:
    async with open_journal(shared) as owner, open_journal(shared) as watcher:
        subscription = watcher.subscribe("op-1")
        async with subscription as events:
            received = await eventually_received(owner, events)
    assert received["kind"] == "queued"


async def eventually_received(owner: Journal, events: asyncio.Queue[dict[str, Any]]) -> Any:
    """Publish until the subscriber hears it (its SUBSCRIBE may not have reached Redis yet)."""
    for seq in range(100):
        owner.publish("op-1", {"seq": seq, "kind": "queued", "position": 1, "start": 0.0})
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(events.get(), 0.05)
    raise AssertionError("no event arrived")


@pytest.mark.redis
async def test_redis_gone_mid_life_reaches_callers_as_a_domain_error(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        with redis_server(tmp_path) as url:
            journal = await stack.enter_async_context(open_journal(JournalSettings(url=url)))
            await journal.create(record("op-before"))
        # The server has stopped: every call the runner makes says UNAVAILABLE, not RedisError.
        with pytest.raises(RedisUnavailable):
            await journal.get("op-before")
        with pytest.raises(RedisUnavailable):
            await journal.create(record("op-after"))
        with pytest.raises(RedisUnavailable):
            await journal.mark(ImageSetKey("ds", "is"), "op-after")
        with pytest.raises(RedisUnavailable):
            await journal.take_over()
        with pytest.raises(RedisUnavailable):
            async with journal.subscribe("op-before"):
                pass
        with pytest.raises(RedisUnavailable):  # leaving: the lease cannot be dropped either
            await stack.aclose()


# --- issue 21: listing and cancelling, both journals ---------------------------------------------


async def check_records_and_cancel(owner: Journal, other: Journal) -> None:
    """`other` cancels what `owner` queued: only while queued, atomically; the owner's next save
    fails; the cancelled record keeps no document; `records` lists everything, oldest first."""
    queued = await owner.create(replace(record("op-q"), created_at=1.0))
    submitting = await owner.create(replace(record("op-s"), created_at=2.0))
    assert await owner.save(replace(submitting, state="submitting", seq=2))
    cancel = replace(queued, seq=2, state="cancelled", cancelled_by="dev:boss")

    assert await other.cancel_queued(cancel) == "queued"
    assert await other.cancel_queued(replace(cancel, id="op-s")) == "submitting"
    assert await other.cancel_queued(replace(cancel, id="op-none")) == ""
    assert await other.cancel_queued(cancel) == "cancelled"  # once only

    stored = await owner.get("op-q")
    assert stored is not None and stored.state == "cancelled" and stored.cancelled_by == "dev:boss"
    assert stored.request.updatable_attributes is None  # no document kept
    listed = [r for r in await other.records() if r.id in ("op-q", "op-s")]
    assert [(r.id, r.state) for r in listed] == [("op-q", "cancelled"), ("op-s", "submitting")]


async def test_sqlite_lists_and_cancels_a_queued_record(tmp_path: Path) -> None:
    async with open_journal(sqlite_settings(tmp_path)) as journal:
        await check_records_and_cancel(journal, journal)


@pytest.mark.redis
async def test_redis_a_cancel_by_another_replica_fences_the_owner(shared: JournalSettings) -> None:
    async with open_journal(shared) as owner, open_journal(shared) as other:
        await check_records_and_cancel(owner, other)
        queued = await owner.get("op-q")
        assert queued is not None
        # The owner, not knowing yet, tries its next step: refused, so it never submits.
        assert not await owner.save(replace(queued, state="submitting", seq=3, cancelled_by=""))
        assert await other.take_over() == []  # a cancelled operation is nobody's to resume


# --- issue 22: an operation awaiting approval, changed by whoever approves it ---------------------


def awaiting_record(operation_id: str) -> OperationRecord:
    asked = Approval(("approver",), (), 2, time.time() + 60, ("needs approval",), "d-1")
    return replace(record(operation_id), state="awaiting_approval", approval=asked)


async def check_transitions(owner: Journal, approver: Journal) -> None:
    """Approvals land only on the record their writer read: two approvers racing from the same
    record, one wins and the other is told what the journal holds; the document is kept while
    awaiting and dropped once rejected."""
    waiting = await owner.create(awaiting_record("op-a"))
    assert waiting.request.updatable_attributes is not None  # it may still submit: kept
    approval = waiting.approval
    assert approval is not None
    first = replace(waiting, seq=2, approval=replace(approval, approved_by=("dev:x",)))
    second = replace(waiting, seq=2, approval=replace(approval, approved_by=("dev:y",)))

    stored = await approver.transition(first, waiting)
    lost = await approver.transition(second, waiting)  # read the same record: too late
    assert stored is not None and stored.approval == first.approval
    assert lost is not None and lost.approval == first.approval
    rejected = replace(first, seq=3, state="rejected")
    assert await approver.transition(rejected, first) is not None
    kept = await owner.get("op-a")
    assert kept is not None and kept.state == "rejected"
    assert kept.approval is not None and kept.approval.approved_by == ("dev:x",)
    assert kept.request.updatable_attributes is None  # over: no document kept
    assert await approver.transition(replace(kept, id="op-gone"), kept) is None


async def test_sqlite_transitions_land_only_on_the_record_read(tmp_path: Path) -> None:
    async with open_journal(sqlite_settings(tmp_path)) as journal:
        await check_transitions(journal, journal)


@pytest.mark.redis
async def test_redis_transitions_by_another_replica_and_takeover_while_waiting(
    shared: JournalSettings,
) -> None:
    async with open_journal(shared) as survivor:
        async with open_journal(shared) as owner:
            await check_transitions(owner, survivor)
            await owner.create(awaiting_record("op-w"))
        taken = await survivor.take_over()  # its replica left while it waited
        assert [(r.id, r.state) for r in taken] == [("op-w", "awaiting_approval")]
        assert taken[0].approval is not None and taken[0].approval.count == 2


# --- issue 24: leases, fencing, an emptied Redis, scripts sent twice ------------------------------


@pytest.mark.redis
async def test_redis_a_lapsed_lease_is_seen_and_the_replica_starts_afresh(
    shared: JournalSettings,
) -> None:
    async with open_journal(shared) as journal:
        assert isinstance(journal, RedisJournal)
        assert await journal.renew() == "held"
        old = journal.replica_id
        await journal._client.delete(journal._key("replica", old))  # a pause past the lease
        assert await journal.renew() == "lapsed"
        assert journal.replica_id != old  # the old identity's operations can be taken over
        assert await journal.renew() == "held"


@pytest.mark.redis
async def test_redis_an_emptied_redis_is_seen_and_a_save_writes_the_record_back(
    shared: JournalSettings,
) -> None:
    async with open_journal(shared) as journal, open_journal(shared) as other:
        assert isinstance(journal, RedisJournal)
        created = await journal.create(record("op-wiped"))
        await journal._client.flushdb()  # Redis restarted without persistence
        assert await journal.save(replace(created, state="submitting", seq=2))
        assert (await other.get("op-wiped")) is not None
        assert await journal.renew() == "lost"
        assert await other.renew() == "lost"  # every replica notices, within one renewal
        assert await journal.renew() == "held"


@pytest.mark.redis
async def test_redis_take_over_sent_twice_answers_the_same(shared: JournalSettings) -> None:
    """redis-py's Retry resends a script whose answer was lost: the second run must not hide
    what the first took (the `taker` nonce), nor take it twice (one epoch step)."""
    async with open_journal(shared) as survivor:
        async with open_journal(shared) as leaving:
            created = await leaving.create(record("op-twice"))
        assert isinstance(survivor, RedisJournal)
        args = [survivor.replica_id, survivor._key("op", ""), survivor._key("replica", ""), "n1"]
        keys = [survivor._key("unfinished")]
        first = await survivor._take_over(keys=keys, args=args)
        second = await survivor._take_over(keys=keys, args=args)
    assert first == second and first[0] == "op-twice"
    assert int(first[2]) == created.epoch + 1
