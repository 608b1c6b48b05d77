"""UpdateImageSetMetadata's rules over the metadata document: pure functions, no I/O.

`plan_update` checks what can be decided from the request alone (raises ValidationException);
`apply_changes` checks the request against the current document (raises UpdateFailed) and returns
the new document.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from pydicom.valuerep import VALIDATORS, VR

from emulator.dicom_levels import (
    FORCE_UID_KEYWORDS,
    GENERATED_KEYS,
    Level,
    canonical_key,
    is_multi_valued,
    level_of,
    parse_key,
    standard_vr,
)
from emulator.exceptions import ValidationException

Document = dict[str, Any]
_SCHEMA_VERSIONS = (1.1, "1.1")
_VALID_VRS = frozenset(vr.value for vr in VR if len(vr.value) == 2)
_INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_INT_RANGE = (-(2**63), 2**64 - 1)  # JSON integers HealthImaging stores (SV min .. UV max)


class Action(StrEnum):
    UPDATE = "update"
    REMOVE = "remove"
    REMOVE_SERIES = "remove_series"
    REMOVE_INSTANCE = "remove_instance"


@dataclass(frozen=True)
class MetadataUpdate:
    """An UpdateImageSetMetadata request, as the backend receives it."""

    latest_version_id: str
    updatable: bytes | None = None
    removable: bytes | None = None
    revert_to_version_id: str | None = None
    force: bool = False
    include_study_image_sets: bool = False


@dataclass(frozen=True)
class Change:
    """One touched attribute (or a whole series/instance), as the document names it."""

    action: Action
    level: Level
    key: str = ""
    value: Any = None
    vr: str | None = None
    series_uid: str = ""
    instance_uid: str = ""


class UpdateFailed(Exception):
    """The request cannot be applied to this image set's current metadata."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------- planning (request only)


def decode_blob(blob: bytes, name: str, *, lenient_base64: bool = True) -> Document:
    """The attribute blob's JSON object.

    `lenient_base64` also accepts a blob that is itself base64 text of the JSON: what AWS CLI v1
    sends for the base64 example of its own documentation page (it encodes the string again).
    """
    try:
        doc = _json_object(blob)
    except ValueError:
        if not lenient_base64:
            raise ValidationException(f"{name} is not valid JSON") from None
        doc = _json_object_in_base64(blob, name)
    if not isinstance(doc, dict):
        raise ValidationException(f"{name} must be a JSON object")
    return doc


