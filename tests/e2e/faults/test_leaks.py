"""Clients that go away leave nothing behind: no open streams, operation tasks or poll loops."""

from __future__ import annotations

import asyncio

import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack import processes
from tests.e2e.faults.conftest import ProxyFactory
from tests.e2e.faults.harness import (
    Emulator,
    connect,
    dev,
    eventually,
    first_events,
    metric_value,
    metrics_text,
    name_update,
)

pytestmark = pytest.mark.e2e

WATCHERS = 5
UPDATES = 4


def _gauges(port: int) -> dict[str, float]:
    text = metrics_text(port)
    return {
        "open_streams": metric_value(text, "imaging_proxy_open_streams"),
        "running_operations": metric_value(text, "imaging_proxy_running_operations"),
        "poll_loops": metric_value(text, "imaging_proxy_poll_loops"),
    }


async def _gauges_become(port: int, expected: dict[str, float]) -> None:
    async def check() -> bool | None:
        gauges = await asyncio.to_thread(_gauges, port)
        assert gauges == expected
        return True

    await eventually(check)


async def _start_and_leave(
    stub: pb_grpc.MetadataUpdateServiceStub, request: pb.UpdateImageSetMetadataRequest
) -> None:
    """Start one update and several WatchUpdate streams on it; the caller then drops them all."""
    call = stub.UpdateImageSetMetadata(request, metadata=dev())
    operation_id = (await first_events(call, "submitted"))[0].operation_id
    for _ in range(WATCHERS):
        watcher = stub.WatchUpdate(pb.WatchUpdateRequest(operation_id=operation_id), metadata=dev())
        await first_events(watcher, "submitted")


async def test_departed_clients_leave_no_streams_tasks_or_poll_loops(
    emulator: Emulator, launch_proxy: ProxyFactory
) -> None:
    image_sets = [emulator.take_image_set() for _ in range(UPDATES)]
    port = processes.free_port()
    proxy = launch_proxy(["--metrics-port", str(port)])
    emulator.set_faults({"update_stall_rate": 1.0})

    async with connect(proxy) as stub:
        for image_set in image_sets:
            await _start_and_leave(stub, name_update(emulator, image_set, "FAULTS^LEFT"))
    # The channel is closed: every stream's client has gone; the updates themselves go on.

    await _gauges_become(
        port, {"open_streams": 0, "running_operations": UPDATES, "poll_loops": UPDATES}
    )
    emulator.clear_faults()
    assert emulator.release_stalled() == UPDATES
    await _gauges_become(port, {"open_streams": 0, "running_operations": 0, "poll_loops": 0})
