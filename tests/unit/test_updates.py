"""The update normaliser: classification, spelling independence and every rejection rule."""

from __future__ import annotations

import dataclasses
import json

import pytest

from service.errors import InvalidArgument
from service.updates import (
    MAX_BLOB_BYTES,
    MAX_VALUE_DEPTH,
    MAX_VIOLATIONS,
    AttributeChange,
    UpdatePlan,
    UpdateRequest,
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
    assert change == AttributeChange(
        "update", "patient", "", "", "00100010", "PatientName", "PN", False, False,
        ("patient_identity",),
    )  # fmt: skip
    assert change.value == SECRET


def test_a_private_instance_tag_with_its_vr() -> None:
    change = only_change(request(instance({"001910f9": "97"}, {"001910F9": "DS"}), force=True))
    assert change == AttributeChange(
        "update", "instance", SERIES, SOP, "001910F9", "", "DS", True, True, ("private",)
    )


@pytest.mark.parametrize(
    ("document", "force", "requires_force", "categories"),
    [
        (study({"StudyDescription": "CT"}), False, False, ()),
        (study({"StudyInstanceUID": "1.2.3"}), True, True, ("uid",)),
        (study({"StudyID": "7"}), True, True, ("uid",)),
        (series({"SeriesInstanceUID": "1.2.3"}), True, True, ("uid",)),
        (instance({"SOPInstanceUID": "1.2.3"}), True, True, ("uid",)),
        (instance({"ImageType": ["ORIGINAL", "PRIMARY"]}), False, True, ("multi_valued",)),
        (instance({"ImageType": ["ORIGINAL"]}), False, False, ()),
        (instance({"ImageType": []}), False, False, ()),
        (instance({"ImageComments": None}), False, False, ()),
        (instance({"ReferencedImageSequence": []}), False, True, ("sequence",)),
        (instance({"00100011": "x"}), False, True, ("non_standard",)),
        (study({"00090010": "CREATOR"}), False, True, ("private",)),
        (patient({"OtherPatientIDsSequence": [{"PatientID": "1", "00091001": "x"}]}), False, True,
         ("patient_identity", "private", "sequence")),
        (instance({"ReferencedImageSequence": [{"00091001": "x"}]}), False, True,
         ("private", "sequence")),
        (series({"RequestAttributesSequence": [{"StudyInstanceUID": "1.2"}]}), False, True,
         ("sequence",)),  # a referenced UID inside a sequence is not a UID change
        (instance({"00191001": [{"PatientName": "x"}]}), True, True,
         ("patient_identity", "private")),
    ],
)  # fmt: skip
def test_force_and_categories(
    document: dict[str, object], force: bool, requires_force: bool, categories: tuple[str, ...]
) -> None:
    change = only_change(request(document, force=force))
    assert (change.requires_force, change.categories) == (requires_force, categories)


def test_private_sequence_vr_from_dicomvrs() -> None:
    change = only_change(
        request(instance({"00191001": [{"00191002": "x"}]}, {"00191001": "SQ"}), force=True)
    )
    assert (change.vr, change.categories) == ("SQ", ("private", "sequence"))


def test_ambiguous_dictionary_vr_is_resolved_by_dicomvrs() -> None:
    doc = instance({"SmallestImagePixelValue": 0}, {"SmallestImagePixelValue": "SS"})
    assert only_change(request(doc)).vr == "SS"
    assert only_change(request(instance({"SmallestImagePixelValue": 0}))).vr == "US or SS"


def test_unlisted_attribute_classifies_where_it_appears() -> None:
    # ImageComments is not in HealthImaging's Patient/Study/Series tables: not refused anywhere.
    for document, level in (
        (patient({"ImageComments": "x"}), "patient"),
        (study({"ImageComments": "x"}), "study"),
        (series({"ImageComments": "x"}), "series"),
    ):
        assert only_change(request(document)).level == level


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
    plan = normalise(request(doc, {"Study": {"Series": {"1.2": {}}}}, force=True))
    assert plan.summary() == {
        "change_count": 3,
        "categories": ["patient_identity", "private"],
        "actions": ["remove_series", "update"],
        "levels": ["instance", "patient", "series"],
        "private": True,
        "requires_force": True,
        "removed_series": 1,
        "removed_instances": 0,
    }
    assert plan.touched_tags() == ("instance:00191001", "patient:00100010", "series:remove_series")
    assert SECRET not in json.dumps(plan.summary())


def test_changes_keep_document_order() -> None:
    plan = normalise(
        request(study({"StudyDescription": "a", "AccessionNumber": "b", "StudyDate": "c"}))
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
        (series, ["00091001", "00091001".lower()]),
        (patient, ["00100011", "00100011"]),
    ],
)
def test_spellings_classify_identically(builder: object, spellings: list[str]) -> None:
    changes = set()
    for key in spellings:
        for updatable, removable in ((builder({key: "v"}), None), (None, builder({key: "v"}))):  # type: ignore[operator]
            changes.add(_spelled(only_change(request(updatable, removable, force=True))))
    assert len(changes) == 1


