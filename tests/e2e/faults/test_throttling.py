"""Throttling storms: HealthImaging answers 429 to many calls; clients wait, never fail."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack import processes
from tests.e2e.faults.conftest import ProxyFactory
from tests.e2e.faults.harness import (
    STREAM_TIMEOUT,
    Emulator,
    connect,
    eventually,
    metric_value,
    metrics_text,
    name_update,
    update,
    watch,
)

pytestmark = pytest.mark.e2e

STORM = {"throttle_rate": 0.4}
UPDATES = 4
# Budgets well above the load, with short backoffs: the storm, not the budget, is what is tested.
FAST_BACKOFF = {
    "budget": {
        "update_rate": 10.0,
        "update_burst": 10.0,
        "backoff_seconds": 0.2,
        "max_backoff_seconds": 1.0,
        "min_fraction": 0.2,
    }
}


# Every poll throttled until the budget has shrunk to its floor, then calm again: watches that
# timed out meanwhile must pick up again once HealthImaging answers.
POLL_STORM = {"throttle_rate": 1.0, "operations": ["GetImageSet"]}
STORM_THROTTLES = 5
WATCH_TIMEOUT_SECONDS = 3.0
RECOVERY_SECONDS = 60.0


async def test_throttling_storm_is_absorbed_and_every_update_finishes(
    emulator: Emulator, launch_proxy: ProxyFactory, tmp_path: Path
) -> None:
    image_sets = [emulator.take_image_set() for _ in range(UPDATES)]
    metrics_port = processes.free_port()
    proxy = launch_proxy(["--metrics-port", str(metrics_port)], FAST_BACKOFF)
    emulator.set_faults(STORM)

    async with connect(proxy) as stub:
        outcomes = await asyncio.gather(
            *(
                update(stub, name_update(emulator, i, "FAULTS^STORM"), deadline=STREAM_TIMEOUT)
                for i in image_sets
            )
        )

    assert [o.code for o in outcomes] == [grpc.StatusCode.OK] * UPDATES, [
        o.details for o in outcomes
    ]
    finished = [o.finished for o in outcomes]
    assert all(f is not None and f.image_set_workflow_status == "UPDATED" for f in finished)
    throttled = [r for r in emulator.requests() if r["imageSetId"] in image_sets]
    assert any(r["status"] == 429 for r in throttled), "the storm never hit the proxy"
    for image_set in image_sets:
        writes = [c for c in emulator.calls("UpdateImageSetMetadata", image_set)]
        assert [w["status"] for w in writes].count(200) == 1
    exported = metrics_text(metrics_port)
    assert metric_value(exported, "imaging_proxy_backend_throttles_total") > 0


async def test_watches_recover_after_a_get_image_set_throttling_storm(
    emulator: Emulator, launch_proxy: ProxyFactory
) -> None:
    image_sets = [emulator.take_image_set() for _ in range(UPDATES)]
    proxy = launch_proxy(["--watch-timeout", str(WATCH_TIMEOUT_SECONDS)])
    emulator.set_faults(POLL_STORM)

    async with connect(proxy) as stub:
        followers = [
            asyncio.create_task(_follow_to_the_end(stub, name_update(emulator, i, "FAULTS^CALM")))
            for i in image_sets
        ]
        await eventually(lambda: _throttled_polls(emulator, image_sets), within=60)
        emulator.clear_faults()
        finals = await asyncio.gather(*followers)

    assert finals == [("UPDATED", "2")] * UPDATES


async def _follow_to_the_end(
    stub: pb_grpc.MetadataUpdateServiceStub, request: pb.UpdateImageSetMetadataRequest
) -> tuple[str, str] | None:
    """Submit, then re-attach (as a client told DEADLINE_EXCEEDED would) until it finishes."""
    outcome = await update(stub, request, deadline=STREAM_TIMEOUT)
    give_up_at = time.monotonic() + RECOVERY_SECONDS
    while outcome.finished is None and time.monotonic() < give_up_at:
        assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED, outcome.details
        outcome = await watch(stub, outcome.operation_id)
    state = outcome.finished
    return (state.image_set_workflow_status, state.latest_version_id) if state else None


async def _throttled_polls(emulator: Emulator, image_sets: list[str]) -> bool | None:
    polls = await asyncio.to_thread(emulator.requests)
    throttled = [p for p in polls if p["imageSetId"] in image_sets and p["status"] == 429]
    return True if len(throttled) >= STORM_THROTTLES else None
