"""Issue 10, item 5: updates HealthImaging would refuse are refused here, before any quota is spent.

Each document below is one HealthImaging refuses (reference/healthimaging-update-semantics.md
§1.3 to 2.2); sent by an admin (so policy would allow it), it must come back INVALID_ARGUMENT naming
the field, and the emulator's request log must show no UpdateImageSetMetadata for the image set.
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

from tests.e2e.conftest import Stack, collect, dev, image_set_metadata

pytestmark = pytest.mark.e2e

ADMIN = dev("demo-admin")
UPD = "updates.dicom_updates.updatable_attributes"
FORCE = "requires force (set force=true; needs role metadata-admin)"
SECRET = "DOE^DOOMED"  # a value no error may show


def request(
    stack: Stack, image_set: str, updatable: bytes | dict[str, Any], *, force: bool = False,
    removable: bytes | None = None,
) -> pb.UpdateImageSetMetadataRequest:  # fmt: skip
    blob = updatable if isinstance(updatable, bytes) else json.dumps(updatable).encode()
    dicom = pb.DICOMUpdates(updatable_attributes=blob)
    if removable is not None:
        dicom.removable_attributes = removable
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=stack.datastore_id,
        image_set_id=image_set,
        latest_version_id="1",
        force=force,
        dicom_updates=dicom,
    )


async def refused(
    stub: pb_grpc.MetadataUpdateServiceStub, req: pb.UpdateImageSetMetadataRequest
) -> list[tuple[str, str]]:
    """The call's INVALID_ARGUMENT field violations (fails on any other outcome)."""
    call = stub.UpdateImageSetMetadata(req, metadata=ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(call)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    return [(v.field, v.description) for v in bad_request.field_violations]


async def first_instance(stack: Stack, healthimaging: Any, image_set: str) -> tuple[str, str]:
    document = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    series_uid, series = next(iter(document["Study"]["Series"].items()))
    return series_uid, next(iter(series["Instances"]))


def at_instance(series_uid: str, sop_uid: str, attributes: dict[str, Any]) -> dict[str, Any]:
    instances = {sop_uid: {"DICOM": attributes}}
    return {"SchemaVersion": 1.1, "Study": {"Series": {series_uid: {"Instances": instances}}}}


def with_vrs(series_uid: str, sop_uid: str, attributes: dict[str, Any], vrs: dict[str, str]) -> Any:
    document = at_instance(series_uid, sop_uid, attributes)
    document["Study"]["Series"][series_uid]["Instances"][sop_uid]["DICOMVRs"] = vrs
    return document


def study(attributes: dict[str, Any], version: object = 1.1) -> dict[str, Any]:
    return {"SchemaVersion": version, "Study": {"DICOM": attributes}}


def padded(size: int) -> bytes:
    document = json.dumps(study({"StudyDescription": "PADDED"})).encode()
    return document[:-1] + b" " * (size - len(document)) + b"}"


# (name, document or a function of (series UID, SOP UID), field suffix, description part)
DOOMED: list[tuple[str, Any, str, str]] = [
    ("sequence_without_force", study({"ReferencedStudySequence": [{"ReferencedSOPClassUID": ""}]}),
     ".Study.DICOM.ReferencedStudySequence",
     f"ReferencedStudySequence is a sequence (SQ); changing it {FORCE}"),
    ("private_tag_outside_an_instance", study({"00091001": SECRET}), '.Study.DICOM["00091001"]',
     "a private attribute is only supported on an instance, even with force"),
    ("single_value_for_a_multi_valued_attribute",
     lambda s, i: at_instance(s, i, {"PixelSpacing": "0.5"}), ".DICOM.PixelSpacing",
     f"PixelSpacing takes VM 2 values, not a single one; {FORCE}"),
    ("study_date_not_a_DA", study({"StudyDate": "2024-01-02"}), ".Study.DICOM.StudyDate",
     f"the value of StudyDate does not fit its VR DA (expects a string in DA form); {FORCE}"),
    ("unlisted_attribute_at_study_level", study({"ImageComments": SECRET}),
     ".Study.DICOM.ImageComments", "ImageComments is not a study-level attribute"),
    ("schema_version_2_0", study({"StudyDescription": "OK"}, version="2.0"), ".SchemaVersion",
     'must be 1.1 (the number or the string "1.1")'),
    ("over_the_payload_quota", padded(10_241), "",
     "over the limit of 10240 (limits.max_payload_bytes; HealthImaging's payload quota"),
    ("infinity_by_overflow", b'{"Study": {"DICOM": {"PatientWeight": 1e999}}}', "",
     "numbers must be finite"),
    ("nan", b'{"Study": {"DICOM": {"PatientWeight": NaN}}}', "", "not JSON numbers"),
    ("huge_integer", b'{"Study": {"DICOM": {"PatientWeight": 99999999999999999999999}}}', "",
     "integers must fit in 64 bits"),
    ("lone_surrogate_in_a_value", b'{"Study": {"DICOM": {"StudyDescription": "A\\ud800"}}}',
     ".Study.DICOM.StudyDescription", "strings must not contain lone surrogates"),
    # issue 18: demo-editor's ImageComments with DICOMVRs, refused by HealthImaging after it
    # had spent the write quota
    ("dicomvrs_for_a_standard_attribute",
     lambda s, i: with_vrs(s, i, {"ImageComments": SECRET}, {"ImageComments": "LT"}),
     ".DICOMVRs.ImageComments", "DICOMVRs is only accepted for private attributes"),
    ("dicomvrs_without_its_value", lambda s, i: with_vrs(s, i, {}, {"00191001": "LO"}),
     '.DICOMVRs["00191001"]', "a VR needs its attribute, spelled the same way"),
    ("lone_surrogate_in_a_key", b'{"Study": {"DICOM": {"\\udfff": "A"}}}', ".Study.DICOM",
     "keys must not contain lone surrogates"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("document", "field", "description"),
    [pytest.param(doc, field, text, id=name) for name, doc, field, text in DOOMED],
)
async def test_doomed_updates_never_reach_the_backend(
    stack: Stack,
    stub: pb_grpc.MetadataUpdateServiceStub,
    healthimaging: Any,
    document: Any,
    field: str,
    description: str,
) -> None:
    image_set = stack.take_image_set()
    if callable(document):
        document = document(*await first_instance(stack, healthimaging, image_set))

    violations = await refused(stub, request(stack, image_set, document))

    field_path = "updates.dicom_updates" if "payload" in description else UPD
    matching = [(f, d) for f, d in violations if description in d and f.startswith(field_path)]
    assert matching, violations
    assert any(f.endswith(field) for f, _ in matching), violations
    assert all(SECRET not in f + d for f, d in violations)
    assert stack.update_calls(image_set) == []


async def test_force_makes_a_nonconforming_value_legal(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub, healthimaging: Any
) -> None:
    # The other side of "requires force": the same document with force is sent and lands.
    image_set = stack.take_image_set()
    req = request(stack, image_set, study({"StudyDate": "2024-01-02"}), force=True)

    events = await collect(stub.UpdateImageSetMetadata(req, metadata=ADMIN))

    assert events[-1].finished.state.image_set_workflow_status == "UPDATED"
    document = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert document["Study"]["DICOM"]["StudyDate"] == "2024-01-02"


async def test_sixty_long_violations_arrive_bounded(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub
) -> None:
    image_set = stack.take_image_set()
    series = {f"1.{i:02d}" + "2" * 58 + ".3": {"DICOM": {"Nonsense": 1}} for i in range(60)}
    document = {"SchemaVersion": 1.1, "Study": {"Series": series}}
    req = request(stack, image_set, document)
    assert len(next(iter(series))) == 64

    call = stub.UpdateImageSetMetadata(req, metadata=ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(call)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED
    trailers = await call.trailing_metadata()
    assert sum(len(key) + len(value) for key, value in trailers) < 6_000
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    shown = list(bad_request.field_violations)
    assert 1 < len(shown) <= 21
    assert all("unknown DICOM keyword" in v.description for v in shown[:-1])
    assert shown[-1].description == f"and {60 - (len(shown) - 1)} more not shown"
    assert stack.update_calls(image_set) == []
