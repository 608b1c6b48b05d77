"""Doomed updates spend no write: a series or instance the image set lacks is refused first.

Real processes (`imaging-proxy demo`); the emulator's request log is the oracle: one
GetImageSetMetadata read, and no UpdateImageSetMetadata for the image set.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.support.stack import Stack, collect, dev, image_set_metadata

pytestmark = pytest.mark.e2e

SERIES_FIELD = "updates.dicom_updates.{blob}.Study.Series"


def series_update(
    stack: Stack, image_set_id: str, series_uid: str, body: dict[str, Any], blob: str
) -> pb.UpdateImageSetMetadataRequest:
    document = json.dumps({"SchemaVersion": 1.1, "Study": {"Series": {series_uid: body}}})
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=stack.datastore_id,
        image_set_id=image_set_id,
        latest_version_id="1",
        dicom_updates=pb.DICOMUpdates(**{blob: document.encode()}),
    )


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


def calls(stack: Stack, operation: str, image_set_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in stack.requests()
        if r["operation"] == operation and r.get("imageSetId") == image_set_id
    ]


async def refused(
    stub: pb_grpc.MetadataUpdateServiceStub,
    request: pb.UpdateImageSetMetadataRequest,
    principal: str = "demo-editor",
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub.UpdateImageSetMetadata(request, metadata=dev(principal)))
    return caught.value


async def test_a_series_the_image_set_lacks_is_refused_before_any_write(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = stack.take_image_set()
    body = {"DICOM": {"SeriesDescription": "NEVER WRITTEN"}}
    request = series_update(stack, image_set, "1.2.3.999", body, "updatable_attributes")

    error = await refused(stub, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    field = SERIES_FIELD.format(blob="updatable_attributes") + '["1.2.3.999"]'
    assert field_violations(error) == [(field, "no such series in the image set")]
    assert "NEVER WRITTEN" not in str(error.details())
    assert len(calls(stack, "GetImageSetMetadata", image_set)) == 1
    assert stack.update_calls(image_set) == []


async def test_an_instance_its_series_lacks_is_refused_and_a_real_one_goes_through(
    stack: Stack,
    stub: pb_grpc.MetadataUpdateServiceStub,
    healthimaging: Any,
) -> None:
    image_set = stack.take_image_set()
    metadata = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    series_uid, series = next(iter(metadata["Study"]["Series"].items()))
    removal: dict[str, Any] = {"Instances": {"9.8.7.6": {}}}
    request = series_update(stack, image_set, series_uid, removal, "removable_attributes")

    error = await refused(stub, request, "demo-admin")  # removing needs metadata-admin

    field = SERIES_FIELD.format(blob="removable_attributes") + f'["{series_uid}"]'
    assert field_violations(error) == [
        (f'{field}.Instances["9.8.7.6"]', "no such instance in this series")
    ]
    assert stack.update_calls(image_set) == []

    described = {"DICOM": {"SeriesDescription": "A REAL SERIES"}}
    real = series_update(stack, image_set, series_uid, described, "updatable_attributes")
    events = await collect(stub.UpdateImageSetMetadata(real, metadata=dev("demo-editor")))
    assert events[-1].finished.state.image_set_workflow_status == "UPDATED"
    assert len(stack.update_calls(image_set)) == 1
    assert series["Instances"]  # the instance named above is not one of these
    assert "9.8.7.6" not in series["Instances"]
