"""The update normaliser: classification, spelling independence and every rejection rule."""

from __future__ import annotations

import dataclasses
import json

import pytest

from service.core.config import LimitSettings
from service.core.errors import InvalidArgument
from service.core.model import AttributeChange, UpdatePlan, UpdateRequest
from service.normaliser.updates import (
    DEFAULT_LIMITS,
    MAX_BLOB_BYTES,
    MAX_VALUE_DEPTH,
    MAX_VIOLATIONS,
    normalise,
)

DATASTORE = "0123456789abcdef0123456789abcdef"
IMAGE_SET = "fedcba9876543210fedcba9876543210"
SERIES, SOP = "1.2.840.1", "1.2.840.1.7"
UPD = "updates.dicom_updates.updatable_attributes"
REM = "updates.dicom_updates.removable_attributes"
SECRET = "DOE^SECRET"  # a value that must never appear in an error


def request(
    updatable: object = None, removable: object = None, *, force: bool = False, **overrides: object
) -> UpdateRequest:
    """A valid dicom_updates request; documents are JSON-encoded unless already bytes."""
    fields: dict[str, object] = {
        "datastore_id": DATASTORE,
        "image_set_id": IMAGE_SET,
        "latest_version_id": "1",
        "force": force,
        "include_study_image_sets": False,
        "updatable_attributes": _blob(updatable),
        "removable_attributes": _blob(removable),
        "revert_to_version_id": None,
        "kind": "dicom_updates",
    }
    fields.update(overrides)
    return UpdateRequest(**fields)  # type: ignore[arg-type]


def _blob(document: object) -> bytes | None:
    if document is None or isinstance(document, bytes):
        return document
    return json.dumps(document).encode()


def patient(attrs: dict[str, object]) -> dict[str, object]:
    return {"SchemaVersion": 1.1, "Patient": {"DICOM": attrs}}


def study(attrs: dict[str, object]) -> dict[str, object]:
    return {"SchemaVersion": 1.1, "Study": {"DICOM": attrs}}


def series(attrs: dict[str, object], uid: str = SERIES) -> dict[str, object]:
    return {"SchemaVersion": 1.1, "Study": {"Series": {uid: {"DICOM": attrs}}}}


def instance(attrs: dict[str, object] | None = None, vrs: object = None) -> dict[str, object]:
    body: dict[str, object] = {} if attrs is None else {"DICOM": attrs}
    if vrs is not None:
        body["DICOMVRs"] = vrs
    return {"Study": {"Series": {SERIES: {"Instances": {SOP: body}}}}}


def violations(req: UpdateRequest) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        normalise(req)
    return [(v.field, v.description) for v in caught.value.violations]


def only_change(req: UpdateRequest) -> AttributeChange:
    (change,) = normalise(req).changes
    return change


# --- classification ------------------------------------------------------------------------------


def test_a_patient_name_update() -> None:
    change = only_change(request(patient({"PatientName": SECRET})))
    assert (change.action, change.level, change.series_uid, change.instance_uid) == (
        "update", "patient", "", "",
    )  # fmt: skip
    assert (change.tag, change.keyword, change.vr, change.vm) == (
        "00100010",
        "PatientName",
        "PN",
        "1",
    )
    assert (change.private, change.requires_force, change.retired, change.within) == (
        False, False, False, "",
    )  # fmt: skip
    assert change.value == SECRET


def test_a_private_instance_tag_with_its_vr() -> None:
    change = only_change(request(instance({"001910f9": "97"}, {"001910f9": "DS"}), force=True))
    assert change == AttributeChange(
        "update", "instance", SERIES, SOP, "001910F9", "", "DS", True, True, ("private",)
    )
    assert change.value == "97"


@pytest.mark.parametrize(
    ("document", "force", "requires_force", "categories"),
    [
        (study({"StudyDescription": "CT"}), False, False, ()),
        (study({"StudyInstanceUID": "1.2.3"}), True, True, ("uid",)),
        (study({"StudyID": "7"}), True, True, ("uid",)),
        (series({"SeriesInstanceUID": "1.2.3"}), True, True, ("uid",)),
        (instance({"SOPInstanceUID": "1.2.3"}), True, True, ("uid",)),
        (instance({"ImageType": ["ORIGINAL", "PRIMARY"]}), True, True, ("multi_valued",)),
        (instance({"ImageType": ["ORIGINAL"]}), True, True, ("multi_valued",)),
        (instance({"ImageType": []}), True, True, ("multi_valued",)),
        (instance({"ImageComments": ["A", "B"]}), True, True, ("multi_valued",)),
        (instance({"ImageComments": None}), False, False, ()),
        (instance({"ReferencedImageSequence": []}), True, True, ("sequence",)),
        (instance({"00100011": "x"}), True, True, ("non_standard",)),
        (instance({"Rows": "12"}), True, True, ("nonconforming_value",)),
        (study({"StudyDate": "yesterday"}), True, True, ("nonconforming_value",)),
        (instance({"00191001": [{"00191002": "x"}]}), True, True, ("private",)),
    ],
)  # fmt: skip
def test_force_and_categories(
    document: dict[str, object], force: bool, requires_force: bool, categories: tuple[str, ...]
) -> None:
    change = normalise(request(document, force=force)).changes[0]
    assert (change.requires_force, change.categories) == (requires_force, categories)


