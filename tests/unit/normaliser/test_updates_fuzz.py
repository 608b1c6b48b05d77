"""Generated documents: every attribute is covered by the plan; arbitrary input never crashes."""

from __future__ import annotations

import dataclasses
import json
import re

from hypothesis import given, note
from hypothesis import strategies as st
from pydicom import datadict
from pydicom._dicom_dict import DicomDictionary

from service.core.errors import InvalidArgument
from service.core.model import AttributeChange, Level, UpdatePlan, UpdateRequest
from service.normaliser import dicom
from service.normaliser.updates import normalise

DATASTORE = "0123456789abcdef0123456789abcdef"
MARKER = "PHI-MARKER"  # every generated value contains it; no error may
LEVELS: tuple[Level, ...] = ("patient", "study", "series", "instance")


def _tags_for(level: Level) -> list[int]:
    """Dictionary tags that may appear at `level`: listed there (instances take the unlisted)."""
    homes = (None, level) if level == "instance" else (level,)
    return sorted(
        tag
        for tag in DicomDictionary
        if not (attribute := dicom.attribute_for_tag(tag)).generated
        and attribute.home_level in homes
    )


LEVEL_TAGS = {level: _tags_for(level) for level in LEVELS}
UIDS = st.from_regex(r"[0-9.]{1,64}", fullmatch=True)
SCALARS = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),  # JSON numbers HealthImaging takes
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6).map(MARKER.__add__),
)
PRIVATE_TAGS = st.builds(
    lambda group, element: (group << 16) | element,
    st.integers(0, 0x7FFF).map(lambda g: 2 * g + 1),
    st.integers(0, 0xFFFF),
)
NON_STANDARD_TAGS = st.integers(0, 0xFFFFFFFF).filter(
    lambda tag: tag >> 16 & 1 == 0 and not dicom.attribute_for_tag(tag).standard
)


def request(updatable: bytes | None, removable: bytes | None, force: bool = True) -> UpdateRequest:
    return UpdateRequest(
        datastore_id=DATASTORE,
        image_set_id=DATASTORE,
        latest_version_id="1",
        force=force,
        include_study_image_sets=False,
        updatable_attributes=updatable,
        removable_attributes=removable,
        revert_to_version_id=None,
        kind="dicom_updates",
    )


@st.composite
def spelling(draw: st.DrawFn, tag: int) -> str:
    """The keyword, or 8 hex digits in a random mix of cases."""
    keyword = dicom.attribute_for_tag(tag).keyword
    if keyword and datadict.tag_for_keyword(keyword) == tag and draw(st.booleans()):
        return keyword
    upper = draw(st.lists(st.booleans(), min_size=8, max_size=8))
    return "".join(
        c.upper() if up else c.lower() for c, up in zip(f"{tag:08X}", upper, strict=True)
    )


@st.composite
def value_for(draw: st.DrawFn, tag: int) -> object:
    if dicom.attribute_for_tag(tag).vr == "SQ":
        items = st.fixed_dictionaries({"CodeValue": SCALARS}) | st.just({"00091001": MARKER})
        return draw(st.lists(items, max_size=2))
    return draw(SCALARS | st.lists(SCALARS, max_size=3))


def _any_tag(level: Level) -> st.SearchStrategy[int]:
    """A tag HealthImaging takes at `level` (private and non-standard ones: instances only)."""
    listed = st.sampled_from(LEVEL_TAGS[level])
    return listed | PRIVATE_TAGS | NON_STANDARD_TAGS if level == "instance" else listed


Expected = set[tuple[str, str, str, str]]  # (level, series UID, instance UID, tag)


@st.composite
def attributes(
    draw: st.DrawFn, level: Level, series: str = "", sop: str = ""
) -> tuple[dict[str, object], dict[str, str], Expected]:
    """A DICOM map (and DICOMVRs for private tags at instance level) plus the expected tags."""
    tags = draw(st.lists(_any_tag(level), max_size=5, unique=True))
    members: dict[str, object] = {}
    vrs: dict[str, str] = {}
    for tag in tags:
        key = draw(spelling(tag))
        members[key] = draw(value_for(tag))
        unlisted = not dicom.attribute_for_tag(tag).standard  # private or not in the standard
        if unlisted and level == "instance" and draw(st.booleans()):  # a VR beside its value
            vrs[key] = draw(st.sampled_from(sorted(dicom.VRS)))
    expected: Expected = {(level, series, sop, f"{tag:08X}") for tag in tags}
    return members, vrs, expected


@st.composite
def documents(draw: st.DrawFn, removable: bool) -> tuple[dict[str, object], Expected]:
    """An acceptable attribute document at every level, with the changes it must produce."""
    patient, _, expected = draw(attributes("patient"))
    study, _, more = draw(attributes("study"))
    expected |= more
    series_map: dict[str, object] = {}
    for series_uid in draw(st.lists(UIDS, max_size=2, unique=True)):
        if removable and draw(st.booleans()):
            series_map[series_uid] = {}
            expected.add(("series", series_uid, "", ""))
            continue
        members, _, more = draw(attributes("series", series_uid))
        expected |= more
        instances: dict[str, object] = {}
        for sop_uid in draw(st.lists(UIDS, max_size=2, unique=True)):
            if removable and draw(st.booleans()):
                instances[sop_uid] = {}
                expected.add(("instance", series_uid, sop_uid, ""))
                continue
            dicom_map, vrs, more = draw(attributes("instance", series_uid, sop_uid))
            expected |= more
            instances[sop_uid] = {"DICOM": dicom_map, "DICOMVRs": vrs}
        series_map[series_uid] = {"DICOM": members, "Instances": instances}
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": patient}}
    document["Study"] = {"DICOM": study, "Series": series_map}
    return document, expected


