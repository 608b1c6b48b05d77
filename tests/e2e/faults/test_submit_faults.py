"""The submit fails (500, dropped connection): UNAVAILABLE, saying whether it may have happened."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.faults.harness import (
    STREAM_TIMEOUT,
    Emulator,
    Proxy,
    cli_update,
    eventually,
    name_update,
    update,
)

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
# The CLI's own retries (same idempotency key) are bounded; keep the bound small here.
FEW_ATTEMPTS = {"IMAGING_PROXY_MAX_ATTEMPTS": "4"}


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


async def test_cli_rides_out_a_transient_submit_failure_with_one_write(
    emulator: Emulator, proxy: Proxy
) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults(SUBMIT_FAULTS["500"])

    cli = asyncio.create_task(
        cli_update(proxy, emulator, image_set, "FAULTS^RETRIED", FEW_ATTEMPTS)
    )
    await eventually(lambda: _failed_writes(emulator, image_set))
    emulator.clear_faults()
    rc, stdout, stderr = await cli

    assert rc == 0, stderr
    assert json.loads(stdout)["imageSetWorkflowStatus"] == "UPDATED"
    statuses = [w["status"] for w in emulator.calls("UpdateImageSetMetadata", image_set)]
    assert statuses.count(200) == 1, statuses


async def test_cli_gives_up_on_a_submit_that_keeps_failing_and_says_why(
    emulator: Emulator, proxy: Proxy
) -> None:
    image_set = emulator.take_image_set()
    emulator.set_faults(SUBMIT_FAULTS["500"])

    rc, _, stderr = await cli_update(proxy, emulator, image_set, "FAULTS^GAVEUP", FEW_ATTEMPTS)

    assert rc == 254, stderr
    assert OUTCOME_STATED.search(stderr), stderr
    writes = emulator.calls("UpdateImageSetMetadata", image_set)
    assert 1 <= len(writes) <= int(FEW_ATTEMPTS["IMAGING_PROXY_MAX_ATTEMPTS"])


async def _failed_writes(emulator: Emulator, image_set: str) -> bool | None:
    writes = await asyncio.to_thread(emulator.calls, "UpdateImageSetMetadata", image_set)
    return True if any(w["status"] == 500 for w in writes) else None