def test_nested_attributes_are_changes_of_their_own() -> None:
    items = [{"PatientID": SECRET, "00091001": "x"}, {"PatientID": "2", "IssuerOfPatientID": "y"}]
    plan = normalise(request(patient({"OtherPatientIDsSequence": items}), force=True))
    sequence, *nested = plan.changes
    assert (sequence.keyword, sequence.within, sequence.value) == (
        "OtherPatientIDsSequence",
        "",
        items,
    )
    assert [(c.keyword, c.tag, c.private) for c in nested] == [
        ("PatientID", "00100020", False),
        ("", "00091001", True),
        ("IssuerOfPatientID", "00100021", False),
    ]  # once per attribute, in document order
    for change in nested:
        assert (change.action, change.level, change.within) == ("update", "patient", sequence.tag)
        assert change.requires_force and change.value is None


def test_nested_attributes_take_the_place_and_action_of_their_sequence() -> None:
    inner = [{"ReferencedSOPInstanceUID": "1.2", "ReferencedImageSequence": [{"00291001": "x"}]}]
    doc = instance({"SourceImageSequence": inner})
    plan = normalise(request(removable=doc, force=True))
    assert [(c.tag, c.within) for c in plan.changes] == [
        ("00082112", ""),
        ("00081155", "00082112"),
        ("00291001", "00082112"),  # nested twice: still names the top-level sequence
        ("00081140", "00082112"),
    ]
    assert {(c.action, c.level, c.series_uid, c.instance_uid) for c in plan.changes} == {
        ("remove", "instance", SERIES, SOP)
    }


def test_private_sequence_vr_from_dicomvrs() -> None:
    change, nested = normalise(
        request(instance({"00191001": [{"00191002": "x"}]}, {"00191001": "SQ"}), force=True)
    ).changes
    assert (change.vr, change.categories) == ("SQ", ("private", "sequence"))
    assert (nested.tag, nested.within, nested.categories) == ("00191002", "00191001", ("private",))


def test_an_ambiguous_dictionary_vr_stays_as_the_dictionary_gives_it() -> None:
    # HealthImaging takes DICOMVRs for private and non-standard attributes only (issue 18).
    doc = instance({"SmallestImagePixelValue": 0}, {"SmallestImagePixelValue": "SS"})
    assert "DICOMVRs is only accepted for private" in violations(request(doc, force=True))[0][1]
    assert only_change(request(instance({"SmallestImagePixelValue": 0}))).vr == "US or SS"


def test_a_non_standard_attribute_takes_its_vr_from_dicomvrs() -> None:
    change = only_change(request(instance({"00091000": "x"}, {"00091000": "LO"}), force=True))
    assert (change.vr, change.private) == ("LO", True)
    change = only_change(request(instance({"00100011": "x"}, {"00100011": "LO"}), force=True))
    assert (change.vr, change.categories) == ("LO", ("non_standard",))


@pytest.mark.parametrize("key", ["ImageComments", "00204000", "00091001", "00100011"])
def test_unlisted_attributes_go_to_an_instance_only(key: str) -> None:
    # HealthImaging keeps only its listed attributes at patient/study/series level.
    for document, where in (
        (patient({key: "x"}), "Patient.DICOM"),
        (study({key: "x"}), "Study.DICOM"),
        (series({key: "x"}), f'Study.Series["{SERIES}"].DICOM'),
    ):
        (problem,) = violations(request(document, force=True))
        assert problem[0].startswith(f"{UPD}.{where}")
        assert "instance" in problem[1]
    assert only_change(request(instance({key: "x"}), force=True)).level == "instance"


def test_remove_series_and_instance() -> None:
    removable: dict[str, object] = {
        "Study": {"Series": {"1.2.9": {}, SERIES: {"Instances": {SOP: {}}}}}
    }
    plan = normalise(request(removable=removable))
    assert plan.changes == (
        AttributeChange("remove_series", "series", "1.2.9", "", "", "", "", False, False, ()),
        AttributeChange("remove_instance", "instance", SERIES, SOP, "", "", "", False, False, ()),
    )
    assert plan.summary()["removed_series"] == 1
    assert plan.summary()["removed_instances"] == 1


def test_empty_series_under_updatable_changes_nothing() -> None:
    plan = normalise(
        request({"Study": {"Series": {SERIES: {}, "1.2": {"Instances": {"1.3": {}}}}}})
    )
    assert plan.changes == ()


