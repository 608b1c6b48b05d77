"""Throttling storms: HealthImaging answers 429 to many calls; clients wait, never fail."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from service.cli import processes
from tests.e2e.faults.conftest import ProxyFactory
from tests.e2e.faults.harness import (
    STREAM_TIMEOUT,
    Emulator,
    connect,
    metric_value,
    metrics_text,
    name_update,
    update,
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
