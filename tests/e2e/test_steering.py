"""Seeing and steering operations across replicas (issue 21): real redis-server, OPA (the
shipped policies), the emulator and two proxies sharing one Redis journal.

A second update of an image set whose first one is stalled (LOCKED) waits in its replica's
queue: cancelled through the OTHER replica, it is never written, and the streams following it on
both replicas end with `cancelled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import (
    ProxyProcess,
    QuotaStack,
    collect,
    dev,
    kinds,
    quota_stack,
    read_until,
    redis_server,
    stalled_updates,
    study_update,
    write_quota,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

OWNER, ADMIN, STRANGER = dev("demo-editor"), dev("demo-admin"), dev("demo-viewer")


@dataclass
class Replicas:
    backend: QuotaStack
    proxies: list[ProxyProcess]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    work = tmp_path_factory.mktemp("steering")
    with (
        redis_server(work / "redis") as url,
        quota_stack(work, write_quota(20.0, 5.0), image_sets=6) as backend,
    ):
        settings = {"journal": {"url": url, "lease_seconds": 2.0}}
        yield Replicas(backend, [backend.proxy(f"replica-{n}", settings) for n in range(2)])


@pytest.fixture
async def stubs(replicas: Replicas) -> AsyncIterator[list[pb_grpc.MetadataUpdateServiceStub]]:
    channels = [grpc.aio.insecure_channel(p.endpoint) for p in replicas.proxies]
    yield [pb_grpc.MetadataUpdateServiceStub(channel) for channel in channels]
    for channel in channels:
        await channel.close()


def error_info(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        from google.rpc import error_details_pb2

        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return {"reason": info.reason, **info.metadata}
    raise AssertionError("no ErrorInfo")


async def test_a_queued_update_cancelled_on_another_replica_is_never_written(
    replicas: Replicas, stubs: list[pb_grpc.MetadataUpdateServiceStub]
) -> None:
    backend = replicas.backend
    (image_set,) = backend.take(1)
    a, b = stubs
    with stalled_updates(backend):
        first = a.UpdateImageSetMetadata(
            study_update(backend.datastore_id, image_set, "FIRST"), metadata=OWNER
        )
        first_id = (await read_until(first, "submitted"))[0].operation_id
        second = a.UpdateImageSetMetadata(
            study_update(backend.datastore_id, image_set, "SECOND", version="2"), metadata=OWNER
        )
        second_id = (await read_until(second, "queued"))[0].operation_id
        watched = b.WatchUpdate(pb.WatchUpdateRequest(operation_id=second_id), metadata=OWNER)
        await read_until(watched, "authorized")

        with pytest.raises(grpc.aio.AioRpcError) as stranger:
            await b.CancelUpdate(pb.CancelUpdateRequest(operation_id=second_id), metadata=STRANGER)
        cancelled = await b.CancelUpdate(
            pb.CancelUpdateRequest(operation_id=second_id), metadata=OWNER
        )
        ends = await asyncio.wait_for(
            asyncio.gather(read_until(second, "cancelled"), read_until(watched, "cancelled")), 10
        )
        assert await second.read() == grpc.aio.EOF and await watched.read() == grpc.aio.EOF
        with pytest.raises(grpc.aio.AioRpcError) as submitted:
            await b.CancelUpdate(pb.CancelUpdateRequest(operation_id=first_id), metadata=ADMIN)
        seen_on_a = await a.GetOperation(
            pb.GetOperationRequest(operation_id=second_id), metadata=OWNER
        )
    await read_until(first, "finished")

    assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert cancelled.state == "cancelled" and cancelled.cancelled_by == "dev:demo-editor"
    for events in ends:
        assert kinds(events)[-1] == "cancelled"
        assert events[-1].cancelled.cancelled_by == "dev:demo-editor"
    assert submitted.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(submitted.value)["state"] in ("submitted", "finished")
    assert seen_on_a.state == "cancelled"
    writes = [r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert len(writes) == 1  # the first update only


async def test_listing_pages_and_filters_as_the_policy_allows(
    replicas: Replicas, stubs: list[pb_grpc.MetadataUpdateServiceStub]
) -> None:
    backend = replicas.backend
    image_sets = backend.take(3)
    a, b = stubs
    for n, image_set in enumerate(image_sets):
        caller = OWNER if n < 2 else ADMIN
        await collect(
            a.UpdateImageSetMetadata(
                study_update(backend.datastore_id, image_set, f"LIST {n}"), metadata=caller
            )
        )
    ours = set(image_sets)

    async def listed(metadata: object, **filters: object) -> list[pb.OperationSummary]:
        found, token = [], ""
        while True:
            request = pb.ListOperationsRequest(max_results=1, next_token=token, **filters)  # type: ignore[arg-type]
            page = await b.ListOperations(request, metadata=metadata)
            assert len(page.operations) <= 1
            found.extend(o for o in page.operations if o.image_set_id in ours)
            token = page.next_token
            if not token:
                return found

    everyone = await listed(ADMIN, datastore_id=backend.datastore_id, state="finished")
    own = await listed(OWNER)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await b.ListOperations(pb.ListOperationsRequest(principal="dev:demo-admin"), metadata=OWNER)

    assert [o.image_set_id for o in everyone] == image_sets  # oldest first, across pages
    assert [o.image_set_id for o in own] == image_sets[:2]
    assert {o.principal for o in own} == {"dev:demo-editor"}
    assert all(o.last_state.image_set_workflow_status == "UPDATED" for o in everyone)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_stale_version_is_refused_before_the_queue(
    replicas: Replicas, stubs: list[pb_grpc.MetadataUpdateServiceStub]
) -> None:
    backend = replicas.backend
    (image_set,) = backend.take(1)
    await collect(
        stubs[0].UpdateImageSetMetadata(
            study_update(backend.datastore_id, image_set, "FRESH"), metadata=OWNER
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await collect(
            stubs[1].UpdateImageSetMetadata(
                study_update(backend.datastore_id, image_set, "STALE"), metadata=OWNER
            )
        )

    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert error_info(stale.value)["reason"] == "STALE_VERSION"
    assert "at version 2" in (stale.value.details() or "")
    writes = [r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert len(writes) == 1  # the stale one never took a write
