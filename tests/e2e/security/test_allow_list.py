"""Issue 10 end to end: the allow-list default policy, judged from the standard's facts.

The demo stack (real OPA with policies/, the emulator, the proxy with dev identity). demo-editor
holds metadata-editor only: it may change the editable descriptive attributes and attributes the
PS3.15 Confidentiality Profile does not list, never a UID or a profile-listed demographic,
wherever written; the emulator's request log shows that no refused update reached it. OPA's
decision log (policies/system/log/mask.rego) holds a summary, not a long change list.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.conftest import Stack, dev, image_set_metadata
from tests.e2e.secure_stack import eventually
from tests.e2e.security.calls import (
    Document,
    assert_denied,
    assert_updated,
    events_of,
    instance,
    patient,
    refusal,
    series,
    study,
    update,
)

pytestmark = pytest.mark.e2e

UID_REASON = "UID changes require role metadata-admin"
IDENTITY_REASON = "patient identity changes require role patient-identity-editor"
UID = "1.2.840.10008.99.1"


@dataclass(frozen=True)
class Place:
    """Where an attribute is written in one seeded image set."""

    series_uid: str
    sop_uid: str


Build = Callable[[Place], dict[str, Any]]


def at_patient(attributes: Document) -> Build:
    return lambda place: patient(attributes)


def at_study(attributes: Document) -> Build:
    return lambda place: study(attributes)


def at_series(attributes: Document) -> Build:
    return lambda place: series(place.series_uid, {"DICOM": dict(attributes)})


def at_instance(attributes: Document) -> Build:
    return lambda place: instance(place.series_uid, place.sop_uid, {"DICOM": dict(attributes)})


@dataclass(frozen=True)
class Refused:
    name: str
    build: Build
    reason: str
    force: bool = False  # HealthImaging needs it here (force alone needs metadata-admin too)


UID_VALUED = (
    Refused("ui_in_a_patient_sequence", at_patient(
        {"ReferencedPatientSequence": [{"ReferencedSOPInstanceUID": UID}]}), UID_REASON, True),
    Refused("study_instance_uid", at_study({"StudyInstanceUID": UID}), UID_REASON, True),
    Refused("frame_of_reference_uid", at_series({"FrameOfReferenceUID": UID}), UID_REASON),
    Refused("sop_class_uid", at_instance({"SOPClassUID": UID}), UID_REASON),
    Refused("sop_class_uid_by_tag", at_instance({"00080016": UID}), UID_REASON),
    Refused("transfer_syntax_uid", at_instance({"00020010": UID}), UID_REASON),
    Refused("media_storage_sop_class_uid",
            at_instance({"MediaStorageSOPClassUID": UID}), UID_REASON),
    Refused("media_storage_sop_instance_uid",
            at_instance({"00020003".lower(): UID}), UID_REASON),
)  # fmt: skip

DEMOGRAPHICS = (
    Refused("ethnic_group", at_patient({"EthnicGroup": "GROUP"}), IDENTITY_REASON),
    Refused("occupation", at_study({"Occupation": "RANK"}), IDENTITY_REASON),
    Refused("patient_age", at_study({"00101010": "042Y"}), IDENTITY_REASON),
    Refused("additional_history", at_study({"AdditionalPatientHistory": "X"}), IDENTITY_REASON),
    Refused("institution_name", at_series({"InstitutionName": "HOSPITAL"}), IDENTITY_REASON),
    Refused("series_date", at_series({"00080021": "20240101"}), IDENTITY_REASON),
    Refused("religious_preference", at_instance({"PatientReligiousPreference": "X"}),
            IDENTITY_REASON),
    Refused("military_rank", at_instance({"MilitaryRank": "X"}), IDENTITY_REASON),
    Refused("military_rank_lower_hex", at_instance({"00101080".lower(): "X"}), IDENTITY_REASON),
    Refused("country_of_residence", at_instance({"CountryOfResidence": "X"}), IDENTITY_REASON),
    Refused("person_address", at_instance({"PersonAddress": "1 Test Street"}), IDENTITY_REASON),
    Refused("requesting_physician", at_instance({"RequestingPhysician": "DOE^JANE"}),
            IDENTITY_REASON),
)  # fmt: skip


async def place_of(stack: Stack, healthimaging: Any, image_set_id: str) -> Place:
    document = await image_set_metadata(healthimaging, stack.datastore_id, image_set_id)
    series_uid, body = next(iter(document["Study"]["Series"].items()))
    return Place(series_uid, next(iter(body["Instances"])))


def request_for(
    stack: Stack, image_set_id: str, document: dict[str, Any], force: bool = False
) -> pb.UpdateImageSetMetadataRequest:
    return update(image_set_id, document, force=force, datastore_id=stack.datastore_id)


@pytest.fixture(scope="module")
async def refused_image_set(stack: Stack, healthimaging: Any) -> tuple[str, Place]:
    """One image set for every refusal: none may change it, so the tests can share it."""
    image_set = stack.take_image_set()
    return image_set, await place_of(stack, healthimaging, image_set)


@pytest.mark.parametrize("case", UID_VALUED + DEMOGRAPHICS, ids=lambda case: case.name)
async def test_editor_is_refused_and_nothing_reaches_the_backend(
    stack: Stack,
    stub: pb_grpc.MetadataUpdateServiceStub,
    refused_image_set: tuple[str, Place],
    case: Refused,
) -> None:
    image_set, place = refused_image_set
    request = request_for(stack, image_set, case.build(place), case.force)

    refused = await refusal(stub.UpdateImageSetMetadata(request, metadata=dev("demo-editor")))

    assert_denied(refused, {case.reason})
    assert stack.update_calls(image_set) == []


async def test_patient_identity_editor_is_refused_uids(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub, refused_image_set: tuple[str, Place]
) -> None:
    image_set, place = refused_image_set
    request = request_for(stack, image_set, at_instance({"SOPClassUID": UID})(place))

    refused = await refusal(stub.UpdateImageSetMetadata(request, metadata=dev("demo-patient")))

    assert_denied(refused, {UID_REASON})
    assert refused.reasons == {UID_REASON}
    assert stack.update_calls(image_set) == []


@pytest.mark.parametrize(
    ("principal", "build"),
    [
        ("demo-editor", at_study({"StudyDescription": "EDITED BY THE EDITOR"})),
        ("demo-editor", at_series({"SeriesDescription": "EDITED BY THE EDITOR"})),
        ("demo-editor", at_series({"BodyPartExamined": "CHEST"})),  # not listed by the profile
        ("demo-patient", at_patient({"PatientName": "ALLOWED^PATIENT"})),
    ],
    ids=["study_description", "series_description", "unlisted_attribute", "patient_name"],
)
async def test_existing_grants_keep_working(
    stack: Stack,
    stub: pb_grpc.MetadataUpdateServiceStub,
    healthimaging: Any,
    principal: str,
    build: Build,
) -> None:
    image_set = stack.take_image_set()
    place = await place_of(stack, healthimaging, image_set)
    request = request_for(stack, image_set, build(place))

    assert_updated(await events_of(stub.UpdateImageSetMetadata(request, metadata=dev(principal))))
    assert len(stack.update_calls(image_set)) == 1


async def test_opa_logs_a_summary_instead_of_a_long_change_list(
    stack: Stack, stub: pb_grpc.MetadataUpdateServiceStub, refused_image_set: tuple[str, Place]
) -> None:
    image_set, place = refused_image_set
    tags = [f"0019{0x1100 + n:04X}" for n in range(20)]  # 20 distinct entries, over the mask's 16
    body = {"DICOM": dict.fromkeys(tags, "TEXT"), "DICOMVRs": dict.fromkeys(tags, "LO")}
    document = instance(place.series_uid, place.sop_uid, body)
    request = request_for(stack, image_set, document, force=True)

    refused = await refusal(stub.UpdateImageSetMetadata(request, metadata=dev("demo-editor")))

    assert_denied(refused)
    event = await eventually(lambda: opa_event(stack, refused.decision_id))
    assert event["input"]["changes"] == {"masked": True, "entries": 20, "changes": 20}
    assert "claims" not in event["input"]["caller"]
    assert set(event["erased"]) == {"/input/caller/claims"}
    assert set(event["masked"]) == {"/input/changes"}


async def opa_event(stack: Stack, decision_id: str) -> dict[str, Any]:
    """OPA's console decision-log event for one decision (demo stack: logs/opa.log)."""
    lines = (stack.log_dir / "opa.log").read_text(errors="replace").splitlines()
    events = [json.loads(line) for line in lines if decision_id in line]
    assert [event.get("msg") for event in events] == ["Decision Log"]
    return dict(events[0])
