"""Many callers against HealthImaging's write quota: fair turns, no throttles, one write per key.

Real processes: OPA, the emulator enforcing the quota, and the proxy with the same budget.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
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
    study_update,
    throttles,
    within_budget,
    write_quota,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WRITES_PER_SECOND = 1.0
EDITORS = ("demo-editor", "demo-patient", "demo-private")


@pytest.fixture(scope="module")
def raised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    """The emulator allows 1 write/s (burst 1); the proxy's budget says the same."""
    work = tmp_path_factory.mktemp("raised-quota")
    with quota_stack(work, write_quota(WRITES_PER_SECOND, 1.0), image_sets=30) as stack:
        yield stack


@pytest.fixture(scope="module")
def proxy(raised: QuotaStack) -> ProxyProcess:
    budget = {"update_rate": WRITES_PER_SECOND, "update_burst": 1.0}
    return raised.proxy("proxy", {"budget": budget})


@pytest.fixture
async def stub(proxy: ProxyProcess) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


def final(events: list[pb.UpdateEvent]) -> tuple[str, str]:
    state = events[-1].finished.state
    return state.image_set_state, state.image_set_workflow_status


async def read_all(call: Any) -> list[pb.UpdateEvent]:
    events = []
    while (event := await call.read()) != grpc.aio.EOF:
        events.append(event)
    return events


