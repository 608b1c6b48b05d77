"""HealthImaging misbehaving while an update is watched: the stream ends in the right state."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import image_set_metadata
from tests.e2e.faults.harness import STREAM_TIMEOUT, Emulator, eventually, name_update, update

pytestmark = pytest.mark.e2e

# Each fault stays on until the watch has met it (see EVIDENCE), then goes away.
WATCH_FAULTS: Mapping[str, Mapping[str, object]] = {
    "500s": {"error_rate": 1.0, "operations": ["GetImageSet"]},
    "slow": {"latency_ms": 400, "jitter_ms": 300, "operations": ["GetImageSet"]},
    "dropped connections": {"drop_rate": 1.0, "operations": ["GetImageSet"]},
    "all at once": {
        "error_rate": 0.5,
        "drop_rate": 0.5,
        "latency_ms": 100,
        "jitter_ms": 200,
        "operations": ["GetImageSet"],
    },
}
# What the emulator's request log must show before the fault is lifted: these statuses (0: the
# connection was closed unanswered), so many times in all. Slow answers are still 200s.
EVIDENCE: Mapping[str, tuple[frozenset[int], int]] = {
    "500s": (frozenset({500}), 3),
    "slow": (frozenset({200}), 1),
    "dropped connections": (frozenset({0}), 3),
    "all at once": (frozenset({0, 500}), 4),
}


@pytest.mark.parametrize("fault", list(WATCH_FAULTS))
async def test_watch_survives_backend_faults(
    fault: str,
    emulator: Emulator,
    stub: pb_grpc.MetadataUpdateServiceStub,
    healthimaging: Any,
) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults(WATCH_FAULTS[fault])

    request = name_update(emulator, image_set, "FAULTS^WATCH")
    stream = asyncio.create_task(update(stub, request, deadline=STREAM_TIMEOUT))
    await eventually(lambda: _faulted_polls(emulator, image_set, *EVIDENCE[fault]), within=15)
    emulator.clear_faults()
    outcome = await stream

    assert outcome.code == grpc.StatusCode.OK, outcome.details
    assert outcome.kinds[:2] == ["authorized", "submitted"]
    assert outcome.kinds[-1] == "finished"
    finished = outcome.finished
    assert finished is not None
    assert (finished.image_set_state, finished.image_set_workflow_status) == ("ACTIVE", "UPDATED")
    assert finished.latest_version_id == "2"
    metadata = await image_set_metadata(healthimaging, emulator.datastore_id, image_set)
    assert metadata["Patient"]["DICOM"]["PatientName"] == "FAULTS^WATCH"


async def _faulted_polls(
    emulator: Emulator, image_set: str, statuses: frozenset[int], hits: int
) -> bool | None:
    """Whether the watch has met every kind of fault, `hits` times in all."""
    polls = await asyncio.to_thread(emulator.calls, "GetImageSet", image_set)
    seen = [p["status"] for p in polls if p["status"] in statuses]
    return True if len(seen) >= hits and statuses <= set(seen) else None
