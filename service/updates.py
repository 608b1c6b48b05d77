"""Update model: an UpdateImageSetMetadata request → a validated UpdatePlan, attributes classified.

Pure functions over bytes and dataclasses (no I/O, no protobufs). Anything ambiguous is refused
with InvalidArgument before the policy sees it; field paths name keys, never values. Map keys
that are not plain identifiers are written in brackets: `Study.Series["1.2.3"].DICOM["00100010"]`.

Sequence items (SQ values) are checked like top-level attributes, and the categories "private",
"patient_identity" and "non_standard" of attributes nested inside a sequence are added to the
sequence's own change, so nesting cannot hide a private tag or an identity attribute from policy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from service import dicom
from service.errors import FieldViolation, InvalidArgument

Action = Literal["update", "remove", "remove_series", "remove_instance"]
Kind = Literal["dicom_updates", "revert"]
Path = tuple[str | int, ...]

MAX_BLOB_BYTES: Final = 30_000  # DICOMAttribute max in the API model
MAX_VALUE_DEPTH: Final = 8  # sequences nested inside one attribute value
MAX_VIOLATIONS: Final = 50  # enough to fix a document; bounds the error response

DICOM_UPDATES: Final = "updates.dicom_updates"
_NESTED_CATEGORIES: Final = frozenset({"private", "patient_identity", "non_standard"})
_TOP_KEYS: Final = frozenset({"SchemaVersion", "Patient", "Study"})
_PATIENT_KEYS: Final = frozenset({"DICOM"})
_STUDY_KEYS: Final = frozenset({"DICOM", "Series"})
_SERIES_KEYS: Final = frozenset({"DICOM", "Instances"})
_INSTANCE_KEYS: Final = frozenset({"DICOM", "DICOMVRs"})  # DICOMVRs only at instance level
_ITEM_VRS: Final = frozenset({"SQ", "UN", ""})  # a list of objects needs a sequence (or unknown VR)

_DATASTORE_OR_IMAGE_SET = re.compile(r"[0-9a-z]{32}")
_VERSION = re.compile(r"[0-9]+")  # the API's \d+, ASCII only
_UID = re.compile(r"[0-9.]{1,64}")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWABLE_KEY = re.compile(r"[A-Za-z0-9._,() -]{1,64}")


@dataclass(frozen=True)
class UpdateRequest:
    """The gRPC request without protobufs, built by the server."""

    datastore_id: str
    image_set_id: str
    latest_version_id: str
    force: bool
    include_study_image_sets: bool
    updatable_attributes: bytes | None  # None = not given; b"" is given and empty (invalid)
    removable_attributes: bytes | None
    revert_to_version_id: str | None
    kind: Kind | None  # which union member was set; None = neither
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class AttributeChange:
    """One touched attribute (or one removed series/instance), classified."""

    action: Action
    level: dicom.Level
    series_uid: str  # "" when not at series/instance level
    instance_uid: str  # "" when not at instance level
    tag: str  # 8 upper-case hex digits; "" for remove_series/remove_instance
    keyword: str  # "" for private/unknown tags
    vr: str  # dictionary VR, DICOMVRs for private tags, "" if unknown
    private: bool  # odd group
    requires_force: bool  # HealthImaging refuses it without force
    categories: tuple[str, ...]  # sorted
    value: object = field(default=None, repr=False, compare=False)  # patient data: never logged


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """A validated update: what is forwarded to HealthImaging and what policy judges."""

    datastore_id: str
    image_set_id: str
    latest_version_id: str
    force: bool
    include_study_image_sets: bool
    kind: Kind
    revert_to_version_id: str  # "" unless kind == "revert"
    changes: tuple[AttributeChange, ...]
    # The very bytes that were classified, forwarded as they are; patient data, so not in repr.
    updatable_attributes: bytes | None = field(repr=False)
    removable_attributes: bytes | None = field(repr=False)
    idempotency_key: str

    def summary(self) -> dict[str, object]:
        """Counts and sets for policy and logs (JSON-able, no values)."""
        changes = self.changes
        categories = sorted({c for change in changes for c in change.categories})
        return {
            "change_count": len(changes),
            "categories": categories,
            "actions": sorted({change.action for change in changes}),
            "levels": sorted({change.level for change in changes}),
            "private": "private" in categories,
            "requires_force": any(change.requires_force for change in changes),
            "removed_series": sum(change.action == "remove_series" for change in changes),
            "removed_instances": sum(change.action == "remove_instance" for change in changes),
        }

    def touched_tags(self) -> tuple[str, ...]:
        """Sorted unique "level:TAG" strings for the audit log (removals: "level:action")."""
        return tuple(sorted({f"{c.level}:{c.tag or c.action}" for c in self.changes}))


def normalise(request: UpdateRequest) -> UpdatePlan:
    """Validate and classify a request; raises InvalidArgument listing what is wrong."""
    violations: list[FieldViolation] = []
    _check_ids(request, violations)
    kind = _check_kind(request, violations)
    changes: list[AttributeChange] = []
    if kind == "dicom_updates":
        blobs: tuple[tuple[str, bytes | None, Literal["update", "remove"]], ...] = (
            ("updatable_attributes", request.updatable_attributes, "update"),
            ("removable_attributes", request.removable_attributes, "remove"),
        )
        for name, blob, action in blobs:
            if blob is not None:
                reader = _Reader(f"{DICOM_UPDATES}.{name}", action, request.force, violations)
                changes.extend(reader.read(blob))
    if violations or kind is None:
        raise InvalidArgument(violations[:MAX_VIOLATIONS])
    return UpdatePlan(
        datastore_id=request.datastore_id,
        image_set_id=request.image_set_id,
        latest_version_id=request.latest_version_id,
        force=request.force,
        include_study_image_sets=request.include_study_image_sets,
        kind=kind,
        revert_to_version_id=(request.revert_to_version_id or "") if kind == "revert" else "",
        changes=tuple(changes),
        updatable_attributes=request.updatable_attributes if kind == "dicom_updates" else None,
        removable_attributes=request.removable_attributes if kind == "dicom_updates" else None,
        idempotency_key=request.idempotency_key,
    )


# --- the request ---------------------------------------------------------------------------------


def _check_ids(request: UpdateRequest, violations: list[FieldViolation]) -> None:
    for name, value in (
        ("datastore_id", request.datastore_id),
        ("image_set_id", request.image_set_id),
    ):
        if not _DATASTORE_OR_IMAGE_SET.fullmatch(value):
            violations.append(FieldViolation(name, "must be 32 lower-case letters or digits"))
    if not _VERSION.fullmatch(request.latest_version_id):
        violations.append(FieldViolation("latest_version_id", "must be a version number (digits)"))


def _check_kind(request: UpdateRequest, violations: list[FieldViolation]) -> Kind | None:
    dicom_given = (
        request.updatable_attributes is not None or request.removable_attributes is not None
    )
    revert_given = request.revert_to_version_id is not None
    kind = request.kind if request.kind in ("dicom_updates", "revert") else None
    if kind is None or (dicom_given and revert_given):
        violations.append(
            FieldViolation("updates", "set exactly one of dicom_updates or revert_to_version_id")
        )
        return None
    if kind == "dicom_updates" and not dicom_given:
        violations.append(
            FieldViolation(DICOM_UPDATES, "set updatable_attributes, removable_attributes or both")
        )
    if kind == "revert":
        if not _VERSION.fullmatch(request.revert_to_version_id or ""):
            violations.append(
                FieldViolation("updates.revert_to_version_id", "must be a version number (digits)")
            )
        if request.include_study_image_sets:
            violations.append(
                FieldViolation(
                    "include_study_image_sets", "not supported with revert_to_version_id"
                )
            )
    return kind


# --- the attribute documents ---------------------------------------------------------------------


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__("duplicate key")
        self.key = key


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _load(blob: bytes) -> object:
    """Strict JSON: UTF-8, bounded size, no duplicate keys, no NaN/Infinity; raises ValueError."""
    if not blob:
        raise ValueError("must not be empty")
    if len(blob) > MAX_BLOB_BYTES:
        raise ValueError(f"must not be larger than {MAX_BLOB_BYTES} bytes")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("must be UTF-8 encoded JSON") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise ValueError(f"duplicate JSON key {_shown(exc.key)}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError:
        raise ValueError("must be valid JSON") from None


@dataclass(frozen=True, slots=True)
class _Place:
    level: dicom.Level
    series_uid: str = ""
    instance_uid: str = ""


@dataclass(slots=True)
class _Entry:
    """One attribute of a DICOM/DICOMVRs pair, merged by canonical tag."""

    attribute: dicom.Attribute
    path: Path
    value: object = None
    vr: str = ""  # from DICOMVRs
    in_dicom: bool = False
    in_vrs: bool = False


class _Reader:
    """Walks one attribute document, collecting its changes and what is wrong with it."""

    def __init__(
        self, prefix: str, action: Literal["update", "remove"], force: bool,
        violations: list[FieldViolation],
    ) -> None:  # fmt: skip
        self._prefix = prefix
        self._action: Literal["update", "remove"] = action
        self._force = force
        self._violations = violations
        self._changes: list[AttributeChange] = []

    def read(self, blob: bytes) -> list[AttributeChange]:
        try:
            document = _load(blob)
        except ValueError as exc:
            self._fail((), str(exc))
            return []
        top = self._object(document, (), _TOP_KEYS)
        if top is not None:
            self._schema_version(top, ("SchemaVersion",))
            if "Patient" in top:
                self._patient(top["Patient"], ("Patient",))
            if "Study" in top:
                self._study(top["Study"], ("Study",))
        return self._changes

    def _fail(self, path: Path, description: str) -> None:
        if len(self._violations) < MAX_VIOLATIONS:
            self._violations.append(FieldViolation(_field(self._prefix, path), description))

    # --- structure ---

    def _object(
        self, value: object, path: Path, allowed: frozenset[str]
    ) -> dict[str, object] | None:
        """A JSON object; keys outside `allowed` are reported (the rest is still read)."""
        if not isinstance(value, dict):
            self._fail(path, "must be a JSON object")
            return None
        for key in value:
            if key not in allowed:
                self._unknown_key(key, (*path, key), allowed)
        return value

    def _unknown_key(self, key: str, path: Path, allowed: frozenset[str]) -> None:
        if key in dicom.GENERATED_NAMES:
            self._fail(path, "generated by HealthImaging; never updatable")
        else:
            self._fail(path, "unknown key here; expected " + " or ".join(sorted(allowed)))

    def _schema_version(self, top: dict[str, object], path: Path) -> None:
        version = top.get("SchemaVersion")
        if "SchemaVersion" in top and (
            isinstance(version, bool) or not isinstance(version, int | float | str)
        ):
            self._fail(path, "must be a number or a string, e.g. 1.1")

    def _patient(self, value: object, path: Path) -> None:
        patient = self._object(value, path, _PATIENT_KEYS)
        if patient is not None and "DICOM" in patient:
            self._attributes(patient, path, _Place("patient"))

    def _study(self, value: object, path: Path) -> None:
        study = self._object(value, path, _STUDY_KEYS)
        if study is None:
            return
        if "DICOM" in study:
            self._attributes(study, path, _Place("study"))
        if "Series" in study:
            series_map = self._uid_map(study["Series"], (*path, "Series"), "series")
            for uid, body in series_map.items():
                self._series(uid, body, (*path, "Series", uid))

    def _uid_map(self, value: object, path: Path, what: str) -> dict[str, object]:
        if not isinstance(value, dict):
            self._fail(path, f"must be a JSON object keyed by {what} UID")
            return {}
        for uid in value:
            if not _UID.fullmatch(uid):
                self._fail((*path, uid), f"{what} UID must be 1 to 64 digits and dots")
        return value

    def _series(self, uid: str, value: object, path: Path) -> None:
        if value == {}:
            self._remove_whole(_Place("series", uid), "remove_series")
            return
        series = self._object(value, path, _SERIES_KEYS)
        if series is None:
            return
        if "DICOM" in series:
            self._attributes(series, path, _Place("series", uid))
        if "Instances" in series:
            instances = self._uid_map(series["Instances"], (*path, "Instances"), "SOP instance")
            for sop_uid, body in instances.items():
                self._instance(
                    _Place("instance", uid, sop_uid), body, (*path, "Instances", sop_uid)
                )

    def _instance(self, place: _Place, value: object, path: Path) -> None:
        if value == {}:
            self._remove_whole(place, "remove_instance")
            return
        instance = self._object(value, path, _INSTANCE_KEYS)
        if instance is not None:
            self._attributes(instance, path, place)

    def _remove_whole(
        self, place: _Place, action: Literal["remove_series", "remove_instance"]
    ) -> None:
        # An empty object removes the series/instance only in removableAttributes; elsewhere it
        # changes nothing.
        if self._action == "remove":
            self._changes.append(
                AttributeChange(
                    action, place.level, place.series_uid, place.instance_uid,
                    tag="", keyword="", vr="", private=False, requires_force=False, categories=(),
                )
            )  # fmt: skip

    # --- attributes ---

    def _attributes(self, body: dict[str, object], path: Path, place: _Place) -> None:
        """The DICOM (and, for an instance, DICOMVRs) members of one level, merged by tag."""
        entries: dict[str, _Entry] = {}
        if "DICOM" in body:
            self._dicom_members(body["DICOM"], (*path, "DICOM"), entries)
        if "DICOMVRs" in body:
            self._vr_members(body["DICOMVRs"], (*path, "DICOMVRs"), entries)
        for entry in entries.values():
            self._change(entry, place)

    def _dicom_members(self, value: object, path: Path, entries: dict[str, _Entry]) -> None:
        if not isinstance(value, dict):
            self._fail(path, "must be a JSON object of DICOM attributes")
            return
        for key, item in value.items():
            attribute = self._top_attribute(key, (*path, key))
            if attribute is None:
                continue
            if attribute.tag in entries:
                self._fail((*path, key), f"attribute {attribute.tag} is given twice")
                continue
            entries[attribute.tag] = _Entry(attribute, (*path, key), item, in_dicom=True)

    def _vr_members(self, value: object, path: Path, entries: dict[str, _Entry]) -> None:
        if not isinstance(value, dict):
            self._fail(path, "must be a JSON object mapping attributes to VRs")
            return
        for key, vr in value.items():
            attribute = self._top_attribute(key, (*path, key))
            if attribute is None or not self._valid_vr(attribute, vr, (*path, key)):
                continue
            entry = entries.setdefault(attribute.tag, _Entry(attribute, (*path, key)))
            if entry.in_vrs:
                self._fail((*path, key), f"attribute {attribute.tag} is given twice")
            entry.in_vrs, entry.vr = True, str(vr)

    def _valid_vr(self, attribute: dicom.Attribute, vr: object, path: Path) -> bool:
        if not isinstance(vr, str) or vr not in dicom.VRS:
            self._fail(path, "must be a two-letter DICOM VR, e.g. LO")
            return False
        options = attribute.vr_options()
        if options and vr not in options:
            self._fail(path, f"conflicts with the data dictionary VR {attribute.vr}")
            return False
        return True

    def _top_attribute(self, key: str, path: Path) -> dicom.Attribute | None:
        if key in dicom.GENERATED_NAMES:
            self._fail(path, "generated by HealthImaging; never updatable")
            return None
        attribute = self._attribute(key, path)
        if attribute is not None and attribute.generated:
            self._fail(path, "generated by HealthImaging; never updatable")
            return None
        return attribute

    def _attribute(self, key: str, path: Path) -> dicom.Attribute | None:
        try:
            return dicom.resolve_key(key)
        except dicom.KeyProblem as exc:
            self._fail(path, str(exc))
            return None

    def _change(self, entry: _Entry, place: _Place) -> None:
        attribute = entry.attribute
        vr = entry.vr if entry.vr and (not attribute.standard or " or " in attribute.vr) else ""
        vr = vr or attribute.vr
        categories = set(attribute.categories)
        if vr == "SQ":
            categories.add("sequence")
        if entry.in_dicom:
            categories |= self._value(entry.value, vr, entry.path, 0)
        self._check_placement(attribute, place, entry.path)
        self._changes.append(
            AttributeChange(
                action=self._action,
                level=place.level,
                series_uid=place.series_uid,
                instance_uid=place.instance_uid,
                tag=attribute.tag,
                keyword=attribute.keyword,
                vr=vr,
                private=attribute.private,
                requires_force=not dicom.FORCE_CATEGORIES.isdisjoint(categories),
                categories=tuple(sorted(categories)),
                value=entry.value,
            )
        )

    def _check_placement(self, attribute: dicom.Attribute, place: _Place, path: Path) -> None:
        """Wrong level, and the force rules HealthImaging applies up front."""
        home = attribute.home_level
        if home is not None and home != place.level:
            self._fail(path, f"{attribute.keyword} is a {home}-level attribute, not {place.level}")
        if self._force:
            return
        if "uid" in attribute.categories:
            self._fail(path, f"changing {attribute.keyword} requires force")
        elif attribute.private and place.level == "instance":
            self._fail(path, "changing a private attribute of an instance requires force")

    # --- values ---

    def _value(self, value: object, vr: str, path: Path, depth: int) -> set[str]:
        """Check one attribute value; returns the categories it adds (never inspects content)."""
        if _is_scalar(value):
            return set()
        if isinstance(value, list):
            if value and all(isinstance(item, dict) for item in value):
                return self._items(value, vr, path, depth)
            for index, item in enumerate(value):
                if not _is_scalar(item):
                    self._fail((*path, index), "must be a string, number or null")
            return {"multi_valued"} if len(value) > 1 else set()
        self._fail(path, "must be a string, number, null or a list (of objects only for SQ)")
        return set()

    def _items(self, items: list[object], vr: str, path: Path, depth: int) -> set[str]:
        if vr not in _ITEM_VRS:
            self._fail(path, f"a list of objects needs a sequence (SQ) attribute, not {vr}")
            return set()
        if depth >= MAX_VALUE_DEPTH:
            self._fail(path, f"sequences nested deeper than {MAX_VALUE_DEPTH} levels")
            return set()
        found: set[str] = set()
        for index, item in enumerate(items):
            seen: set[str] = set()
            for key, value in item.items() if isinstance(item, dict) else ():
                item_path = (*path, index, key)
                attribute = self._attribute(key, item_path)
                if attribute is None:
                    continue
                if attribute.tag in seen:
                    self._fail(item_path, f"attribute {attribute.tag} is given twice")
                seen.add(attribute.tag)
                found |= attribute.categories & _NESTED_CATEGORIES
                found |= self._value(value, attribute.vr, item_path, depth + 1) & _NESTED_CATEGORIES
        return found


def _is_scalar(value: object) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _shown(key: str) -> str:
    """A key as it may appear in an error: printable identifiers only."""
    return f'"{key}"' if _SHOWABLE_KEY.fullmatch(key) else "(unprintable key)"


def _field(prefix: str, path: Path) -> str:
    parts = [prefix]
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _PLAIN_KEY.fullmatch(part):
            parts.append(f".{part}")
        else:
            parts.append(f"[{_shown(part)}]")
    return "".join(parts)