def test_update_and_remove_in_one_request() -> None:
    plan = normalise(
        request(study({"StudyDescription": "new"}), study({"StudyDescription": "old"}))
    )
    assert [c.action for c in plan.changes] == ["update", "remove"]
    assert {dataclasses.replace(c, action="update") for c in plan.changes} == {plan.changes[0]}


def test_revert() -> None:
    plan = normalise(request(kind="revert", revert_to_version_id="3", latest_version_id="5"))
    assert (plan.kind, plan.revert_to_version_id, plan.changes) == ("revert", "3", ())
    assert plan.updatable_attributes is None and plan.removable_attributes is None


def test_the_classified_bytes_are_forwarded_untouched() -> None:
    updatable = b'{ "Patient" : {"DICOM": {"PatientName": "A^B"}} }'
    removable = b'{"Study":{"Series":{"1.2":{}}}}'
    plan = normalise(request(updatable, removable, idempotency_key="k1"))
    assert plan.updatable_attributes is updatable
    assert plan.removable_attributes is removable
    assert plan.idempotency_key == "k1"


def test_summary_and_touched_tags() -> None:
    doc = {
        "Patient": {"DICOM": {"PatientName": "x"}},
        "Study": {"Series": {SERIES: {"Instances": {SOP: {"DICOM": {"00191001": "y"}}}}}},
    }
    doc["Patient"] = {"DICOM": {"EthnicGroup": "x"}}
    plan = normalise(request(doc, {"Study": {"Series": {"1.2": {}}}}, force=True))
    assert plan.summary() == {
        "change_count": 3,
        "categories": ["private"],
        "actions": ["remove_series", "update"],
        "levels": ["instance", "patient", "series"],
        "private": True,
        "requires_force": True,
        "removed_series": 1,
        "removed_instances": 0,
    }
    assert plan.touched_tags() == ("instance:00191001", "patient:00102160", "series:remove_series")
    assert SECRET not in json.dumps(plan.summary())


def test_changes_keep_document_order() -> None:
    plan = normalise(
        request(study({"StudyDescription": "a", "AccessionNumber": "b", "StudyDate": "20240102"}))
    )
    assert [c.keyword for c in plan.changes] == ["StudyDescription", "AccessionNumber", "StudyDate"]


# --- the same attribute, however it is written ---------------------------------------------------


def _spelled(change: AttributeChange) -> AttributeChange:
    """Everything but where and how (action) it was written."""
    return dataclasses.replace(
        change, action="update", level="instance", series_uid="", instance_uid=""
    )


@pytest.mark.parametrize(
    ("builder", "spellings"),
    [
        (patient, ["PatientName", "00100010"]),
        (study, ["StudyInstanceUID", "0020000D", "0020000d"]),
        (study, ["AccessionNumber", "00080050"]),
        (series, ["SeriesDescription", "0008103E", "0008103e"]),
        (instance, ["SOPInstanceUID", "00080018"]),
        (instance, ["001910F9", "001910f9", "001910F9".lower().upper()]),
        (instance, ["0029A0b0", "0029a0B0", "0029A0B0"]),
        (instance, ["00091001", "00091001".lower()]),
        (instance, ["00100011", "00100011"]),
    ],
)
def test_spellings_classify_identically(builder: object, spellings: list[str]) -> None:
    changes = set()
    for key in spellings:
        for updatable, removable in ((builder({key: None}), None), (None, builder({key: None}))):  # type: ignore[operator]
            changes.add(_spelled(only_change(request(updatable, removable, force=True))))
    assert len(changes) == 1


@pytest.mark.parametrize(
    ("key", "document"),
    [("PatientName", patient), ("StudyDate", study), ("Modality", series), ("Rows", instance)],
)
def test_update_and_removal_classify_identically(key: str, document: object) -> None:
    updated = only_change(request(document({key: None})))  # type: ignore[operator]
    removed = only_change(request(removable=document({key: None})))  # type: ignore[operator]
    assert dataclasses.replace(removed, action="update") == updated


@pytest.mark.parametrize("key", ["001910F9", "001910f9"])
def test_a_private_attribute_classifies_identically_with_or_without_its_vr(key: str) -> None:
    with_vr = only_change(request(instance({key: "1"}, {key: "DS"}), force=True))
    without = only_change(request(instance({key: "1"}), force=True))
    assert dataclasses.replace(with_vr, vr="") == without
    assert (with_vr.vr, with_vr.tag) == ("DS", "001910F9")


# --- rejections ----------------------------------------------------------------------------------

NESTED_TOO_DEEP: object = "x"
for _ in range(MAX_VALUE_DEPTH + 1):
    NESTED_TOO_DEEP = [{"ContentSequence": NESTED_TOO_DEEP}]

