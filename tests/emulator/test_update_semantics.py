"""UpdateImageSetMetadata as the API reference and the developer guide describe it (boto3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devstack.examples import EXAMPLE_SERIES, EXAMPLE_SERIES_7, EXAMPLE_SOP_7
from tests.emulator.conftest import (
    DEMO_DATASTORE,
    Emulator,
    blob,
    metadata,
    sample,
    settled,
)

DS = DEMO_DATASTORE
CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def update(client: Any, image_set_id: str, version: str = "1", **kwargs: Any) -> dict[str, Any]:
    updatable, removable = kwargs.pop("updatable", None), kwargs.pop("removable", None)
    dicom = {}
    if updatable is not None:
        dicom["updatableAttributes"] = blob({"SchemaVersion": 1.1, **updatable})
    if removable is not None:
        dicom["removableAttributes"] = blob({"SchemaVersion": 1.1, **removable})
    updates = kwargs.pop("updates", {"DICOMUpdates": dicom})
    result: dict[str, Any] = client.update_image_set_metadata(
        datastoreId=DS,
        imageSetId=image_set_id,
        latestVersionId=version,
        updateImageSetMetadataUpdates=updates,
        **kwargs,
    )
    return result


def patient_name(name: str) -> dict[str, Any]:
    return {"Patient": {"DICOM": {"PatientName": name}}}


def instance_update(
    attributes: dict[str, Any], vrs: dict[str, str] | None = None
) -> dict[str, Any]:
    node: dict[str, Any] = {"DICOM": attributes}
    if vrs:
        node["DICOMVRs"] = vrs
    return {"Study": {"Series": {CT_SERIES: {"Instances": {CT_SOP: node}}}}}


def test_update_locks_then_lands_as_a_new_version(client: Any, seeded: list[str]) -> None:
    image_set = seeded[0]
    response = update(client, image_set, updatable=patient_name("MX^MX"))
    assert (
        response["latestVersionId"],
        response["imageSetState"],
        response["imageSetWorkflowStatus"],
    ) == ("2", "LOCKED", "UPDATING")
    with pytest.raises(client.exceptions.ConflictException):
        update(client, image_set, version="2", updatable=patient_name("Y^Y"))
    final = settled(client, DS, image_set)
    assert (final["versionId"], final["imageSetState"], final["imageSetWorkflowStatus"]) == (
        "2",
        "ACTIVE",
        "UPDATED",
    )
    assert metadata(client, DS, image_set)["Patient"]["DICOM"]["PatientName"] == "MX^MX"
    assert (
        metadata(client, DS, image_set, "1")["Patient"]["DICOM"]["PatientName"]
        == "CompressedSamples^CT1"
    )


def test_stale_version_is_a_conflict(client: Any, seeded: list[str]) -> None:
    update(client, seeded[0], updatable=patient_name("A^A"))
    settled(client, DS, seeded[0])
    with pytest.raises(client.exceptions.ConflictException):
        update(client, seeded[0], version="1", updatable=patient_name("B^B"))


def test_revert_makes_a_new_version_equal_to_the_old_one(client: Any, seeded: list[str]) -> None:
    image_set = seeded[0]
    for version, name in (("1", "A^A"), ("2", "B^B")):
        update(client, image_set, version=version, updatable=patient_name(name))
        settled(client, DS, image_set)
    response = update(client, image_set, version="3", updates={"revertToVersionId": "1"})
    assert response["latestVersionId"] == "4"
    settled(client, DS, image_set)
    assert metadata(client, DS, image_set, "4") == metadata(client, DS, image_set, "1")
    versions = client.list_image_set_versions(datastoreId=DS, imageSetId=image_set)[
        "imageSetPropertiesList"
    ]
    assert [v["versionId"] for v in versions] == ["4", "3", "2", "1"]


def test_remove_needs_the_current_value(client: Any, seeded: list[str]) -> None:
    wrong = {"Study": {"DICOM": {"StudyDescription": "not the value"}}}
    update(client, seeded[0], removable=wrong)
    failed = settled(client, DS, seeded[0])
    assert failed["imageSetWorkflowStatus"] == "UPDATE_FAILED"
    assert "StudyDescription" in failed["message"]
    assert metadata(client, DS, seeded[0])["Study"]["DICOM"]["StudyDescription"] == "e+1"
    update(
        client, seeded[0], version="2", removable={"Study": {"DICOM": {"StudyDescription": "e+1"}}}
    )
    assert settled(client, DS, seeded[0])["imageSetWorkflowStatus"] == "UPDATED"
    assert "StudyDescription" not in metadata(client, DS, seeded[0])["Study"]["DICOM"]


def test_updates_cannot_create_series(client: Any, seeded: list[str]) -> None:
    ghost = {"Study": {"Series": {"1.2.3": {"DICOM": {"SeriesDescription": "x"}}}}}
    update(client, seeded[0], updatable=ghost)
    assert settled(client, DS, seeded[0])["imageSetWorkflowStatus"] == "UPDATE_FAILED"


@pytest.mark.parametrize(
    ("updatable", "why"),
    [
        ({"Study": {"DICOM": {"PatientName": "X"}}}, "wrong level"),
        ({"Patient": {"DICOM": {"ImageSetID": "x"}}}, "generated key"),
        ({"Study": {"DICOM": {"StudyInstanceUID": "1.2.3"}}}, "UID needs force"),
        ({"Study": {"DICOM": {"StudyID": "77"}}}, "StudyID needs force"),
        (instance_update({"00091001": "GE"}), "private tag needs force"),
        ({"Study": {"DICOM": {"ReferencedStudySequence": []}}}, "sequence needs force"),
        (instance_update({"ImageType": ["A", "B"]}), "multi-valued needs force"),
        ({"Study": {"DICOM": {"NotAnAttribute": "1"}}}, "non-standard needs force"),
        ({"Study": {"DICOM": {"StudyDate": "yesterday"}}}, "value must fit the VR"),
        ({"Study": {"Bogus": {}}}, "unknown structure key"),
    ],
)
def test_constraints_refused_without_force(
    client: Any, seeded: list[str], updatable: dict[str, Any], why: str
) -> None:
    with pytest.raises(client.exceptions.ValidationException):
        update(client, seeded[0], updatable=updatable)


@pytest.mark.parametrize(
    "updatable",
    [
        {"Study": {"DICOM": {"StudyID": "77"}}},
        instance_update({"00091001": "GE_GENESIS_DD"}),
        instance_update({"001910F9": "97"}, {"001910F9": "DS"}),
        instance_update({"ImageType": ["ORIGINAL", "SECONDARY"]}),
    ],
)
def test_force_unlocks_them_and_is_recorded(
    client: Any, seeded: list[str], updatable: dict[str, Any]
) -> None:
    update(client, seeded[0], updatable=updatable, force=True)
    final = settled(client, DS, seeded[0])
    assert final["imageSetWorkflowStatus"] == "UPDATED"
    assert final["overrides"] == {"forced": True}


def test_generated_keys_are_refused_even_with_force(client: Any, seeded: list[str]) -> None:
    with pytest.raises(client.exceptions.ValidationException):
        update(client, seeded[0], updatable=instance_update({"PixelData": "AAAA"}), force=True)


def test_adding_a_private_tag_needs_its_vr(client: Any, seeded: list[str]) -> None:
    update(client, seeded[0], updatable=instance_update({"001910F9": "97"}), force=True)
    assert settled(client, DS, seeded[0])["imageSetWorkflowStatus"] == "UPDATE_FAILED"


def test_tag_and_keyword_spellings_are_the_same_attribute(client: Any, seeded: list[str]) -> None:
    update(client, seeded[0], updatable={"Patient": {"DICOM": {"00100010": "HEX^NAME"}}})
    settled(client, DS, seeded[0])
    patient = metadata(client, DS, seeded[0])["Patient"]["DICOM"]
    assert patient["PatientName"] == "HEX^NAME" and "00100010" not in patient


def test_revert_and_dicom_updates_together_are_refused(client: Any, seeded: list[str]) -> None:
    with pytest.raises(client.exceptions.ValidationException):
        update(client, seeded[0], updates={"revertToVersionId": "1"}, includeStudyImageSets=True)


def test_blob_size_limits(client: Any, seeded: list[str]) -> None:
    big = patient_name("X" * 30_000)
    with pytest.raises(client.exceptions.ValidationException):
        update(client, seeded[0], updatable=big)
    with pytest.raises(client.exceptions.ValidationException):
        update(client, seeded[0], updates={"DICOMUpdates": {"updatableAttributes": b""}})


def test_primary_image_sets_refuse_patient_series_and_uid_changes(
    client: Any, emulator: Emulator
) -> None:
    image_set = emulator.reset_and_seed([sample("CT_small.dcm")], primary=True)[0]
    for updatable in (patient_name("X^Y"), {"Study": {"DICOM": {"StudyInstanceUID": "1.2.3"}}}):
        with pytest.raises(client.exceptions.ValidationException):
            update(client, image_set, updatable=updatable, force=True)
    update(client, image_set, updatable={"Study": {"DICOM": {"StudyDescription": "OK"}}})
    assert settled(client, DS, image_set)["imageSetWorkflowStatus"] == "UPDATED"


def test_remove_instance_and_series_with_an_empty_object(
    client: Any, emulator: Emulator, example_dicom: Path
) -> None:
    image_set = emulator.reset_and_seed([example_dicom])[0]
    remove_instance: dict[str, Any] = {
        "Study": {"Series": {EXAMPLE_SERIES: {"Instances": {EXAMPLE_SERIES: {}}}}}
    }
    update(client, image_set, removable=remove_instance)
    settled(client, DS, image_set)
    series = metadata(client, DS, image_set)["Study"]["Series"]
    assert list(series[EXAMPLE_SERIES]["Instances"]) == [EXAMPLE_SERIES[:-1] + "2"]
    update(client, image_set, version="2", removable={"Study": {"Series": {EXAMPLE_SERIES_7: {}}}})
    settled(client, DS, image_set)
    assert list(metadata(client, DS, image_set)["Study"]["Series"]) == [EXAMPLE_SERIES]


def test_sop_instance_uid_change_rekeys_the_instance(
    client: Any, emulator: Emulator, example_dicom: Path
) -> None:
    image_set = emulator.reset_and_seed([example_dicom])[0]
    new_uid = EXAMPLE_SOP_7[:-1] + "9"
    change = {
        "Study": {
            "Series": {
                EXAMPLE_SERIES_7: {
                    "Instances": {EXAMPLE_SOP_7: {"DICOM": {"SOPInstanceUID": new_uid}}}
                }
            }
        }
    }
    update(client, image_set, updatable=change, force=True)
    settled(client, DS, image_set)
    assert list(
        metadata(client, DS, image_set)["Study"]["Series"][EXAMPLE_SERIES_7]["Instances"]
    ) == [new_uid]


def test_include_study_image_sets_updates_every_primary_set_of_the_study(
    client: Any, emulator: Emulator
) -> None:
    ct = sample("CT_small.dcm")
    target = emulator.reset_and_seed([ct], primary=False)[0]
    sibling = emulator.admin(
        "POST", "seed", {"paths": [str(ct)], "datastoreId": DS, "isPrimary": True}
    )["imageSetIds"][0]
    study = {"Study": {"DICOM": {"StudyDescription": "CONSISTENT"}}}
    update(client, target, updatable=study, includeStudyImageSets=True)
    during = client.get_image_set(datastoreId=DS, imageSetId=sibling)
    assert (during["versionId"], during["imageSetState"], during["imageSetWorkflowStatus"]) == (
        "2",
        "LOCKED",
        "UPDATING_FOR_STUDY_CONSISTENCY",
    )
    settled(client, DS, target)
    assert settled(client, DS, sibling)["imageSetWorkflowStatus"] == "UPDATED"
    assert metadata(client, DS, sibling)["Study"]["DICOM"]["StudyDescription"] == "CONSISTENT"


def test_copy_then_promote_to_primary(client: Any, emulator: Emulator) -> None:
    primary = emulator.reset_and_seed([sample("CT_small.dcm")], primary=True)[0]
    info = {"sourceImageSet": {"latestVersionId": "1"}}
    copy = client.copy_image_set(
        datastoreId=DS, sourceImageSetId=primary, copyImageSetInformation=info
    )
    assert (
        copy["sourceImageSetProperties"]["imageSetWorkflowStatus"]
        == "COPYING_WITH_READ_ONLY_ACCESS"
    )
    with pytest.raises(client.exceptions.ConflictException):
        update(client, primary, updatable={"Study": {"DICOM": {"StudyDescription": "X"}}})
    copy_id = copy["destinationImageSetProperties"]["imageSetId"]
    assert settled(client, DS, copy_id)["isPrimary"] is False
    update(client, copy_id, updatable=patient_name("FIXED^NAME"))
    settled(client, DS, copy_id)
    with pytest.raises(client.exceptions.ConflictException):
        client.copy_image_set(
            datastoreId=DS,
            sourceImageSetId=copy_id,
            copyImageSetInformation={"sourceImageSet": {"latestVersionId": "2"}},
            promoteToPrimary=True,
        )
    client.delete_image_set(datastoreId=DS, imageSetId=settled(client, DS, primary)["imageSetId"])
    assert settled(client, DS, primary)["imageSetState"] == "DELETED"
    promoted = client.copy_image_set(
        datastoreId=DS,
        sourceImageSetId=copy_id,
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": "2"}},
        promoteToPrimary=True,
    )["destinationImageSetProperties"]["imageSetId"]
    final = settled(client, DS, promoted)
    assert (final["isPrimary"], final["imageSetWorkflowStatus"]) == (True, "COPIED")
    assert metadata(client, DS, promoted)["Patient"]["DICOM"]["PatientName"] == "FIXED^NAME"


def test_deleted_image_set_keeps_its_history_but_not_its_metadata(
    client: Any, seeded: list[str]
) -> None:
    client.delete_image_set(datastoreId=DS, imageSetId=seeded[0])
    with pytest.raises(client.exceptions.ConflictException):
        update(client, seeded[0], updatable=patient_name("X^Y"))
    assert settled(client, DS, seeded[0])["imageSetWorkflowStatus"] == "DELETED"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        metadata(client, DS, seeded[0])
    search = client.search_image_sets(datastoreId=DS)["imageSetsMetadataSummaries"]
    assert [s["imageSetId"] for s in search] == [seeded[1]]
