"""HealthImaging misbehaving while an update is watched: the stream ends in the right state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import pytest

from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from tests.e2e.conftest import image_set_metadata
from tests.e2e.faults.harness import STREAM_TIMEOUT, Emulator, name_update, update

pytestmark = pytest.mark.e2e

WATCH_FAULTS: Mapping[str, Mapping[str, object]] = {
    "500s": {"error_rate": 0.6, "operations": ["GetImageSet"]},
    "slow": {"latency_ms": 400, "jitter_ms": 300, "operations": ["GetImageSet"]},
    "dropped connections": {"drop_rate": 0.6, "operations": ["GetImageSet"]},
    "all at once": {
        "error_rate": 0.3,
        "drop_rate": 0.3,
        "latency_ms": 100,
        "jitter_ms": 200,
        "operations": ["GetImageSet"],
    },
}
# How each fault shows in the emulator's request log (status 0: connection closed unanswered).
FAULT_SIGNATURE = {"500s": {500}, "dropped connections": {0}, "all at once": {0, 500}}


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
    outcome = await update(stub, request, deadline=STREAM_TIMEOUT)

    assert outcome.code == grpc.StatusCode.OK, outcome.details
    assert outcome.kinds[:2] == ["authorized", "submitted"]
    assert outcome.kinds[-1] == "finished"
    finished = outcome.finished
    assert finished is not None
    assert (finished.image_set_state, finished.image_set_workflow_status) == ("ACTIVE", "UPDATED")
    assert finished.latest_version_id == "2"
    statuses = {c["status"] for c in emulator.calls("GetImageSet", image_set)}
    assert FAULT_SIGNATURE.get(fault, set()) <= statuses, "the fault never hit the watch"
    emulator.clear_faults()
    metadata = await image_set_metadata(healthimaging, emulator.datastore_id, image_set)
    assert metadata["Patient"]["DICOM"]["PatientName"] == "FAULTS^WATCH"
