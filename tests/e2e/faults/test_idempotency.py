"""Retries after a timeout with the same idempotency key: one operation, one backend update."""

from __future__ import annotations

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.faults.harness import STREAM_TIMEOUT, Emulator, name_update, update

pytestmark = pytest.mark.e2e

SLOW_SUBMIT = {"latency_ms": 3500, "operations": ["UpdateImageSetMetadata"]}
# Long enough to be admitted (the proxy refuses calls that cannot start before their deadline),
# too short for the slow submit: the first attempt times out while HealthImaging is working.
FIRST_ATTEMPT_DEADLINE = 2.0


async def test_retries_after_a_timeout_make_exactly_one_backend_update(
    emulator: Emulator, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = emulator.take_image_set()
    request = name_update(emulator, image_set, "FAULTS^ONCE", key=f"retry-{image_set}")
    emulator.set_faults(SLOW_SUBMIT)

    timed_out = await update(stub, request, deadline=FIRST_ATTEMPT_DEADLINE)
    retried = await update(stub, request, deadline=STREAM_TIMEOUT)
    again = await update(stub, request, deadline=STREAM_TIMEOUT)

    assert timed_out.code == grpc.StatusCode.DEADLINE_EXCEEDED, timed_out.details
    assert retried.code == again.code == grpc.StatusCode.OK, (retried.details, again.details)
    assert timed_out.operation_id == retried.operation_id == again.operation_id
    for outcome in (retried, again):
        assert outcome.finished is not None
        assert outcome.finished.image_set_workflow_status == "UPDATED"
    assert len(emulator.calls("UpdateImageSetMetadata", image_set)) == 1


async def test_same_key_for_a_different_request_is_invalid_argument(
    emulator: Emulator, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = emulator.take_image_set()
    key = f"reused-{image_set}"
    first = await update(stub, name_update(emulator, image_set, "FAULTS^A", key=key))
    assert first.code == grpc.StatusCode.OK, first.details

    other = name_update(emulator, image_set, "FAULTS^B", version="2", key=key)
    reused = await update(stub, other, deadline=STREAM_TIMEOUT)

    assert reused.code == grpc.StatusCode.INVALID_ARGUMENT, reused.details
    assert len(emulator.calls("UpdateImageSetMetadata", image_set)) == 1