def _json_object(blob: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing numbers, no lone surrogates (ValueError)."""
    text = blob.decode("utf-8")
    doc = json.loads(
        text,
        object_pairs_hook=_no_duplicates,
        parse_constant=_refuse_constant,
        parse_float=_finite,
        parse_int=_int64,
    )
    if "\\u" in text:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError on a surrogate
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("a number overflows a 64-bit float")
    return number


def _int64(text: str) -> int:
    number = int(text) if len(text) <= 21 else _INT_RANGE[1] + 1
    if not _INT_RANGE[0] <= number <= _INT_RANGE[1]:
        raise ValueError("an integer does not fit in 64 bits")
    return number


def _json_object_in_base64(blob: bytes, name: str) -> Any:
    try:
        return _json_object(base64.b64decode(blob, validate=True))
    except (ValueError, binascii.Error):
        raise ValidationException(f"{name} is not valid JSON") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def plan_update(
    updatable: Document | None, removable: Document | None, *, force: bool, is_primary: bool
) -> list[Change]:
    """Both blobs → the list of changes; refuses what no document could make valid."""
    changes = [
        *_walk_blob(removable or {}, removing=True),
        *_walk_blob(updatable or {}, removing=False),
    ]
    for change in changes:
        if change.action in (Action.UPDATE, Action.REMOVE):
            _check_attribute(change, force=force, is_primary=is_primary)
    return changes


def _walk_blob(doc: Document, *, removing: bool) -> Iterator[Change]:
    _only_keys(doc, {"SchemaVersion", "Patient", "Study"}, "the document")
    if "SchemaVersion" in doc and doc["SchemaVersion"] not in _SCHEMA_VERSIONS:
        raise ValidationException("SchemaVersion must be 1.1")
    action = Action.REMOVE if removing else Action.UPDATE
    patient = _object(doc.get("Patient", {}), "Patient")
    _only_keys(patient, {"DICOM"}, "Patient")
    yield from _attributes(patient, action, Level.PATIENT)
    study = _object(doc.get("Study", {}), "Study")
    _only_keys(study, {"DICOM", "Series"}, "Study")
    yield from _attributes(study, action, Level.STUDY)
    for series_uid, series in _object(study.get("Series", {}), "Series").items():
        yield from _walk_series(series_uid, _object(series, "a series"), removing=removing)


def _walk_series(series_uid: str, series: Document, *, removing: bool) -> Iterator[Change]:
    if removing and not series:
        yield Change(Action.REMOVE_SERIES, Level.SERIES, series_uid=series_uid)
        return
    _only_keys(series, {"DICOM", "Instances"}, "a series")
    action = Action.REMOVE if removing else Action.UPDATE
    yield from _attributes(series, action, Level.SERIES, series_uid=series_uid)
    for sop_uid, instance in _object(series.get("Instances", {}), "Instances").items():
        instance = _object(instance, "an instance")
        if removing and not instance:
            yield Change(
                Action.REMOVE_INSTANCE, Level.INSTANCE, series_uid=series_uid, instance_uid=sop_uid
            )
            continue
        _only_keys(instance, {"DICOM", "DICOMVRs"}, "an instance")
        yield from _attributes(
            instance, action, Level.INSTANCE, series_uid=series_uid, instance_uid=sop_uid
        )


def _attributes(
    node: Document, action: Action, level: Level, *, series_uid: str = "", instance_uid: str = ""
) -> Iterator[Change]:
    vrs = _object(node.get("DICOMVRs", {}), "DICOMVRs")
    attributes = _object(node.get("DICOM", {}), "DICOM")
    for name in vrs:
        if name not in attributes:
            raise ValidationException(f"DICOMVRs names {name}, which is not in DICOM")
    for name, value in attributes.items():
        tag = parse_key(name)
        key = name if tag is None else canonical_key(tag)
        yield Change(action, level, key, value, vrs.get(name), series_uid, instance_uid)


def _only_keys(node: Document, allowed: set[str], where: str) -> None:
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise ValidationException(f"unexpected key in {where}: {unknown[0]}")


def _object(value: Any, where: str) -> Document:
    if not isinstance(value, dict):
        raise ValidationException(f"{where} must be a JSON object")
    return value


def _check_attribute(change: Change, *, force: bool, is_primary: bool) -> None:
    """The documented metadata constraints for one attribute."""
    key = change.key
    if key in GENERATED_KEYS:
        raise ValidationException(f"{key} is generated by HealthImaging and cannot be changed")
    tag = parse_key(key)
    if tag is None or (not tag.is_private and standard_vr(tag) is None):
        if change.level is not Level.INSTANCE:
            raise ValidationException(f"{key} is not a {change.level} level attribute")
        _need_force(force, f"{key} is not a standard DICOM attribute")
        return
    if tag.is_private:
        _check_private(change, force=force)
        return
    if change.vr is not None:
        raise ValidationException(f"DICOMVRs is only accepted for private attributes, not {key}")
    if level_of(key) is not change.level:
        raise ValidationException(f"{key} belongs to the {level_of(key)} level, not {change.level}")
    if is_primary and change.level in (Level.PATIENT, Level.SERIES):
        raise ValidationException(
            f"{change.level} level attributes cannot be updated on a primary image set"
        )
    if key in FORCE_UID_KEYWORDS:
        if is_primary:
            raise ValidationException(f"{key} cannot be changed on a primary image set")
        _need_force(force, f"changing {key} requires force")
    _check_value(change, force=force)


def _check_private(change: Change, *, force: bool) -> None:
    if change.level is not Level.INSTANCE:
        raise ValidationException(
            f"private attribute {change.key} is only supported on an instance"
        )
    if change.vr is not None and change.vr not in _VALID_VRS:
        raise ValidationException(f"DICOMVRs for {change.key} is not a DICOM VR")
    _need_force(force, f"private attribute {change.key} requires force")


def _check_value(change: Change, *, force: bool) -> None:
    tag = parse_key(change.key)
    assert tag is not None
    vr = standard_vr(tag) or "UN"
    if vr == "SQ":
        _need_force(force, f"sequence {change.key} requires force")
    elif isinstance(change.value, list) or is_multi_valued(tag):
        _need_force(force, f"multi-valued {change.key} requires force")
    elif change.action is Action.UPDATE and not _fits_vr(vr, change.value):
        _need_force(force, f"the value of {change.key} does not fit its VR {vr}")


def _fits_vr(vr: str, value: Any) -> bool:
    """pydicom's validators over the JSON types HealthImaging stores ("US or SS": either)."""
    return any(_fits_one(option, value) for option in vr.split(" or "))


def _fits_one(vr: str, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if vr in _FLOAT_VRS:
        return isinstance(value, int | float)
    if not isinstance(value, int if vr in _INTEGER_VRS else str):
        return False  # binary numbers are JSON numbers; every other VR is a string
    validator = cast("Callable[[str, Any], tuple[bool, str]] | None", VALIDATORS.get(vr))
    if validator is None or vr.startswith("O"):  # OB/OW/...: base64 text
        return True
    valid, _ = validator(vr, value)  # the message quotes the value: unused
    return bool(valid)


def _need_force(force: bool, message: str) -> None:
    if not force:
        raise ValidationException(message)


# ---------------------------------------------------------------- applying (against a document)


def apply_changes(document: Document, changes: list[Change], *, strict: bool = True) -> Document:
    """A new document with the changes applied; `strict=False` skips series/instances it lacks."""
    doc = copy.deepcopy(document)
    for change in changes:
        _apply(doc, change, strict=strict)
    _rekey_and_prune(doc)
    if not doc["Study"]["Series"]:
        raise UpdateFailed("INVALID_REQUEST: an image set must keep at least one instance")
    return doc


def _apply(doc: Document, change: Change, *, strict: bool) -> None:
    if change.action is Action.REMOVE_SERIES:
        _series(doc, change.series_uid)
        del doc["Study"]["Series"][change.series_uid]
        return
    if change.action is Action.REMOVE_INSTANCE:
        _instance(doc, change)
        del doc["Study"]["Series"][change.series_uid]["Instances"][change.instance_uid]
        return
    try:
        node = _node(doc, change)
    except UpdateFailed:
        if strict:
            raise
        return
    if change.action is Action.REMOVE:
        _remove(node, change)
    else:
        _update(node, change)


def _node(doc: Document, change: Change) -> Document:
    if change.level is Level.PATIENT:
        patient: Document = doc["Patient"]
        return patient
    if change.level is Level.STUDY:
        study: Document = doc["Study"]
        return study
    if change.level is Level.SERIES:
        return _series(doc, change.series_uid)
    return _instance(doc, change)


def _series(doc: Document, series_uid: str) -> Document:
    series = doc["Study"]["Series"].get(series_uid)
    if series is None:
        raise UpdateFailed("INVALID_REQUEST: the series does not exist in the image set")
    found: Document = series
    return found


def _instance(doc: Document, change: Change) -> Document:
    instance = _series(doc, change.series_uid)["Instances"].get(change.instance_uid)
    if instance is None:
        raise UpdateFailed("INVALID_REQUEST: the instance does not exist in the image set")
    found: Document = instance
    return found


def _remove(node: Document, change: Change) -> None:
    attributes = node.setdefault("DICOM", {})
    if change.key not in attributes:
        raise UpdateFailed(f"INVALID_REQUEST: {change.key} is not present and cannot be removed")
    if attributes[change.key] != change.value:
        raise UpdateFailed(f"INVALID_REQUEST: the value given for {change.key} does not match")
    del attributes[change.key]
    vrs = node.get("DICOMVRs", {})
    vrs.pop(change.key, None)
    if "DICOMVRs" in node and not vrs:
        del node["DICOMVRs"]


def _update(node: Document, change: Change) -> None:
    attributes = node.setdefault("DICOM", {})
    tag = parse_key(change.key)
    is_private = tag is not None and tag.is_private
    if is_private and change.key not in attributes and change.vr is None:
        raise UpdateFailed(f"INVALID_REQUEST: adding private attribute {change.key} needs DICOMVRs")
    attributes[change.key] = change.value
    if is_private and change.vr is not None:
        node.setdefault("DICOMVRs", {})[change.key] = change.vr


def _rekey_and_prune(doc: Document) -> None:
    """Re-key series/instances whose UID changed, then drop series left without instances."""
    series_map: dict[str, Any] = doc["Study"]["Series"]
    for old_uid, series in list(series_map.items()):
        instances: dict[str, Any] = series.get("Instances", {})
        for sop, instance in list(instances.items()):
            new_sop = instance.get("DICOM", {}).get("SOPInstanceUID")
            if isinstance(new_sop, str) and new_sop and new_sop != sop:
                instances[new_sop] = instances.pop(sop)
        if not instances:
            del series_map[old_uid]
            continue
        new_uid = series.get("DICOM", {}).get("SeriesInstanceUID")
        if isinstance(new_uid, str) and new_uid and new_uid != old_uid:
            series_map[new_uid] = series_map.pop(old_uid)
