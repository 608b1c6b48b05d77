"""Replicas on one Redis: one shared write budget, and any replica serves any operation.

Real processes: redis-server, OPA, the emulator enforcing 2 writes/s, and proxies whose journal
and budget live in that Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import (
    ProxyProcess,
    QuotaStack,
    Sections,
    collect,
    dev,
    kinds,
    quota_stack,
    read_until,
    redis_server,
    stalled_updates,
    study_update,
    throttles,
    within_budget,
    write_quota,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

WRITES_PER_SECOND = 2.0
LEASE_SECONDS = 2.0
EDITORS = ("demo-editor", "demo-patient", "demo-private")


@dataclass
class Replicas:
    backend: QuotaStack
    redis_url: str
    proxies: list[ProxyProcess]

    def settings(self) -> Sections:
        return {
            "journal": {"url": self.redis_url, "lease_seconds": LEASE_SECONDS},
            "budget": {"update_rate": WRITES_PER_SECOND, "update_burst": 1.0},
        }


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    work = tmp_path_factory.mktemp("replicas")
    with (
        redis_server(work / "redis") as url,
        quota_stack(work, write_quota(WRITES_PER_SECOND, 1.0), image_sets=24) as backend,
    ):
        running = Replicas(backend, url, [])
        running.proxies = [backend.proxy(f"replica-{n}", running.settings()) for n in range(2)]
        yield running


@pytest.fixture
async def stubs(replicas: Replicas) -> AsyncIterator[list[pb_grpc.MetadataUpdateServiceStub]]:
    channels = [grpc.aio.insecure_channel(p.endpoint) for p in replicas.proxies]
    yield [pb_grpc.MetadataUpdateServiceStub(channel) for channel in channels]
    for channel in channels:
        await channel.close()


@pytest.fixture
def stalled(replicas: Replicas) -> Iterator[None]:
    with stalled_updates(replicas.backend):
        yield


def final(events: list[pb.UpdateEvent]) -> tuple[str, str]:
    state = events[-1].finished.state
    return state.image_set_state, state.image_set_workflow_status


def watch(stub: pb_grpc.MetadataUpdateServiceStub, operation_id: str) -> Any:
    return stub.WatchUpdate(
        pb.WatchUpdateRequest(operation_id=operation_id), metadata=dev(EDITORS[0]), timeout=30
    )


async def test_two_replicas_together_never_exceed_the_shared_budget(
    replicas: Replicas, stubs: list[pb_grpc.MetadataUpdateServiceStub]
) -> None:
    backend = replicas.backend
    image_sets = backend.take(10)
    calls = [
        stubs[n % 2].UpdateImageSetMetadata(
            study_update(backend.datastore_id, image_set, f"REPLICA {n}"),
            metadata=dev(EDITORS[n % len(EDITORS)]),
        )
        for n, image_set in enumerate(image_sets)
    ]

    results = await asyncio.gather(*(collect(call) for call in calls))

    assert all(final(events) == ("ACTIVE", "UPDATED") for events in results)
    writes = [
        r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] in image_sets
    ]
    assert sorted(r["imageSetId"] for r in writes) == sorted(image_sets)
    assert throttles(backend.requests()) == []
    assert within_budget([r["at"] for r in writes], WRITES_PER_SECOND, 1.0)


async def test_any_replica_serves_a_watch_and_a_retry(
    replicas: Replicas, stubs: list[pb_grpc.MetadataUpdateServiceStub], stalled: None
) -> None:
    backend = replicas.backend
    (image_set,) = backend.take(1)
    request = study_update(backend.datastore_id, image_set, "ANYWHERE", key=str(uuid.uuid4()))
    started = stubs[0].UpdateImageSetMetadata(request, metadata=dev(EDITORS[0]))
    operation_id = (await read_until(started, "submitted"))[0].operation_id

    elsewhere = watch(stubs[1], operation_id)
    replayed = await read_until(elsewhere, "submitted")
    retried = stubs[1].UpdateImageSetMetadata(request, metadata=dev(EDITORS[0]))
    await read_until(retried, "submitted")
    backend.admin("POST", "release-stalled", {})
    rest = await read_until(elsewhere, "finished")
    retried_rest = await read_until(retried, "finished")

    assert kinds(replayed) == ["authorized", "submitted"]
    assert {e.operation_id for e in [*replayed, *rest, *retried_rest]} == {operation_id}
    assert final(rest) == final(retried_rest) == ("ACTIVE", "UPDATED")
    writes = [r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert len(writes) == 1


async def test_a_replica_that_dies_is_taken_over(
    replicas: Replicas, stubs: list[pb_grpc.MetadataUpdateServiceStub], stalled: None
) -> None:
    backend = replicas.backend
    (image_set,) = backend.take(1)
    doomed = backend.proxy("doomed", replicas.settings())
    async with grpc.aio.insecure_channel(doomed.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        first = stub.UpdateImageSetMetadata(
            study_update(backend.datastore_id, image_set, "FIRST"), metadata=dev(EDITORS[0])
        )
        first_id = (await read_until(first, "submitted"))[0].operation_id
        second = stub.UpdateImageSetMetadata(  # waits for the LOCKED image set
            study_update(backend.datastore_id, image_set, "SECOND", version="2"),
            metadata=dev(EDITORS[0]),
        )
        second_id = (await read_until(second, "queued"))[0].operation_id
        doomed.kill()

    backend.admin("PUT", "faults", {})
    backend.admin("POST", "release-stalled", {})
    first_events, second_events = await asyncio.gather(
        collect(watch(stubs[0], first_id)), collect(watch(stubs[1], second_id))
    )

    assert final(first_events) == final(second_events) == ("ACTIVE", "UPDATED")
    writes = [r for r in backend.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert [r["status"] for r in writes] == [200, 200]