REJECTIONS = [
    # the request fields
    ("datastore id", request(study({}), datastore_id="ABC"), "datastore_id", "32 lower-case"),
    ("image set id", request(study({}), image_set_id="0" * 31), "image_set_id", "32 lower-case"),
    ("version", request(study({}), latest_version_id="v1"), "latest_version_id", "version number"),
    ("arabic digit", request(study({}), latest_version_id="\u0661"), "latest_version_id", "digits"),
    ("empty version", request(study({}), latest_version_id=""), "latest_version_id", "version"),
    ("neither member", request(kind=None), "updates", "exactly one"),
    ("both members", request(study({}), revert_to_version_id="1"), "updates", "exactly one"),
    ("both, as revert", request(study({}), kind="revert", revert_to_version_id="1"), "updates",
     "exactly one"),
    ("no blob", request(), "updates.dicom_updates", "updatable_attributes, removable"),
    ("revert id", request(kind="revert", revert_to_version_id="x"),
     "updates.revert_to_version_id", "version number"),
    ("revert id missing", request(kind="revert"), "updates.revert_to_version_id", "version"),
    ("study image sets with revert",
     request(kind="revert", revert_to_version_id="1", include_study_image_sets=True),
     "include_study_image_sets", "not supported"),
    # the blob
    ("empty blob", request(b""), UPD, "must not be empty"),
    ("empty removable", request(removable=b""), REM, "must not be empty"),
    ("over the payload limit", request(b" " * 10_239 + b"{}"), "updates.dicom_updates",
     "10241 bytes, over the limit of 10240 (limits.max_payload_bytes"),
    ("both over the payload limit", request(b" " * 5_200 + b"{}", b" " * 5_200 + b"{}"),
     "updates.dicom_updates", "together are 10404 bytes"),
    ("not UTF-8", request(b'{"Patient": "\xff"}'), UPD, "UTF-8"),
    ("UTF-16", request('{"Patient": {}}'.encode("utf-16")), UPD, "UTF-8"),
    ("BOM", request(b"\xef\xbb\xbf{}"), UPD, "valid JSON"),
    ("not JSON", request(b"{Patient}"), UPD, "valid JSON"),
    ("NaN", request(b'{"Patient": {"DICOM": {"PatientWeight": NaN}}}'), UPD, "not JSON numbers"),
    ("Infinity", request(b'{"Study": {"DICOM": {"PatientWeight": -Infinity}}}'), UPD,
     "not JSON numbers"),
    ("overflowing float", request(b'{"Study": {"DICOM": {"PatientWeight": 1e999}}}'), UPD,
     "must be finite"),
    ("negative overflow", request(b'{"Study": [-1.5e400]}'), UPD, "must be finite"),
    ("huge int", request(b'{"Study": {"DICOM": {"StudyID": 18446744073709551616}}}'), UPD,
     "fit in 64 bits"),
    ("thousands of digits", request(b'{"Study": ' + b"9" * 5000 + b"}"), UPD, "64 bits"),
    ("lone surrogate", request(b'{"Patient": {"DICOM": {"PatientName": "a\\ud800"}}}'),
     f"{UPD}.Patient.DICOM.PatientName", "lone surrogates"),
    ("lone low surrogate", request(b'{"Study": {"DICOM": {"StudyDescription": ["\\udc00"]}}}'),
     f"{UPD}.Study.DICOM.StudyDescription[0]", "lone surrogates"),
    ("surrogate in a key", request(b'{"Patient": {"DICOM": {"\\ud800": 1}}}'),
     f"{UPD}.Patient.DICOM", "keys must not contain lone surrogates"),
    ("trailing data", request(b"{} {}"), UPD, "valid JSON"),
    ("deep JSON", request(b"[" * 5000 + b"]" * 5000), UPD, "nested too deeply"),
    ("duplicate key", request(b'{"Patient": {"DICOM": {"PatientName": 1, "PatientName": 2}}}'),
     UPD, 'duplicate JSON key "PatientName"'),
    ("duplicate top key", request(b'{"Study": {}, "Study": {}}'), UPD, "duplicate JSON key"),
    # the structure
    ("top not object", request([]), UPD, "must be a JSON object"),
    ("unknown top key", request({"Patients": {}}), f"{UPD}.Patients", "expected Patient"),
    ("HI key at top", request({"DatastoreID": DATASTORE}), f"{UPD}.DatastoreID", "generated"),
    ("schema version", request({"SchemaVersion": {"v": 1}}), f"{UPD}.SchemaVersion", "be 1.1"),
    ("schema version bool", request({"SchemaVersion": True}), f"{UPD}.SchemaVersion", "1.1"),
    ("schema version 2.0", request({"SchemaVersion": "2.0"}), f"{UPD}.SchemaVersion", "1.1"),
    ("schema version 1", request({"SchemaVersion": 1}), f"{UPD}.SchemaVersion", "1.1"),
    ("schema version 1.10", request({"SchemaVersion": "1.10"}), f"{UPD}.SchemaVersion", "1.1"),
    ("patient null", request({"Patient": None}), f"{UPD}.Patient", "JSON object"),
    ("patient series", request({"Patient": {"Series": {}}}), f"{UPD}.Patient.Series",
     "expected DICOM"),
    ("dicom not object", request({"Patient": {"DICOM": ["PatientName"]}}), f"{UPD}.Patient.DICOM",
     "JSON object"),
    ("dicomvrs at study", request({"Study": {"DICOMVRs": {}}}), f"{UPD}.Study.DICOMVRs",
     "expected DICOM or Series"),
    ("dicomvrs at series", request({"Study": {"Series": {SERIES: {"DICOMVRs": {}}}}}),
     f'{UPD}.Study.Series["{SERIES}"].DICOMVRs', "expected DICOM or Instances"),
    ("image frames", request(instance({}) | {"Study": {"Series": {SERIES: {"Instances": {SOP: {
        "ImageFrames": []}}}}}}), f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].ImageFrames',
     "generated"),
    ("series not object", request({"Study": {"Series": [SERIES]}}), f"{UPD}.Study.Series",
     "keyed by series UID"),
    ("series uid", request(series({}, uid="1.2.a")), f'{UPD}.Study.Series["1.2.a"]',
     "1 to 64 digits and dots"),
    ("series uid too long", request(series({}, uid="1" * 65)),
     f"{UPD}.Study.Series[(unprintable key)]", "1 to 64 digits"),
    ("instance uid", request({"Study": {"Series": {SERIES: {"Instances": {"": {}}}}}}),
     f'{UPD}.Study.Series["{SERIES}"].Instances[(unprintable key)]', "SOP instance UID"),
    # the attribute keys
    ("unknown keyword", request(study({"Foo": SECRET})), f"{UPD}.Study.DICOM.Foo", "unknown DICOM"),
    ("keyword case", request(patient({"patientName": 1})), f"{UPD}.Patient.DICOM.patientName",
     "case-sensitive"),
    ("comma tag", request(patient({"0010,0010": 1})), f'{UPD}.Patient.DICOM["0010,0010"]',
     "malformed tag"),
    ("short tag", request(patient({"0010001": 1})), f'{UPD}.Patient.DICOM["0010001"]',
     "malformed tag"),
    ("unprintable key", request(patient({"a\nb": 1})), f"{UPD}.Patient.DICOM[(unprintable key)]",
     "malformed attribute key"),
    ("same tag twice", request(patient({"PatientName": 1, "00100010": 2})),
     f'{UPD}.Patient.DICOM["00100010"]', "given twice"),
    ("same tag twice in DICOMVRs", request(instance({"001910F9": "1", "001910f9": "1"},
     {"001910F9": "DS", "001910f9": "DS"}), force=True),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOMVRs["001910f9"]', "given twice"),
    # HealthImaging-generated keys
    ("pixel data", request(instance({"PixelData": None})), None, "generated by HealthImaging"),
    ("pixel data tag", request(instance({"7fe00010": None}), force=True), None, "generated"),
    ("schema version in DICOM", request(study({"SchemaVersion": 1.1})),
     f"{UPD}.Study.DICOM.SchemaVersion", "generated"),
    ("width", request(removable=instance({"Width": 1})), None, "generated"),
    ("checksum", request(instance({"Checksum": 1})), None, "generated"),
    ("frame size", request(instance({"FrameSizeInBytes": 1})), None, "generated"),
    ("min pixel", request(instance({"MinPixelValue": 1})), None, "generated"),
    # levels
    ("patient attribute under study", request(study({"PatientName": SECRET})),
     f"{UPD}.Study.DICOM.PatientName", "PatientName is a patient-level attribute, not study"),
    ("study attribute under patient", request(patient({"PatientAge": "030Y"})),
     f"{UPD}.Patient.DICOM.PatientAge", "study-level"),
    ("series attribute at instance", request(instance({"00080060": "CT"})), None, "series-level"),
    ("study attribute at series", request(removable=series({"StudyDescription": "x"})), None,
     "study-level"),
    # force
    ("study uid", request(study({"StudyInstanceUID": "1.2"})),
     f"{UPD}.Study.DICOM.StudyInstanceUID", "changing StudyInstanceUID requires force"),
    ("study id", request(study({"00200010": "1"})), None, "changing StudyID requires force"),
    ("series uid change", request(series({"SeriesInstanceUID": "1.2"})), None, "requires force"),
    ("sop uid removal", request(removable=instance({"SOPInstanceUID": "1.2"})), None,
     "changing SOPInstanceUID requires force"),
    ("private instance tag", request(instance({"001910F9": "1"})),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOM["001910F9"]',
     "private attribute of an instance requires force"),
    ("private instance removal", request(removable=instance({"00191001": "1"})), None,
     "requires force"),
    ("private VR with its value", request(instance({"00191001": "x"}, {"00191001": "LO"})), None,
     "requires force"),
    # DICOMVRs: HealthImaging refuses these even with force (issue 18)
    ("VR without its value", request(instance({}, {"00191001": "LO"}), force=True),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOMVRs["00191001"]',
     "a VR needs its attribute, spelled the same way, in the DICOM object beside it"),
    ("VR spelled otherwise than its value", request(instance({"0019100a": "x"},
     {"0019100A": "LO"}), force=True), None, "spelled the same way"),
    ("VR without a DICOM object", request(instance(None, {"00191001": "LO"}), force=True), None,
     "spelled the same way"),
    ("VR of a standard attribute", request(instance({"ImageComments": SECRET},
     {"ImageComments": "LT"}), force=True),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOMVRs.ImageComments',
     "DICOMVRs is only accepted for private attributes and attributes not in the standard, "
     "even with force; the dictionary gives ImageComments the VR LT"),
    ("VR of a standard attribute by tag", request(removable=instance({"00204000": SECRET},
     {"00204000": "LT"}), force=True), None, "DICOMVRs is only accepted for private"),
    ("VR of an ambiguous standard attribute", request(instance({"SmallestImagePixelValue": 0},
     {"SmallestImagePixelValue": "US"})), None, "the VR US or SS"),
    ("private at study", request(study({"00091001": "x"}), force=True), None,
     "a private attribute is only supported on an instance, even with force"),
    ("private at patient", request(removable=patient({"00091001": "x"})), None, "instance"),
    ("private at series", request(series({"00091010": "x"})), None, "only supported on an"),
    ("non-standard at study", request(study({"00100011": "x"}), force=True), None,
     "not in the standard is only supported on an instance"),
    ("non-standard at instance", request(instance({"00100011": "x"})),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOM["00100011"]',
     "an attribute not in the standard of an instance requires force (set force=true"),
    ("unlisted at study", request(study({"ImageComments": SECRET}), force=True),
     f"{UPD}.Study.DICOM.ImageComments",
     "ImageComments is not a study-level attribute; attributes HealthImaging does not list"),
    ("unlisted at patient", request(removable=patient({"Rows": 1})), None, "not a patient-level"),
    ("unlisted at series", request(series({"ImageType": ["A", "B"]})), None, "not a series-level"),
    ("sequence", request(instance({"ReferencedImageSequence": [{"ReferencedSOPInstanceUID": ""}]})),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOM.ReferencedImageSequence',
     "ReferencedImageSequence is a sequence (SQ); changing it requires force (set force=true; "
     "needs role metadata-admin)"),
    ("empty sequence", request(removable=instance({"ReferencedImageSequence": []})), None,
     "is a sequence (SQ)"),
    ("private sequence", request(instance({"00191001": [{"00191002": "x"}]}, {"00191001": "SQ"})),
     None, "private attribute of an instance requires force"),
    # VM
    ("single value for VM 2", request(instance({"PixelSpacing": SECRET})),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOM.PixelSpacing',
     "PixelSpacing takes VM 2 values, not a single one; requires force"),
    ("two values for VM 3", request(instance({"ImagePositionPatient": ["1", "2"]})), None,
     "ImagePositionPatient takes VM 3 values, not 2; requires force"),
    ("odd count for VM 2-2n", request(instance({"VerticesOfThePolygonalShutter": ["1", "2", "3"]})),
     None, "VerticesOfThePolygonalShutter takes VM 2-2n values, not 3"),
    ("list for VM 1", request(patient({"PatientName": [SECRET, "B"]})), None,
     "PatientName takes a single value (VM 1), not a list; requires force"),
    ("one-element list for VM 1", request(study({"StudyDescription": [SECRET]})), None,
     "takes a single value (VM 1)"),
    ("multi-valued", request(instance({"ImageType": ["ORIGINAL", "PRIMARY"]})), None,
     "ImageType is multi-valued (given as a list); changing it requires force"),
    ("multi-valued scalar", request(series({"OperatorsName": SECRET})), None,
     "OperatorsName is multi-valued (VM 1-n); changing it requires force"),
    ("multi-valued removal", request(removable=series({"OperatorsName": [SECRET]})), None,
     "multi-valued"),
    # VR formats
    ("DA", request(study({"StudyDate": "2024-01-02"})), f"{UPD}.Study.DICOM.StudyDate",
     "the value of StudyDate does not fit its VR DA (expects a string in DA form); requires force"),
    ("DA month", request(study({"StudyDate": "20241302"})), None, "VR DA"),
    ("DA as number", request(study({"StudyDate": 20240102})), None, "VR DA (expects a string"),
    ("TM", request(study({"StudyTime": "25"})), None, "VR TM"),
    ("DT", request(instance({"AcquisitionDateTime": "2024-01-02T10:00"})), None, "VR DT"),
    ("AS", request(study({"PatientAge": "30"})), None, "VR AS"),
    ("UI", request(instance({"SOPClassUID": "1.2.abc"})), None, "VR UI"),
    ("UI leading zero", request(instance({"SOPClassUID": "1.02"})), None, "VR UI"),
    ("UI too long", request(series({"FrameOfReferenceUID": "1." + "2" * 64})), None, "VR UI"),
    ("CS lower case", request(series({"Modality": "ct"})), None, "VR CS"),
    ("CS too long", request(series({"BodyPartExamined": "A" * 17})), None, "VR CS"),
    ("IS", request(series({"SeriesNumber": "1.5"})), None, "VR IS"),
    ("IS as number", request(series({"SeriesNumber": 1})), None, "VR IS (expects a string"),
    ("DS", request(study({"PatientWeight": "heavy"})), None, "VR DS"),
    ("DS too long", request(study({"PatientWeight": "1.00000000000000001"})), None, "VR DS"),
    ("SH too long", request(study({"AccessionNumber": "A" * 17})), None, "VR SH"),
    ("LO too long", request(study({"StudyDescription": "A" * 65})), None, "VR LO"),
    ("PN components", request(patient({"PatientName": "A=B=C=D"})), None, "VR PN"),
    ("PN component length", request(patient({"PatientName": "A" * 65})), None, "VR PN"),
    ("US range", request(instance({"Rows": 70000})), None, "VR US (expects a number"),
    ("US negative", request(instance({"Columns": -1})), None, "VR US"),
    ("US as string", request(instance({"Rows": "512"})), None, "VR US"),
    ("US float", request(instance({"Rows": 1.5})), None, "VR US"),
    ("US or SS range", request(instance({"SmallestImagePixelValue": 70000})), None,
     "VR US or SS"),
    ("UL list", request(instance({"SimpleFrameList": [2**32]})), None,
     "SimpleFrameList is multi-valued (given as a list)"),
    ("DS as number", request(instance({"SliceLocation": 1.5})), None, "VR DS (expects a string"),
    ("FD as string", request(instance({"XRayTubeCurrentInmA": "1.5"})), None, "VR FD (expects"),
    ("FL as string", request(instance({"RecommendedDisplayFrameRateInFloat": "30"})), None,
     "VR FL"),
    ("ST too long", request(instance({"DerivationDescription": "A" * 1025})), None, "VR ST"),
    # DICOMVRs values
    ("bad VR", request(instance({"00191001": 1}, {"00191001": "XX"}), force=True), None,
     "two-letter DICOM VR"),
    ("VR not a string", request(instance({"00191001": 1}, {"00191001": ["LO"]}), force=True), None,
     "VR"),
    ("ambiguous VR form", request(instance({"00191001": 1}, {"00191001": "US or SS"}), force=True),
     None, "two-letter DICOM VR"),
    ("VR conflicts", request(instance({"PatientAddress": "x"}, {"PatientAddress": "PN"})), None,
     "the dictionary gives PatientAddress the VR LO"),
    ("DICOMVRs not object", request(instance({}, ["LO"])), None, "mapping attributes to VRs"),
    # values
    ("object value", request(patient({"PatientName": {"Alphabetic": SECRET}})),
     f"{UPD}.Patient.DICOM.PatientName", "string, number, null or a list"),
    ("bool value", request(patient({"PatientSex": True})), None, "string, number, null"),
    ("nested list", request(patient({"OtherPatientNames": [[SECRET]]})),
     f"{UPD}.Patient.DICOM.OtherPatientNames[0]", "string, number or null"),
    ("mixed list", request(patient({"OtherPatientNames": [SECRET, {"a": 1}]})),
     f"{UPD}.Patient.DICOM.OtherPatientNames[1]", "string, number or null"),
    ("items on a non-sequence", request(patient({"PatientID": [{"PatientName": SECRET}]})),
     f"{UPD}.Patient.DICOM.PatientID", "needs a sequence (SQ) attribute, not LO"),
    ("unknown keyword in an item", request(instance({"ReferencedImageSequence": [{"Foo": 1}]})),
     f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOM.ReferencedImageSequence[0].Foo',
     "unknown DICOM keyword"),
    ("duplicate in an item", request(instance({"ReferencedImageSequence": [{}, {
        "ReferencedSOPInstanceUID": "1", "00081155": "1"}]})), None, "given twice"),
    ("too deep", request(instance({"ContentSequence": NESTED_TOO_DEEP})), None,
     f"nested deeper than {MAX_VALUE_DEPTH} levels"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("req", "field", "description"),
    [
        pytest.param(req, field, description, id=name)
        for name, req, field, description in REJECTIONS
    ],
)
def test_rejections(req: UpdateRequest, field: str | None, description: str) -> None:
    found = violations(req)
    matching = [(f, d) for f, d in found if description in d]
    assert matching, found
    if field is not None:
        assert field in [f for f, _ in matching], found
    assert all(SECRET not in f + d for f, d in found)


def test_force_lets_uid_and_private_instance_changes_through() -> None:
    doc = instance({"SOPInstanceUID": "1.2", "00191001": "x"})
    assert len(normalise(request(doc, force=True)).changes) == 2


def test_force_lets_what_healthimaging_force_gates_through() -> None:
    doc = instance({
        "ReferencedImageSequence": [], "ImageType": ["A", "B"], "00100011": "x",
        "PixelSpacing": "1", "Rows": "not a number", "00191001": [{"00191002": "x"}],
    })  # fmt: skip
    assert violations(request(doc))
    plan = normalise(request(doc, force=True))
    assert len(plan.changes) == 7
    assert all(c.requires_force for c in plan.changes)


def test_removals_are_not_format_checked() -> None:
    # Removing takes the stored value, whatever it is; only the update's new value must fit.
    assert only_change(request(removable=study({"StudyDate": "garbage"}))).keyword == "StudyDate"


def test_valid_values_need_no_force() -> None:
    doc = {
        "SchemaVersion": "1.1",
        "Patient": {"DICOM": {"PatientName": "DOE^JANE=^=", "PatientBirthDate": "19700101"}},
        "Study": {"DICOM": {
            "StudyDate": "20240102", "StudyTime": "101500.25", "PatientAge": "054Y",
            "PatientWeight": " 72.5 ", "AccessionNumber": "A" * 16, "StudyDescription": "",
        }, "Series": {SERIES: {
            "DICOM": {"Modality": "CT", "SeriesNumber": "+12", "BodyPartExamined": None},
            "Instances": {SOP: {"DICOM": {
                "Rows": 65535, "SmallestImagePixelValue": -5, "XRayTubeCurrentInmA": 3,
                "AcquisitionDateTime": "20240102101500.5+0100", "SOPClassUID": "1.2.840.10008.1",
                "SliceLocation": "-1.5e3", "InstanceNumber": "1",
            }}},
        }}},
    }  # fmt: skip
    plan = normalise(request(doc))
    assert len(plan.changes) == 18
    assert not any(c.requires_force for c in plan.changes)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    value: object = "x"
    for _ in range(MAX_VALUE_DEPTH):
        value = [{"ContentSequence": value}]
    plan = normalise(request(instance({"ContentSequence": value}), force=True))
    assert [(c.keyword, c.within) for c in plan.changes] == [
        ("ContentSequence", ""), ("ContentSequence", "0040A730")
    ]  # fmt: skip


def test_payload_limit_counts_both_documents_before_parsing() -> None:
    limit = DEFAULT_LIMITS.max_payload_bytes
    blob = json.dumps(patient({"PatientComments": ""})).encode()
    blob = blob[:-1] + b" " * (limit - len(blob)) + b"}"
    assert len(blob) == limit == 10_240
    assert len(normalise(request(blob)).changes) == 1
    ((field, description),) = violations(request(blob, b"{"))  # not parsed: no JSON error
    assert (field, description.split(",")[0]) == (
        "updates.dicom_updates",
        "updatable_attributes and removable_attributes together are 10241 bytes",
    )


def test_payload_limit_is_configurable_up_to_the_model_maximum() -> None:
    limits = LimitSettings(max_payload_bytes=100_000)
    blob = b" " * (MAX_BLOB_BYTES - 1) + b"{}"
    with pytest.raises(InvalidArgument) as caught:
        normalise(request(blob), limits)
    assert [v.description for v in caught.value.violations] == [
        f"must not be larger than {MAX_BLOB_BYTES} bytes"
    ]
    assert normalise(request(blob[1:]), limits).changes == ()


def test_change_count_limit() -> None:
    attrs = {f"{0x00291000 + i:08X}": "x" for i in range(6)}
    doc = instance(attrs)
    assert len(normalise(request(doc, force=True), LimitSettings(max_changes=6)).changes) == 6
    with pytest.raises(InvalidArgument) as caught:
        normalise(request(doc, force=True), LimitSettings(max_changes=5))
    assert [(v.field, v.description) for v in caught.value.violations] == [
        (
            "updates.dicom_updates",
            "6 changes, over the limit of 5 (limits.max_changes); split the update",
        )
    ]


def test_nested_changes_count_against_the_limit() -> None:
    doc = instance({"ReferencedImageSequence": [{"ReferencedSOPInstanceUID": "1"}]})
    with pytest.raises(InvalidArgument):
        normalise(request(doc, force=True), LimitSettings(max_changes=1))


def test_several_violations_are_reported_together() -> None:
    req = request(
        {"Patient": {"DICOM": {"Foo": 1, "StudyDate": "x"}}, "Extra": 1},
        b"",
        datastore_id="x",
    )
    fields = [f for f, _ in violations(req)]
    assert fields == [
        "datastore_id",
        f"{UPD}.Extra",
        f"{UPD}.Patient.DICOM.Foo",
        f"{UPD}.Patient.DICOM.StudyDate",
        REM,
    ]


def test_violations_are_capped_but_counted() -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalise(request(patient({f"Foo{i}": i for i in range(200)})))
    assert (len(caught.value.violations), caught.value.total) == (MAX_VIOLATIONS, 200)
    assert caught.value.reported[-1].description.startswith("and ")


def test_plan_is_immutable() -> None:
    plan = normalise(request(patient({"PatientName": "x"})))
    assert isinstance(plan, UpdatePlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.force = True  # type: ignore[misc]
    assert SECRET not in repr(normalise(request(patient({"PatientName": SECRET}))))
