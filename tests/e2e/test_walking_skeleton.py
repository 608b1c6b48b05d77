"""One update end to end: gRPC stream → real OPA → aioboto3 → the emulator, and back."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import Stack, collect, dev, image_set_metadata, patient_name_update

pytestmark = pytest.mark.e2e


async def test_allowed_update_streams_to_updated_and_changes_metadata(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub, healthimaging: Any
) -> None:
    image_set = stack.take_image_set()
    request = patient_name_update(stack, image_set, "SKELETON^ALLOWED")

    events = await collect(stub.UpdateImageSetMetadata(request, metadata=dev("demo-admin")))

    kinds = [
        event.WhichOneof("event") for event in events if event.WhichOneof("event") != "heartbeat"
    ]
    assert kinds[:2] == ["authorized", "submitted"]
    assert kinds[-1] == "finished"
    assert set(kinds[2:-1]) <= {"status"}
    assert len({event.operation_id for event in events}) == 1
    assert events[0].authorized.decision_id
    submitted = events[1].submitted.state
    assert (submitted.image_set_state, submitted.image_set_workflow_status) == (
        "LOCKED",
        "UPDATING",
    )
    assert submitted.latest_version_id == "2"
    finished = events[-1].finished.state
    assert (finished.image_set_state, finished.image_set_workflow_status) == ("ACTIVE", "UPDATED")
    metadata = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert metadata["Patient"]["DICOM"]["PatientName"] == "SKELETON^ALLOWED"


async def test_denied_update_is_permission_denied_and_never_reaches_the_backend(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = stack.take_image_set()
    request = patient_name_update(stack, image_set, "SKELETON^DENIED")
    call = stub.UpdateImageSetMetadata(request, metadata=dev("demo-viewer"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(call)

    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "POLICY_DENIED"
    assert info.metadata["decision_id"]
    assert stack.update_calls(image_set) == []


async def test_stale_latest_version_is_aborted(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = stack.take_image_set()
    first = patient_name_update(stack, image_set, "SKELETON^FIRST")
    await collect(stub.UpdateImageSetMetadata(first, metadata=dev("demo-admin")))

    stale = patient_name_update(stack, image_set, "SKELETON^STALE", version="1")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.UpdateImageSetMetadata(stale, metadata=dev("demo-admin")))

    assert raised.value.code() == grpc.StatusCode.ABORTED


async def test_evaluate_update_returns_changes_and_decision_without_submitting(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = stack.take_image_set()
    request = patient_name_update(stack, image_set, "SKELETON^DRYRUN")

    evaluation = await stub.EvaluateUpdate(request, metadata=dev("demo-admin"))

    assert evaluation.decision.allow
    assert [(c.level, c.tag, c.keyword) for c in evaluation.changes] == [
        ("patient", "00100010", "PatientName")
    ]
    assert stack.update_calls(image_set) == []