def _located(changes: tuple[AttributeChange, ...]) -> Expected:
    """Where the top-level changes are; nested ones must name a top-level sequence beside them."""
    top = {(c.level, c.series_uid, c.instance_uid, c.tag) for c in changes if not c.within}
    for change in changes:
        if change.within:
            assert (change.level, change.series_uid, change.instance_uid, change.within) in top
    return top


@given(documents(removable=False), documents(removable=True))
def test_fuzz_plan_covers_every_generated_attribute(
    updatable: tuple[dict[str, object], Expected], removable: tuple[dict[str, object], Expected]
) -> None:
    plan = normalise(request(json.dumps(updatable[0]).encode(), json.dumps(removable[0]).encode()))
    updates = tuple(c for c in plan.changes if c.action == "update")
    removals = tuple(c for c in plan.changes if c.action != "update")
    assert sum(not c.within for c in updates) == len(updatable[1])
    assert _located(updates) == updatable[1]
    assert sum(not c.within for c in removals) == len(removable[1])
    assert _located(removals) == removable[1]


@given(st.sampled_from(LEVELS).flatmap(lambda level: st.tuples(
    st.just(level), _any_tag(level)
)), st.data())  # fmt: skip
def test_fuzz_spellings_classify_identically(
    located: tuple[Level, int], data: st.DataObject
) -> None:
    level, tag = located
    seen = set()
    for _ in range(3):
        key = data.draw(spelling(tag))
        members = {key: None}  # a value could fit the VR (update) and be unchecked (removal)
        document = {
            "patient": {"Patient": {"DICOM": members}},
            "study": {"Study": {"DICOM": members}},
            "series": {"Study": {"Series": {"1.2": {"DICOM": members}}}},
            "instance": {"Study": {"Series": {"1.2": {"Instances": {"1.3": {"DICOM": members}}}}}},
        }[level]
        blob = json.dumps(document).encode()
        for updatable, removable in ((blob, None), (None, blob)):
            (change,) = normalise(request(updatable, removable)).changes
            seen.add(dataclasses.replace(change, action="update"))
    assert len(seen) == 1
    assert seen.pop().tag == f"{tag:08X}"


# --- arbitrary input: a plan or InvalidArgument, nothing else ------------------------------------

KEYS = st.sampled_from([
    "SchemaVersion", "Patient", "Study", "Series", "Instances", "DICOM", "DICOMVRs", "ImageFrames",
    "PatientName", "00100010", "0010,0010", "StudyInstanceUID", "SOPInstanceUID", "PixelData",
    "ReferencedImageSequence", "OtherPatientIDsSequence", "001910F9", "0029a0b0", "ImageType",
    "1.2", "1.2.3", "", "Width",
]) | st.text(max_size=8)  # fmt: skip
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(sorted(dicom.VRS)),
    st.text(max_size=4).map(MARKER.__add__),
)  # fmt: skip


def _containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=4)


JSON = st.recursive(LEAVES, _containers, max_leaves=40)


def _outcome(req: UpdateRequest) -> UpdatePlan | InvalidArgument:
    try:
        plan = normalise(req)
    except InvalidArgument as exc:
        for violation in exc.violations:
            assert MARKER not in violation.field + violation.description
        return exc
    json.dumps(plan.summary())
    for change in plan.changes:
        assert re.fullmatch(r"[0-9A-F]{8}", change.tag) or change.action.startswith("remove_")
        assert MARKER not in repr(change)
    assert MARKER not in repr(plan)
    return plan


@given(st.binary(max_size=400), st.booleans())
def test_fuzz_arbitrary_bytes(blob: bytes, force: bool) -> None:
    _outcome(request(blob, None, force))


@given(JSON, JSON, st.booleans())
def test_fuzz_arbitrary_json(updatable: object, removable: object, force: bool) -> None:
    note(repr((updatable, removable)))
    _outcome(request(json.dumps(updatable).encode(), json.dumps(removable).encode(), force))


@given(st.dictionaries(st.sampled_from(["Patient", "Study"]), JSON, max_size=2), st.booleans())
def test_fuzz_document_shaped_json(document: dict[str, object], force: bool) -> None:
    _outcome(request(json.dumps(document).encode(), None, force))


@given(documents(removable=False), st.data())
def test_fuzz_mutated_documents(
    generated: tuple[dict[str, object], Expected], data: st.DataObject
) -> None:
    blob = bytearray(json.dumps(generated[0]).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        if blob:
            index = data.draw(st.integers(0, len(blob) - 1))
            blob[index] = data.draw(st.integers(0, 255))
    _outcome(request(bytes(blob), None, data.draw(st.booleans())))


@given(
    st.builds(
        UpdateRequest,
        datastore_id=st.text(max_size=33) | st.just(DATASTORE),
        image_set_id=st.text(max_size=33) | st.just(DATASTORE),
        latest_version_id=st.text(max_size=3) | st.from_regex(r"[0-9]{1,3}", fullmatch=True),
        force=st.booleans(),
        include_study_image_sets=st.booleans(),
        updatable_attributes=st.none() | st.binary(max_size=20) | st.just(b'{"Study": {}}'),
        removable_attributes=st.none() | st.binary(max_size=20),
        revert_to_version_id=st.none() | st.text(max_size=3),
        kind=st.sampled_from(["dicom_updates", "revert", None]),
        idempotency_key=st.text(max_size=4),
    )
)
def test_fuzz_arbitrary_requests(req: UpdateRequest) -> None:
    outcome = _outcome(req)
    if isinstance(outcome, UpdatePlan):
        assert outcome.kind == req.kind
        assert (outcome.revert_to_version_id != "") is (req.kind == "revert")
