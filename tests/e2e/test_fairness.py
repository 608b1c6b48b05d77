"""Issue 18, no starvation: while one principal floods, another's single request goes before the
flood's earlier-queued work at every shared stage. Real processes: OPA, the emulator enforcing
quotas, and a proxy whose stages are narrow enough for a flood to queue at each (one decision at
a time, 3.6 reference reads/s, 0.9 writes/s).

The oracle is order, never a timing: the emulator's request log (in arrival order) for the
reference reads and the writes, and the order in which the client receives answers for the
decisions. Each test also checks that the flood really was queued ahead of the victim (so a
first-come-first-served proxy would fail it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    ProxyProcess,
    QuotaStack,
    dev,
    image_set_metadata,
    quota_stack,
    read_until,
    study_update,
    write_quota,
)
from tests.e2e.security.relay import Relay, serve
from tests.support.stack import emulator_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FLOODER, VICTIM = "demo-editor", "demo-patient"
READ, WRITE = "GetImageSetMetadata", "UpdateImageSetMetadata"
DECISION_DELAY = 0.05
"""What the relay adds to each decision (the decisions test's proxy)."""
PACED = 8
"""In flight at once for a paced flood (issue 18: what the old gate let one caller hold)."""
STAGES: dict[str, Any] = {
    "budget": {
        "update_rate": 1.0,
        "update_burst": 1.0,
        "get_image_set_rate": 4.0,
        "get_image_set_burst": 1.0,
    },
    "admission": {"max_deciding": 1},
}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    work = tmp_path_factory.mktemp("fairness")
    with quota_stack(work, write_quota(1.0, 1.0), image_sets=90, update_delay=0.1) as stack:
        yield stack


@pytest.fixture
async def stub(
    backend: QuotaStack, request: pytest.FixtureRequest
) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    """A proxy of its own per test: no leftover flood queued from another test."""
    proxy: ProxyProcess = backend.proxy(f"proxy-{request.node.name}", STAGES)
    try:
        async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
            yield pb_grpc.MetadataUpdateServiceStub(channel)
    finally:
        proxy.kill()  # its flood's queued writes must not share the next test's quota


async def series_updates(backend: QuotaStack, count: int) -> list[pb.UpdateImageSetMetadataRequest]:
    """SeriesDescription of a real series in each of `count` fresh image sets (each needs the
    proxy's reference read). The series UIDs are read straight from the emulator."""
    requests = []
    async with emulator_client(backend.emulator_url, retries=True) as client:
        for image_set in backend.take(count):
            metadata = await image_set_metadata(client, backend.datastore_id, image_set)
            series_uid = next(iter(metadata["Study"]["Series"]))
            document = {
                "SchemaVersion": 1.1,
                "Study": {"Series": {series_uid: {"DICOM": {"SeriesDescription": "FAIR"}}}},
            }
            requests.append(
                pb.UpdateImageSetMetadataRequest(
                    datastore_id=backend.datastore_id,
                    image_set_id=image_set,
                    latest_version_id="1",
                    dicom_updates=pb.DICOMUpdates(
                        updatable_attributes=json.dumps(document).encode()
                    ),
                )
            )
    return requests


def logged(backend: QuotaStack, operation: str, after: int = 0) -> list[str]:
    """The image sets of `operation` calls in arrival order (from the `after`-th call on)."""
    return [r["imageSetId"] for r in backend.requests(operation)][after:]


async def until(check: Any, bound: int = 600) -> None:
    """Poll `check()` every 50 ms until it holds (bounded: fails after `bound` tries)."""
    for _ in range(bound):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the flood never got going")


@pytest.mark.parametrize("in_flight", [PACED, 0], ids=["paced", "unpaced"])
async def test_a_single_update_goes_before_a_floods_queued_reads_and_writes(
    backend: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub, in_flight: int
) -> None:
    flood = await series_updates(backend, 30)
    (victim,) = await series_updates(backend, 1)
    reads_before_flood, writes_before = len(logged(backend, READ)), len(logged(backend, WRITE))
    authorized: list[str] = []

    async def flood_one(request: pb.UpdateImageSetMetadataRequest, gate: asyncio.Semaphore) -> None:
        async with gate:  # paced: a new update only when one of the last ones is authorized
            call = stub.UpdateImageSetMetadata(request, metadata=dev(FLOODER))
            await read_until(call, "authorized")
            authorized.append(request.image_set_id)

    gate = asyncio.Semaphore(in_flight or len(flood))
    flooding = [asyncio.create_task(flood_one(request, gate)) for request in flood]
    try:
        await until(lambda: len(logged(backend, READ, reads_before_flood)) >= PACED)
        reads_made = len(logged(backend, READ, reads_before_flood))
        call = stub.UpdateImageSetMetadata(victim, metadata=dev(VICTIM))
        await read_until(call, "authorized")
        writes_made = len(logged(backend, WRITE, writes_before))
        flood_authorized = len(authorized)
        await read_until(call, "finished")
    finally:
        for task in flooding:
            task.cancel()
        await asyncio.gather(*flooding, return_exceptions=True)

    reads = logged(backend, READ, reads_before_flood)
    victim_read = reads.index(victim.image_set_id)
    # behind a read on its way to the emulator, the one holding the stage, one of the flood's
    # (its flow was first in the ring), and one that may have started between our look at the
    # log and the victim's arrival: never behind the whole queue
    assert victim_read <= reads_made + 4, (victim_read, reads_made)
    assert len(reads) - victim_read - 1 >= 3, "the flood had no reads queued behind the victim"

    writes = logged(backend, WRITE, writes_before)
    victim_write = writes.index(victim.image_set_id)
    # behind a write on its way to the emulator and one of the flood's: one per other principal
    assert victim_write <= writes_made + 2, (victim_write, writes_made)
    queued_then = flood_authorized - writes_made
    assert queued_then >= 2, "the flood had no writes queued when the victim was authorized"


@pytest.fixture
async def slow_opa(
    backend: QuotaStack, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[pb_grpc.MetadataUpdateServiceStub, ProxyProcess]]:
    """A proxy whose decisions each take DECISION_DELAY more (a relay in front of OPA), so the
    flood is still waiting while the victim's request crosses the network, authentication and
    the role check: the order at the decisions stage is then the stage's alone."""
    async with contextlib.AsyncExitStack() as cleanup:
        session = await cleanup.enter_async_context(aiohttp.ClientSession())
        relay = Relay(backend.opa_url, session, delayed="/v1/data/imaging/update")
        relay.delay = DECISION_DELAY
        relay_url = f"http://127.0.0.1:{await serve(relay, cleanup)}"
        proxy = backend.proxy(f"proxy-{request.node.name}", STAGES, ["--opa-url", relay_url])
        cleanup.callback(proxy.kill)
        channel = await cleanup.enter_async_context(grpc.aio.insecure_channel(proxy.endpoint))
        yield pb_grpc.MetadataUpdateServiceStub(channel), proxy


def waiting_to_be_decided(proxy: ProxyProcess) -> float:
    """The proxy's own gauge of requests waiting their turn at the decisions stage."""
    for family in text_string_to_metric_families(proxy.metrics()):
        for sample in family.samples:
            if sample.name == "imaging_proxy_stage_waiting" and sample.labels == {
                "stage": "decisions"
            }:
                return sample.value
    raise AssertionError("no imaging_proxy_stage_waiting{stage='decisions'}")


@pytest.mark.parametrize("in_flight", [PACED, 200], ids=["paced", "unpaced"])
async def test_a_single_decision_goes_before_a_floods_queued_evaluations(
    backend: QuotaStack,
    slow_opa: tuple[pb_grpc.MetadataUpdateServiceStub, ProxyProcess],
    in_flight: int,
) -> None:
    stub, proxy = slow_opa
    image_set = backend.take(1)[0]
    request = study_update(backend.datastore_id, image_set, "EVALUATED")
    await stub.EvaluateUpdate(request, metadata=dev(VICTIM))  # its roles are then known
    answered: list[str] = []
    stop = asyncio.Event()

    async def flood_worker() -> None:
        while not stop.is_set():
            await stub.EvaluateUpdate(request, metadata=dev(FLOODER))
            answered.append(FLOODER)

    flooding = [asyncio.create_task(flood_worker()) for _ in range(in_flight)]
    try:
        # every worker's request but the one being decided is waiting (not still in transit)
        await until(lambda: waiting_to_be_decided(proxy) >= in_flight - 1)
        sent_at = len(answered)
        evaluation = await stub.EvaluateUpdate(request, metadata=dev(VICTIM))
        answered_at = len(answered)
    finally:
        stop.set()
        for task in flooding:  # the waiting ones are cancelled, not drained at 20 a second
            task.cancel()
        await asyncio.gather(*flooding, return_exceptions=True)

    assert evaluation.decision.allow
    # one decision at a time: the one being made when the victim arrived, one of the flood's
    # (first in the ring), and one answer that may have been on the wire when we counted; first
    # come first served would answer every waiting one first (7 or 199)
    assert answered_at - sent_at <= 3, (sent_at, answered_at)
