"""Hypothesis strategies for update requests: documents shaped like HealthImaging's, and worse.

Attribute keys mix real keywords and tags (pydicom's dictionary), private and unknown tags in
either case, HealthImaging-generated names and junk, and valid documents (documents.py).
Every text value carries MARKER, so a test can check that no refusal ever echoes a value.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from hypothesis import strategies as st
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from pydicom import datadict
from pydicom._dicom_dict import DicomDictionary  # what datadict itself reads

from service.normaliser import dicom
from tests.e2e.fuzz.dicom_values import MARKER as MARKER  # re-exported: tests read s.MARKER
from tests.e2e.fuzz.documents import plans, sample_layout
from tests.e2e.secure_stack import DATASTORE_ID, OTHER_DATASTORE_ID

_KEYWORDS = sorted(
    entry[4] for entry in DicomDictionary.values() if entry[4] and "Retired" not in entry[2]
)
_PROTECTED = [
    "PatientName", "PatientID", "PatientAddress", "OtherPatientIDs", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "StudyID", "StudyDescription", "SeriesDescription",
    "ReferencedImageSequence", "OtherPatientIDsSequence", "PixelData", "PatientWeight",
]  # fmt: skip
_GENERATED = ["SchemaVersion", "DatastoreID", "ImageSetID", "Checksum", "Width", "ImageFrames"]
VRS = ["LO", "SH", "PN", "UI", "SQ", "DA", "CS", "UN", "US", "OB", "XX", "lo", ""]

keywords = st.sampled_from(_PROTECTED) | st.sampled_from(_KEYWORDS)
known_tags = st.sampled_from(_PROTECTED + _KEYWORDS).map(datadict.tag_for_keyword)
any_tags = st.integers(0, 0xFFFFFFFF) | known_tags.filter(lambda tag: tag is not None)
hex_tags = st.builds(
    lambda tag, lower: f"{tag:08x}" if lower else f"{tag:08X}", any_tags, st.booleans()
)
private_tags = st.integers(0, 0x7FFF).map(lambda n: f"{(n << 16) | 0x00091000:08X}")
junk_keys = st.text(max_size=12) | st.sampled_from(
    ["(0010,0010)", "0x00100010", "0010,0010", "patientname", "PatientName ", "\uff10\uff10100010"]
)
attribute_keys = st.one_of(keywords, hex_tags, private_tags, st.sampled_from(_GENERATED), junk_keys)
uids = st.sampled_from(["1.2.3", "1.2.840.10008.1", "9" * 65, "1..2", "a.b", ""]) | st.from_regex(
    r"[0-9.]{1,70}", fullmatch=True
)

scalars = st.one_of(
    st.none(),
    st.text(max_size=10).map(lambda text: MARKER + text),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


def _items(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(scalars, max_size=3),
        st.lists(st.dictionaries(attribute_keys, children, max_size=3), min_size=1, max_size=2),
        st.dictionaries(st.text(max_size=5), children, max_size=2),
    )


values = st.recursive(scalars, _items, max_leaves=12)
attributes = st.dictionaries(attribute_keys, values, max_size=4)
vr_maps = st.dictionaries(attribute_keys, st.sampled_from(VRS) | scalars, max_size=3)


def _optional(**members: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=members)


instances: st.SearchStrategy[dict[str, Any]] = st.just({}) | _optional(
    DICOM=attributes, DICOMVRs=vr_maps, Junk=scalars
)
series_bodies: st.SearchStrategy[dict[str, Any]] = st.just({}) | _optional(
    DICOM=attributes, Instances=st.dictionaries(uids, instances, max_size=2)
)
studies = _optional(DICOM=attributes, Series=st.dictionaries(uids, series_bodies, max_size=2))
documents = _optional(
    SchemaVersion=st.sampled_from([1.1, "1.1", 2]) | scalars,
    Patient=st.just({}) | _optional(DICOM=attributes),
    Study=studies,
    ImageSetID=scalars,
)


def _serialise(document: Any, how: str) -> bytes:
    text = json.dumps(document).encode()
    if how == "utf16":
        return json.dumps(document).encode("utf-16")
    return text[: len(text) // 2] if how == "truncated" else text


# Valid documents (tests/e2e/fuzz/documents.py) on a made-up image set: without them nearly every
# fuzzed request stops at validation and the decision is never reached.
_SAMPLE = sample_layout()
valid_document_pairs = plans().map(lambda plan: plan.on(_SAMPLE).documents())
"""(updatableAttributes, removableAttributes), either possibly None."""
valid_documents = valid_document_pairs.map(lambda pair: pair[0] or pair[1] or {})

blobs = st.one_of(
    st.builds(
        _serialise, documents, st.sampled_from(["json", "json", "json", "truncated", "utf16"])
    ),
    st.builds(lambda value: json.dumps(value).encode(), values),
    st.binary(max_size=64),
    *[valid_documents.map(lambda document: json.dumps(document).encode())] * 3,
)


def _mostly(valid: str, others: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`valid` about three times in four, so fuzzed requests also get past the ids."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), others)


datastore_ids = _mostly(
    DATASTORE_ID, st.sampled_from([OTHER_DATASTORE_ID, "", "X" * 32]) | st.text(max_size=40)
)
image_set_ids = _mostly("a" * 32, st.sampled_from(["0" * 32, "../" * 10]) | st.text(max_size=40))
_KEY_FORM = st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True)
idempotency_keys = _mostly("", st.one_of(_KEY_FORM, _KEY_FORM, _KEY_FORM, st.text(max_size=20)))
"""Mostly none, else mostly of the accepted form (1 to 128 of [A-Za-z0-9._:-]), or any text."""
versions = _mostly("1", st.sampled_from(["2", "0", "-1", "", "\u0661"]) | st.text(max_size=6))


@st.composite
def requests(draw: st.DrawFn, image_sets: st.SearchStrategy[str] | None = None) -> Any:
    """Any UpdateImageSetMetadataRequest: fields, union member and blobs all drawn.

    Half are well addressed (valid ids), so that it is their documents that are judged.
    """
    addressed = draw(st.booleans())
    ids = image_set_ids if image_sets is None else image_sets
    request = pb.UpdateImageSetMetadataRequest(
        datastore_id=DATASTORE_ID if addressed else draw(datastore_ids),
        image_set_id=draw(st.just("a" * 32) if addressed and image_sets is None else ids),
        latest_version_id="1" if addressed else draw(versions),
        force=draw(st.booleans()),
        include_study_image_sets=draw(st.booleans()),
        idempotency_key=draw(idempotency_keys),
    )
    member = draw(st.sampled_from(["dicom", "dicom", "dicom", "revert", "none"]))
    if member == "revert":
        request.revert_to_version_id = draw(versions)
    elif member == "dicom":
        request.dicom_updates.SetInParent()
        for name in ("updatable_attributes", "removable_attributes"):
            blob = draw(st.none() | blobs)
            if blob is not None:
                setattr(request.dicom_updates, name, blob)
    return request


@st.composite
def document_requests(draw: st.DrawFn) -> Any:
    """A well-addressed request whose only unknowns are its two attribute documents."""
    request = pb.UpdateImageSetMetadataRequest(
        datastore_id=DATASTORE_ID,
        image_set_id="a" * 32,
        latest_version_id="1",
        force=draw(st.booleans()),
    )
    if draw(st.booleans()):
        updatable, removable = draw(valid_document_pairs)
    else:
        updatable, removable = draw(documents), draw(st.none() | documents)
    for name, document in (("updatable", updatable), ("removable", removable)):
        if document is not None:
            setattr(request.dicom_updates, f"{name}_attributes", json.dumps(document).encode())
    return request


# --- credentials ---------------------------------------------------------------------------------

_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
header_values = st.text(_ASCII, max_size=60)


def _segment(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
token_headers = _optional(
    alg=st.sampled_from(["RS256", "ES256", "HS256", "none", "None", "RS512", ""]) | json_values,
    kid=st.sampled_from(["rsa-1", "ec-1", ""]) | json_values,
    typ=json_values,
)
forged_tokens = st.builds(
    lambda header, payload, signature: f"{_segment(header)}.{_segment(payload)}.{signature}",
    token_headers | json_values,
    json_values,
    st.text(st.sampled_from("abcXYZ019-_"), max_size=20),
)
metadata_pairs = st.lists(
    st.tuples(
        st.sampled_from(["authorization", "x-dev-principal", "x-other"]),
        header_values | forged_tokens.map(lambda token: f"Bearer {token}"),
    ),
    max_size=3,
)


# --- plausible documents, for the spelling property ----------------------------------------------

_LEVEL_KEYWORDS = {
    "patient": sorted(dicom.PATIENT_LEVEL_KEYWORDS),
    "study": sorted(dicom.STUDY_LEVEL_KEYWORDS),
    "series": sorted(dicom.SERIES_LEVEL_KEYWORDS),
    "instance": [k for k in _KEYWORDS if k not in dicom.GENERATED_KEYWORDS][:2000],
}
_HEX = re.compile(r"[0-9A-Fa-f]{8}")


def spell(keyword: str, how: str) -> str:
    tag = datadict.tag_for_keyword(keyword)
    if tag is None or how == "keyword":
        return keyword
    return f"{tag:08x}" if how == "lower" else f"{tag:08X}"


def _spelled(level: str) -> st.SearchStrategy[str]:
    return st.builds(
        spell,
        st.sampled_from(_LEVEL_KEYWORDS[level]),
        st.sampled_from(["keyword", "upper", "lower"]),
    )


plausible_values = st.one_of(
    st.none(),
    st.text(max_size=6).map(lambda text: MARKER + text),
    st.lists(st.text(max_size=4).map(lambda text: MARKER + text), min_size=1, max_size=2),
    st.lists(st.dictionaries(_spelled("instance"), st.none(), max_size=2), min_size=1, max_size=2),
)


def _level(level: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_spelled(level), plausible_values, min_size=1, max_size=3)


plausible_documents = valid_documents | _optional(
    Patient=st.builds(lambda a: {"DICOM": a}, _level("patient")),
    Study=_optional(
        DICOM=_level("study"),
        Series=st.dictionaries(
            st.sampled_from(["1.2.3", "1.2.4"]),
            _optional(
                DICOM=_level("series"),
                Instances=st.dictionaries(
                    st.sampled_from(["1.2.3.1", "1.2.3.2"]),
                    _optional(DICOM=_level("instance")),
                    max_size=2,
                ),
            ),
            max_size=2,
        ),
    ),
)


def respell_key(key: str) -> str:
    """Another spelling of the same attribute: keyword → lower hex → upper hex → keyword."""
    if not _HEX.fullmatch(key):
        tag = datadict.tag_for_keyword(key)
        return key if tag is None else f"{tag:08x}"
    if key != key.upper():
        return key.upper()
    tag = int(key, 16)
    keyword = datadict.keyword_for_tag(tag) if datadict.dictionary_has_tag(tag) else ""
    return keyword if keyword and datadict.tag_for_keyword(keyword) == tag else key.lower()


def respell(document: Any, attributes: bool = False) -> Any:
    """`document` with every attribute key (DICOM, DICOMVRs, sequence items) spelled otherwise."""
    if isinstance(document, list):
        return [respell(item, attributes=True) for item in document]
    if not isinstance(document, dict):
        return document
    return {
        (respell_key(key) if attributes else key): respell(
            value, attributes=key in _ATTRIBUTE_MAPS or attributes
        )
        for key, value in document.items()
    }


_ATTRIBUTE_MAPS = frozenset({"DICOM", "DICOMVRs"})


@st.composite
def plausible_updates(draw: st.DrawFn, image_sets: st.SearchStrategy[str]) -> Any:
    """Well-addressed updates with plausible documents: the ones that reach the backend."""
    request = pb.UpdateImageSetMetadataRequest(
        datastore_id=DATASTORE_ID,
        image_set_id=draw(image_sets),
        latest_version_id=draw(st.sampled_from(["1", "2", "3", "4"])),
        force=draw(st.booleans()),
    )
    blob = json.dumps(draw(plausible_documents)).encode()
    if draw(st.booleans()):
        request.dicom_updates.updatable_attributes = blob
    else:
        request.dicom_updates.removable_attributes = blob
    return request