async def test_many_concurrent_callers_finish_within_the_write_budget(
    raised: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_sets = raised.take(12)
    calls = [
        stub.UpdateImageSetMetadata(
            study_update(raised.datastore_id, image_set, f"LOAD {n}"),
            metadata=dev(EDITORS[n % len(EDITORS)]),
        )
        for n, image_set in enumerate(image_sets)
    ]

    results = await asyncio.gather(*(collect(call) for call in calls))

    assert all(final(events) == ("ACTIVE", "UPDATED") for events in results)
    writes = [r for r in raised.requests("UpdateImageSetMetadata") if r["imageSetId"] in image_sets]
    assert sorted(r["imageSetId"] for r in writes) == sorted(image_sets)
    assert throttles(raised.requests()) == []
    assert within_budget([r["at"] for r in writes], WRITES_PER_SECOND, 1.0)
    waited = [events for events in results if "queued" in kinds(events)]
    assert len(waited) >= len(image_sets) - 2  # at most the first one or two went at once
    moved = 0
    for events in waited:
        assert kinds(events)[:2] == ["authorized", "queued"]
        queued = [e for e in events if e.HasField("queued")]
        positions = [e.queued.position for e in queued]
        assert all(1 <= p <= len(image_sets) for p in positions)
        # Round-robin may put a newly arrived caller ahead, so positions need not only fall.
        moved += positions[-1] < positions[0]
        for event in queued:
            assert event.queued.estimated_start.ToNanoseconds() >= event.at.ToNanoseconds() - 1e9
    assert moved >= len(waited) // 2  # streams hear the queue move
    polls = raised.requests("GetImageSet")
    assert all(sum(r["imageSetId"] == i for r in polls) <= 3 for i in image_sets)


async def test_one_noisy_caller_cannot_starve_the_others(
    raised: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    noisy, quiet = raised.take(6), raised.take(4)
    datastore = raised.datastore_id
    noisy_calls = [
        stub.UpdateImageSetMetadata(study_update(datastore, i, "NOISY"), metadata=dev(EDITORS[0]))
        for i in noisy
    ]
    for call in noisy_calls:  # all six are admitted before the quiet callers arrive
        await read_until(call, "authorized")
    quiet_calls = [
        stub.UpdateImageSetMetadata(
            study_update(datastore, i, "QUIET"), metadata=dev(EDITORS[1 + n % 2])
        )
        for n, i in enumerate(quiet)
    ]

    results = await asyncio.gather(*(read_all(call) for call in [*noisy_calls, *quiet_calls]))

    assert all(kinds(events)[-1] == "finished" for events in results)
    writes = [
        r for r in raised.requests("UpdateImageSetMetadata") if r["imageSetId"] in noisy + quiet
    ]
    order = [r["imageSetId"] for r in sorted(writes, key=lambda r: r["at"])]
    # First come, first served would put every quiet update last (places 7-10); round-robin
    # serves them between the noisy caller's.
    assert max(order.index(i) for i in quiet) <= 6
    assert throttles(raised.requests()) == []


async def test_an_idempotent_retry_streams_the_same_operation_and_writes_once(
    raised: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = raised.take(1)
    key = f"retry-{uuid.uuid4()}"
    request = study_update(raised.datastore_id, image_set, "IDEMPOTENT", key=key)

    first, retried = await asyncio.gather(
        collect(stub.UpdateImageSetMetadata(request, metadata=dev(EDITORS[0]))),
        collect(stub.UpdateImageSetMetadata(request, metadata=dev(EDITORS[0]))),
    )
    after = await collect(stub.UpdateImageSetMetadata(request, metadata=dev(EDITORS[0])))

    assert {e.operation_id for e in [*first, *retried, *after]} == {first[0].operation_id}
    assert final(first) == final(retried) == final(after) == ("ACTIVE", "UPDATED")
    assert kinds(after) == ["authorized", "submitted", "finished"]  # replayed, not redone
    writes = [r for r in raised.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert len(writes) == 1

    changed = study_update(raised.datastore_id, image_set, "SOMETHING ELSE", key=key)
    call = stub.UpdateImageSetMetadata(changed, metadata=dev(EDITORS[0]))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(call)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in (refused.value.details() or "")


async def test_an_update_to_a_locked_image_set_waits_for_it_to_unlock(
    raised: QuotaStack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = raised.take(1)
    datastore = raised.datastore_id
    raised.admin("PUT", "faults", {"update_stall_rate": 1.0})
    try:
        first = stub.UpdateImageSetMetadata(
            study_update(datastore, image_set, "FIRST"), metadata=dev(EDITORS[1])
        )
        await read_until(first, "submitted")  # version 2 is LOCKED until released
    finally:
        raised.admin("PUT", "faults", {})
    second = stub.UpdateImageSetMetadata(
        study_update(datastore, image_set, "SECOND", version="2"), metadata=dev(EDITORS[1])
    )
    await read_until(second, "queued")
    await asyncio.sleep(2.5 / WRITES_PER_SECOND)  # two write slots pass: still not submitted
    writes = [r for r in raised.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert len(writes) == 1

    raised.admin("POST", "release-stalled", {})
    second_events, first_events = await asyncio.gather(read_all(second), read_all(first))

    assert final(first_events) == final(second_events) == ("ACTIVE", "UPDATED")
    writes = [r for r in raised.requests("UpdateImageSetMetadata") if r["imageSetId"] == image_set]
    assert [r["status"] for r in writes] == [200, 200]  # no write was spent on a ConflictException

    stale = study_update(datastore, image_set, "STALE", version="2")
    with pytest.raises(grpc.aio.AioRpcError) as aborted:
        await collect(stub.UpdateImageSetMetadata(stale, metadata=dev(EDITORS[1])))
    assert aborted.value.code() == grpc.StatusCode.ABORTED


async def test_metrics_describe_the_load_without_naming_anyone(
    raised: QuotaStack, proxy: ProxyProcess, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    (image_set,) = raised.take(1)
    await collect(
        stub.UpdateImageSetMetadata(
            study_update(raised.datastore_id, image_set, "METRICS"), metadata=dev(EDITORS[0])
        )
    )
    text = proxy.metrics()
    for name in (
        'imaging_proxy_requests_total{outcome="OK",rpc="UpdateImageSetMetadata"}',
        "imaging_proxy_queue_depth",
        "imaging_proxy_queue_wait_seconds_count",
        "imaging_proxy_decision_seconds_count",
        'imaging_proxy_backend_seconds_count{operation="UpdateImageSetMetadata"}',
        'imaging_proxy_budget_tokens{operation="GetImageSet"}',
        "imaging_proxy_open_streams",
        "imaging_proxy_poll_loops",
        "imaging_proxy_running_operations",
    ):
        assert name in text
    for secret in (image_set, raised.datastore_id, *EDITORS, "METRICS"):
        assert secret not in text


# --- the real default quota ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    """The emulator and the proxy both on HealthImaging's documented defaults (0.25 writes/s)."""
    with quota_stack(tmp_path_factory.mktemp("default-quota"), {}, image_sets=4) as stack:
        yield stack


async def test_the_real_default_quota_is_never_exceeded(defaults: QuotaStack) -> None:
    proxy = defaults.proxy("proxy", {})
    image_sets = defaults.take(4)
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        calls = [
            stub.UpdateImageSetMetadata(
                study_update(defaults.datastore_id, i, "DEFAULT"), metadata=dev(EDITORS[n])
            )
            for n, i in enumerate(image_sets[:3])
        ]
        for call in calls:
            await read_until(call, "authorized")
        hurried = stub.UpdateImageSetMetadata(
            study_update(defaults.datastore_id, image_sets[3], "HURRIED"),
            metadata=dev(EDITORS[0]),
            timeout=3.0,  # three writes ahead at one per 4.4 s: it cannot start in time
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(hurried)
        results = await asyncio.gather(*(read_all(call) for call in calls))

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _retry_delay(refused.value) > 3.0
    assert all(final(events) == ("ACTIVE", "UPDATED") for events in results)
    writes = defaults.requests("UpdateImageSetMetadata")
    assert sorted(r["imageSetId"] for r in writes) == sorted(image_sets[:3])
    assert throttles(defaults.requests()) == []
    assert within_budget([r["at"] for r in writes], 0.25, 1.0)


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("no RetryInfo")
