"""Clients that leave mid-stream (cancel, deadline, disconnect) never cancel the update itself."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import image_set_metadata
from tests.e2e.faults.harness import (
    Emulator,
    Proxy,
    dev,
    drain,
    eventually,
    first_events,
    name_update,
    watch,
)

pytestmark = pytest.mark.e2e

# The submit is slowed down so that every way of leaving happens before HealthImaging answers.
SUBMIT_LATENCY_MS = {"cancel": 1500, "deadline": 3000, "disconnect": 1500}
# Above the proxy's admission margin (1 s): the call is admitted, then times out mid-submit.
CLIENT_DEADLINE_SECONDS = 2.0


async def _cancel(proxy: Proxy, request: pb.UpdateImageSetMetadataRequest) -> str:
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        call = pb_grpc.MetadataUpdateServiceStub(channel).UpdateImageSetMetadata(
            request, metadata=dev()
        )
        events = await first_events(call, "authorized")
        call.cancel()
        return events[0].operation_id


async def _deadline(proxy: Proxy, request: pb.UpdateImageSetMetadataRequest) -> str:
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        call = pb_grpc.MetadataUpdateServiceStub(channel).UpdateImageSetMetadata(
            request, metadata=dev(), timeout=CLIENT_DEADLINE_SECONDS
        )
        outcome = await drain(call)
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED, outcome.details
    assert outcome.kinds == ["authorized"]
    return outcome.operation_id


async def _disconnect(proxy: Proxy, request: pb.UpdateImageSetMetadataRequest) -> str:
    channel = grpc.aio.insecure_channel(proxy.endpoint)
    call = pb_grpc.MetadataUpdateServiceStub(channel).UpdateImageSetMetadata(
        request, metadata=dev()
    )
    events = await first_events(call, "authorized")
    await channel.close(grace=None)
    return events[0].operation_id


DEPARTURES = {"cancel": _cancel, "deadline": _deadline, "disconnect": _disconnect}


@pytest.mark.parametrize("departure", list(DEPARTURES))
async def test_update_goes_on_after_the_client_leaves(
    departure: str,
    emulator: Emulator,
    proxy: Proxy,
    stub: pb_grpc.MetadataUpdateServiceStub,
    healthimaging: Any,
) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults(
        {"latency_ms": SUBMIT_LATENCY_MS[departure], "operations": ["UpdateImageSetMetadata"]}
    )
    name = f"FAULTS^{departure.upper()}"

    operation_id = await DEPARTURES[departure](proxy, name_update(emulator, image_set, name))

    async def submitted() -> bool | None:
        writes = emulator.calls("UpdateImageSetMetadata", image_set)
        return True if writes and writes[-1]["status"] == 200 else None

    await eventually(submitted)
    emulator.clear_faults()
    reattached = await watch(stub, operation_id)
    assert reattached.code == grpc.StatusCode.OK, reattached.details
    finished = reattached.finished
    assert finished is not None
    assert (finished.image_set_workflow_status, finished.latest_version_id) == ("UPDATED", "2")
    metadata = await image_set_metadata(healthimaging, emulator.datastore_id, image_set)
    assert metadata["Patient"]["DICOM"]["PatientName"] == name