@pytest.mark.parametrize("key", ["ImageComments", "00204000", "00091001", "00100011"])
def test_same_attribute_at_any_level_classifies_identically(key: str) -> None:
    documents = (patient({key: "v"}), study({key: "v"}), series({key: "v"}), instance({key: "v"}))
    changes = [only_change(request(doc, force=True)) for doc in documents]
    assert [c.level for c in changes] == ["patient", "study", "series", "instance"]
    assert len({_spelled(c) for c in changes}) == 1


def test_dicom_and_dicomvrs_classify_identically() -> None:
    in_dicom = only_change(request(instance({"001910F9": "1"}, {"001910f9": "DS"}), force=True))
    in_vrs_only = only_change(request(instance({}, {"001910F9": "DS"}), force=True))
    assert in_dicom == in_vrs_only
    assert in_vrs_only.value is None


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
    ("oversize", request(b" " * (MAX_BLOB_BYTES - 1) + b"{}"), UPD, "larger than 30000"),
    ("not UTF-8", request(b'{"Patient": "\xff"}'), UPD, "UTF-8"),
    ("UTF-16", request('{"Patient": {}}'.encode("utf-16")), UPD, "UTF-8"),
    ("BOM", request(b"\xef\xbb\xbf{}"), UPD, "valid JSON"),
    ("not JSON", request(b"{Patient}"), UPD, "valid JSON"),
    ("NaN", request(b'{"Patient": {"DICOM": {"PatientWeight": NaN}}}'), UPD, "valid JSON"),
    ("trailing data", request(b"{} {}"), UPD, "valid JSON"),
    ("deep JSON", request(b"[" * 5000 + b"]" * 5000), UPD, "nested too deeply"),
    ("duplicate key", request(b'{"Patient": {"DICOM": {"PatientName": 1, "PatientName": 2}}}'),
     UPD, 'duplicate JSON key "PatientName"'),
    ("duplicate top key", request(b'{"Study": {}, "Study": {}}'), UPD, "duplicate JSON key"),
    # the structure
    ("top not object", request([]), UPD, "must be a JSON object"),
    ("unknown top key", request({"Patients": {}}), f"{UPD}.Patients", "expected Patient"),
    ("HI key at top", request({"DatastoreID": DATASTORE}), f"{UPD}.DatastoreID", "generated"),
    ("schema version", request({"SchemaVersion": {"v": 1}}), f"{UPD}.SchemaVersion", "number"),
    ("schema version bool", request({"SchemaVersion": True}), f"{UPD}.SchemaVersion", "number"),
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
    ("same tag twice in DICOMVRs", request(instance({}, {"001910F9": "DS", "001910f9": "DS"}),
     force=True), f'{UPD}.Study.Series["{SERIES}"].Instances["{SOP}"].DICOMVRs["001910f9"]',
     "given twice"),
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
    ("private VR only", request(instance({}, {"00191001": "LO"})), None, "requires force"),
    # DICOMVRs values
    ("bad VR", request(instance({}, {"00191001": "XX"}), force=True), None, "two-letter DICOM VR"),
    ("VR not a string", request(instance({}, {"00191001": ["LO"]}), force=True), None, "VR"),
    ("ambiguous VR form", request(instance({}, {"00191001": "US or SS"}), force=True), None, "VR"),
    ("VR conflicts", request(instance({}, {"PatientAddress": "PN"})), None,
     "conflicts with the data dictionary VR LO"),
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


def test_private_outside_an_instance_is_left_to_healthimaging() -> None:
    change = only_change(request(study({"00091001": "x"})))
    assert change.private and change.requires_force


def test_sequences_multi_values_and_non_standard_need_no_force_here() -> None:
    # HealthImaging refuses these itself without force; the plan marks them.
    doc = instance({"ReferencedImageSequence": [], "ImageType": ["A", "B"], "00100011": "x"})
    assert all(c.requires_force for c in normalise(request(doc)).changes)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    value: object = "x"
    for _ in range(MAX_VALUE_DEPTH):
        value = [{"ContentSequence": value}]
    assert only_change(request(instance({"ContentSequence": value}))).keyword == "ContentSequence"


def test_largest_blob_is_accepted() -> None:
    blob = json.dumps(patient({"PatientComments": ""})).encode()
    blob = blob[:-1] + b" " * (MAX_BLOB_BYTES - len(blob)) + b"}"
    assert len(blob) == MAX_BLOB_BYTES
    assert len(normalise(request(blob)).changes) == 1


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


def test_violations_are_capped() -> None:
    found = violations(request(patient({f"Foo{i}": i for i in range(200)})))
    assert len(found) == MAX_VIOLATIONS


def test_plan_is_immutable() -> None:
    plan = normalise(request(patient({"PatientName": "x"})))
    assert isinstance(plan, UpdatePlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.force = True  # type: ignore[misc]
    assert SECRET not in repr(normalise(request(patient({"PatientName": SECRET}))))
