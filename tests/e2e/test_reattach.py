"""Re-attaching: a proxy killed with SIGKILL and started again on its journal finishes its updates.

WatchUpdate replays the last known state and follows the operation to its end; queued updates stay
queued across the restart, submitted ones are watched again; only their owner or an admin may
watch them; a graceful stop lets open streams finish.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import (
    ProxyProcess,
    QuotaStack,
    Sections,
    assert_eventually,
    collect,
    dev,
    kinds,
    quota_stack,
    study_update,
    write_quota,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OWNER = "demo-editor"
SLOW_WRITES: Mapping[str, object] = {
    "update_rate": 0.5,
    "update_burst": 1.0,
}  # the first write comes after 2.2 s


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    work = tmp_path_factory.mktemp("reattach")
    with quota_stack(work, write_quota(10.0, 10.0), image_sets=12) as stack:
        yield stack


@pytest.fixture
def stalled(backend: QuotaStack) -> Iterator[None]:
    """Updates submitted during the test stay LOCKED/UPDATING until released."""
    backend.admin("PUT", "faults", {"update_stall_rate": 1.0})
    try:
        yield
    finally:
        backend.admin("PUT", "faults", {})
        backend.admin("POST", "release-stalled", {})


def journal(folder: Path, budget: Mapping[str, object] | None = None) -> Sections:
    sections: dict[str, dict[str, object]] = {"journal": {"data_dir": str(folder)}}
    sections["budget"] = dict(budget or {"update_rate": 10.0, "update_burst": 10.0})
    return sections


@pytest.fixture
async def connect() -> AsyncIterator[list[grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []
    yield channels
    for channel in channels:
        await channel.close()


def stub_for(
    proxy: ProxyProcess, channels: list[grpc.aio.Channel]
) -> pb_grpc.MetadataUpdateServiceStub:
    channels.append(grpc.aio.insecure_channel(proxy.endpoint))
    return pb_grpc.MetadataUpdateServiceStub(channels[-1])


async def first_events(call: Any, kind: str) -> list[pb.UpdateEvent]:
    events = []
    while (event := await call.read()) != grpc.aio.EOF:
        assert isinstance(event, pb.UpdateEvent)
        events.append(event)
        if event.WhichOneof("event") == kind:
            return events
    raise AssertionError(f"no {kind!r} event: {kinds(events)}")


def watch(stub: pb_grpc.MetadataUpdateServiceStub, operation_id: str, who: str = OWNER) -> Any:
    request = pb.WatchUpdateRequest(operation_id=operation_id)
    return stub.WatchUpdate(request, metadata=dev(who), timeout=30)


def finished(events: list[pb.UpdateEvent]) -> tuple[str, str]:
    state = events[-1].finished.state
    return state.image_set_state, state.image_set_workflow_status


async def test_a_submitted_update_is_finished_after_a_kill_9_and_a_restart(
    backend: QuotaStack, stalled: None, tmp_path: Path, connect: list[grpc.aio.Channel]
) -> None:
    (image_set,) = backend.take(1)
    first = backend.proxy("first", journal(tmp_path))
    call = stub_for(first, connect).UpdateImageSetMetadata(
        study_update(backend.datastore_id, image_set, "SURVIVOR"), metadata=dev(OWNER)
    )
    operation_id = (await first_events(call, "submitted"))[0].operation_id
    first.kill()

    restarted = backend.proxy("restarted", journal(tmp_path))
    backend.admin("POST", "release-stalled", {})
    events = await collect(watch(stub_for(restarted, connect), operation_id))

    assert {e.operation_id for e in events} == {operation_id}
    assert kinds(events)[:2] == ["authorized", "submitted"]
    assert finished(events) == ("ACTIVE", "UPDATED")
    writes = [r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert len(writes) == 1
    # Resumed from a record without its document: the audit still names the tag it changed.
    await assert_eventually(lambda: audited(restarted, image_set, "study:00081030"), within=10)


async def audited(proxy: ProxyProcess, image_set: str, tag: str) -> bool:
    """The proxy's audit record for an update of `image_set` that ended UPDATED names `tag`."""
    return any(
        (r["event"], r["image_set_id"], r["outcome"]) == ("finish", image_set, "UPDATED")
        and tag in r["tags"]
        for r in proxy.audit_records()
    )


async def test_queued_updates_stay_queued_across_a_restart(
    backend: QuotaStack, tmp_path: Path, connect: list[grpc.aio.Channel]
) -> None:
    image_sets = backend.take(2)
    first = backend.proxy("queue-first", journal(tmp_path, SLOW_WRITES))
    stub = stub_for(first, connect)
    calls = [
        stub.UpdateImageSetMetadata(
            study_update(backend.datastore_id, i, "QUEUED"), metadata=dev(OWNER)
        )
        for i in image_sets
    ]
    operation_ids = [(await first_events(call, "queued"))[0].operation_id for call in calls]
    first.kill()  # before the first write slot: both are still queued
    assert [
        r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] in image_sets
    ] == []

    restarted = backend.proxy("queue-restarted", journal(tmp_path, SLOW_WRITES))
    stub = stub_for(restarted, connect)
    results = await asyncio.gather(*(collect(watch(stub, op)) for op in operation_ids))

    assert all(finished(events) == ("ACTIVE", "UPDATED") for events in results)
    writes = [
        r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] in image_sets
    ]
    assert sorted(r["imageSetId"] for r in writes) == sorted(image_sets)


async def test_only_the_owner_or_an_admin_may_watch(
    backend: QuotaStack, tmp_path: Path, connect: list[grpc.aio.Channel]
) -> None:
    (image_set,) = backend.take(1)
    proxy = backend.proxy("owners", journal(tmp_path))
    stub = stub_for(proxy, connect)
    events = await collect(
        stub.UpdateImageSetMetadata(
            study_update(backend.datastore_id, image_set, "MINE"), metadata=dev(OWNER)
        )
    )
    operation_id = events[0].operation_id

    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await collect(watch(stub, operation_id, who="demo-private"))
    assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
    as_admin = await collect(watch(stub, operation_id, who="demo-admin"))  # granted by OPA data
    assert finished(as_admin) == ("ACTIVE", "UPDATED")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await collect(watch(stub, str(uuid.uuid4())))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_graceful_stop_lets_open_streams_finish(
    backend: QuotaStack, stalled: None, tmp_path: Path, connect: list[grpc.aio.Channel]
) -> None:
    (image_set,) = backend.take(1)
    proxy = backend.proxy("graceful", journal(tmp_path))
    channel = grpc.aio.insecure_channel(proxy.endpoint)
    connect.append(channel)
    call = pb_grpc.MetadataUpdateServiceStub(channel).UpdateImageSetMetadata(
        study_update(backend.datastore_id, image_set, "GRACE"), metadata=dev(OWNER)
    )
    await first_events(call, "submitted")
    health = health_pb2_grpc.HealthStub(channel)

    proxy.child.process.send_signal(signal.SIGTERM)

    async def not_serving() -> bool:
        try:
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return True  # no longer accepting calls
        return bool(answer.status == health_pb2.HealthCheckResponse.NOT_SERVING)

    await assert_eventually(not_serving)
    backend.admin("POST", "release-stalled", {})
    rest = await first_events(call, "finished")
    assert finished(rest) == ("ACTIVE", "UPDATED")
    assert await asyncio.to_thread(proxy.child.process.wait, 30) == 0
