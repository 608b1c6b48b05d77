"""The submit fails (500, dropped connection): UNAVAILABLE, saying whether it may have happened."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest

from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from tests.e2e.faults.harness import STREAM_TIMEOUT, Emulator, name_update, update

pytestmark = pytest.mark.e2e

SUBMIT_FAULTS = {
    "500": {"error_rate": 1.0, "operations": ["UpdateImageSetMetadata"]},
    "dropped connection": {"drop_rate": 1.0, "operations": ["UpdateImageSetMetadata"]},
}
# What the caller must be told: HealthImaging may have applied the write before failing to answer
# (or, if the proxy checked, that it did not), so a blind retry is not safe to assume.
OUTCOME_STATED = re.compile(
    r"may (or may not )?have (been applied|happened|succeeded)|was not applied", re.IGNORECASE
)


@pytest.mark.parametrize("fault", list(SUBMIT_FAULTS))
async def test_failed_submit_is_unavailable_and_says_whether_the_update_may_have_happened(
    fault: str,
    emulator: Emulator,
    stub: pb_grpc.MetadataUpdateServiceStub,
    healthimaging: Any,
) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults(SUBMIT_FAULTS[fault])

    request = name_update(emulator, image_set, "FAULTS^SUBMIT")
    outcome = await update(stub, request, deadline=STREAM_TIMEOUT)

    assert outcome.code == grpc.StatusCode.UNAVAILABLE, outcome.details
    assert outcome.kinds == ["authorized"]
    assert outcome.error_info is not None
    assert outcome.error_info.reason == "BACKEND_UNAVAILABLE"
    assert OUTCOME_STATED.search(outcome.details), outcome.details
    writes = emulator.calls("UpdateImageSetMetadata", image_set)
    assert len(writes) == 1, "a write must never be retried blindly"
    emulator.clear_faults()
    current = await healthimaging.get_image_set(
        datastoreId=emulator.datastore_id, imageSetId=image_set
    )
    assert current["versionId"] == "1"
