"""Pure parts: the import document pydicom builds, the update rules, and the async state table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulator.dicom_import import build_document, group_by_study, read_instances
from emulator.exceptions import ValidationException
from emulator.imports import local_folder
from emulator.state import Job, JobTable, Progression, Trigger
from emulator.updates import Action, UpdateFailed, apply_changes, decode_blob, plan_update
from tests.emulator.conftest import sample

CT_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
CT_SOP = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


@pytest.fixture(scope="module")
def ct_document() -> dict[str, Any]:
    return build_document(read_instances([sample("CT_small.dcm")]))


def test_one_image_set_per_study() -> None:
    studies = group_by_study(read_instances([sample("CT_small.dcm"), sample("MR_small.dcm")]))
    assert len(studies) == 2


def test_document_levels_and_values(ct_document: dict[str, Any]) -> None:
    assert ct_document["SchemaVersion"] == "1.1"
    assert ct_document["Patient"]["DICOM"]["PatientName"] == "CompressedSamples^CT1"
    assert ct_document["Patient"]["DICOM"]["PatientBirthDate"] is None  # empty values are null
    study = ct_document["Study"]["DICOM"]
    assert study["StudyID"] == "1CT1" and "PatientName" not in study
    series = ct_document["Study"]["Series"][CT_SERIES]
    assert series["DICOM"]["Modality"] == "CT"
    assert series["DICOM"]["SoftwareVersions"] == ["05"]  # VM 1-n is a list even with one value
    instance = series["Instances"][CT_SOP]
    assert instance["DICOM"]["Rows"] == 128  # US is a JSON number
    assert instance["DICOM"]["SliceThickness"] == "5.000000"  # DS keeps its text
    assert instance["DICOM"]["PixelData"] is None
    assert instance["DICOM"]["00091001"] == "GE_GENESIS_FF"  # private tags by 8-hex key
    assert instance["DICOMVRs"]["00091001"] == "LO"
    assert instance["ImageFrames"][0]["FrameSizeInBytes"] == 128 * 128 * 2
    json.dumps(ct_document)


def test_updates_apply_and_refuse(ct_document: dict[str, Any]) -> None:
    changes = plan_update(
        {"Study": {"DICOM": {"StudyDescription": "NEW"}}}, None, force=False, is_primary=True
    )
    assert [(c.action, c.key) for c in changes] == [(Action.UPDATE, "StudyDescription")]
    updated = apply_changes(ct_document, changes)
    assert updated["Study"]["DICOM"]["StudyDescription"] == "NEW"
    assert ct_document["Study"]["DICOM"]["StudyDescription"] == "e+1", "the input is never mutated"
    removal = plan_update(
        None, {"Study": {"DICOM": {"StudyDescription": "other"}}}, force=False, is_primary=False
    )
    with pytest.raises(UpdateFailed):
        apply_changes(ct_document, removal)
    last_instance = plan_update(
        None, {"Study": {"Series": {CT_SERIES: {}}}}, force=False, is_primary=False
    )
    with pytest.raises(UpdateFailed):
        apply_changes(ct_document, last_instance)


def test_blob_decoding() -> None:
    assert decode_blob(b'{"SchemaVersion": 1.1}', "u") == {"SchemaVersion": 1.1}
    assert decode_blob(b"eyJTY2hlbWFWZXJzaW9uIjogMS4xfQ==", "u") == {"SchemaVersion": 1.1}
    for bad in (b"[1]", b"not json", b'{"a": 1, "a": 2}'):
        with pytest.raises(ValidationException):
            decode_blob(bad, "u")
    with pytest.raises(ValidationException):
        decode_blob(b"eyJTY2hlbWFWZXJzaW9uIjogMS4xfQ==", "u", lenient_base64=False)


@pytest.mark.parametrize(
    ("progression", "elapsed", "polls", "due"),
    [
        (Progression(Trigger.IMMEDIATE, 0), 0, 0, True),
        (Progression(Trigger.POLLS, 2), 100, 1, False),
        (Progression(Trigger.POLLS, 2), 0, 2, True),
        (Progression(Trigger.SECONDS, 0.5), 0.4, 99, False),
        (Progression(Trigger.SECONDS, 0.5), 0.5, 0, True),
        (Progression(Trigger.NEVER, 0), 1e9, 1e9, False),
    ],
)
def test_progressions(progression: Progression, elapsed: float, polls: int, due: bool) -> None:
    assert progression.due(elapsed, int(polls)) is due


def test_job_table_finishes_after_observations() -> None:
    finished: list[float] = []
    table = JobTable()
    table.add(Job(("a",), Progression(Trigger.POLLS, 2), 10.0, finished.append))
    table.observe("a")
    table.advance(11.0)
    assert finished == []
    table.observe("b")
    table.observe("a")
    table.advance(12.0)
    assert finished == [12.0] and not table.pending("a")


def test_import_folder_mapping(tmp_path: Any) -> None:
    folders = {"s3://bucket/": tmp_path, "s3://bucket/deep/": tmp_path / "d"}
    assert local_folder(folders, "s3://bucket/deep/x/") == tmp_path / "d" / "x"
    assert local_folder(folders, "s3://bucket/") == tmp_path
    assert local_folder(folders, "s3://other/") is None
