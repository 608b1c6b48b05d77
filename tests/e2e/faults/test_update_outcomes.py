"""Updates that HealthImaging accepts but never completes well: UPDATE_FAILED, or stuck UPDATING."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.faults.conftest import ProxyFactory
from tests.e2e.faults.harness import (
    STREAM_TIMEOUT,
    Emulator,
    Proxy,
    cli_update,
    name_update,
    update,
    watch,
)

pytestmark = pytest.mark.e2e

WATCH_TIMEOUT_SECONDS = 1.5


async def test_failed_update_finishes_with_update_failed_and_its_message(
    emulator: Emulator, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults({"update_failure_rate": 1.0})

    outcome = await update(
        stub, name_update(emulator, image_set, "FAULTS^FAILED"), deadline=STREAM_TIMEOUT
    )

    assert outcome.code == grpc.StatusCode.OK, outcome.details
    assert outcome.kinds[-1] == "finished"
    finished = outcome.finished
    assert finished is not None
    assert (finished.image_set_state, finished.image_set_workflow_status) == (
        "ACTIVE",
        "UPDATE_FAILED",
    )
    assert finished.message
    assert finished.latest_version_id == "2"


async def test_cli_exits_254_when_the_update_fails(emulator: Emulator, proxy: Proxy) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults({"update_failure_rate": 1.0})

    rc, stdout, stderr = await cli_update(proxy, emulator, image_set, "FAULTS^CLI")

    assert rc == 254, stderr
    printed = json.loads(stdout)
    assert printed["imageSetWorkflowStatus"] == "UPDATE_FAILED"
    assert printed["latestVersionId"] == "2"
    assert "UPDATE_FAILED" in stderr
    assert printed.get("message", "") in stderr


async def test_stalled_update_ends_the_stream_and_watch_update_picks_it_up_later(
    emulator: Emulator, launch_proxy: ProxyFactory, healthimaging: Any
) -> None:
    image_set = emulator.take_image_set()
    impatient = launch_proxy(["--watch-timeout", str(WATCH_TIMEOUT_SECONDS)])
    emulator.set_faults({"update_stall_rate": 1.0})

    async with grpc.aio.insecure_channel(impatient.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        stalled = await update(
            stub, name_update(emulator, image_set, "FAULTS^STALLED"), deadline=STREAM_TIMEOUT
        )

        assert stalled.code == grpc.StatusCode.DEADLINE_EXCEEDED, stalled.details
        assert "UPDATING" in stalled.details
        assert "WatchUpdate" in stalled.details and stalled.operation_id in stalled.details
        assert stalled.submitted is not None
        current = await healthimaging.get_image_set(
            datastoreId=emulator.datastore_id, imageSetId=image_set
        )
        assert (current["imageSetState"], current["imageSetWorkflowStatus"]) == (
            "LOCKED",
            "UPDATING",
        )

        assert emulator.release_stalled() >= 1
        later = await watch(stub, stalled.operation_id)

    assert later.code == grpc.StatusCode.OK, later.details
    finished = later.finished
    assert finished is not None
    assert (finished.image_set_workflow_status, finished.latest_version_id) == ("UPDATED", "2")
