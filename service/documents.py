"""Attribute documents (updatableAttributes / removableAttributes) → classified changes.

Pure (no I/O). Walks one strict-JSON document, records every attribute it touches as an
AttributeChange with the standard's facts, and reports, as field violations naming keys (never
values), everything HealthImaging would refuse without looking at the image set: structure,
generated keys, levels, the force rules, VM and VR formats. Attributes nested in a sequence
are changes of their own (`within` names the enclosing top-level sequence), so policy sees them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal, TypeGuard

from service import dicom, jsondoc, values
from service.errors import FieldViolation
from service.jsondoc import Path

Action = Literal["update", "remove", "remove_series", "remove_instance"]

MAX_BLOB_BYTES: Final = 30_000  # DICOMAttribute max in the API model
MAX_VALUE_DEPTH: Final = 8  # sequences nested inside one attribute value
MAX_VIOLATIONS: Final = 100  # kept; more are only counted

_TOP_KEYS: Final = frozenset({"SchemaVersion", "Patient", "Study"})
_PATIENT_KEYS: Final = frozenset({"DICOM"})
_STUDY_KEYS: Final = frozenset({"DICOM", "Series"})
_SERIES_KEYS: Final = frozenset({"DICOM", "Instances"})
_INSTANCE_KEYS: Final = frozenset({"DICOM", "DICOMVRs"})  # DICOMVRs only at instance level
_ITEM_VRS: Final = frozenset({"SQ", "UN", ""})  # a list of objects needs a sequence (or unknown VR)
_SCHEMA_VERSIONS: Final = (1.1, "1.1")
_UID = re.compile(r"[0-9.]{1,64}")
_NONCONFORMING: Final = "nonconforming_value"  # HealthImaging takes it only with force


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
    vm: str = ""  # dictionary VM ("1", "1-n"); "" if unknown or not an attribute change
    retired: bool = False  # the dictionary marks the attribute retired
    profile: str = ""  # PS3.15 Table E.1-1 action ("X", "Z", "D", "U", "X/Z"...); "" = not listed
    within: str = ""  # tag of the top-level sequence this attribute is nested in; "" = top level
    value: object = field(default=None, repr=False, compare=False)  # patient data: never logged


class Violations:
    """Field violations of one request: the first MAX_VIOLATIONS kept, all counted."""

    def __init__(self) -> None:
        self.kept: list[FieldViolation] = []
        self.count = 0

    def add(self, field_path: str, description: str) -> None:
        self.count += 1
        if len(self.kept) < MAX_VIOLATIONS:
            self.kept.append(FieldViolation(field_path, description))


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


class DocumentReader:
    """Walks one attribute document, collecting its changes and what is wrong with it."""

    def __init__(
        self, prefix: str, action: Literal["update", "remove"], force: bool, violations: Violations
    ) -> None:
        self._prefix = prefix
        self._action: Literal["update", "remove"] = action
        self._force = force
        self._violations = violations
        self._changes: list[AttributeChange] = []

    def read(self, blob: bytes) -> list[AttributeChange]:
        if len(blob) > MAX_BLOB_BYTES:
            self._fail((), f"must not be larger than {MAX_BLOB_BYTES} bytes")
            return []
        try:
            document = jsondoc.load(blob)
        except jsondoc.JsonProblem as problem:
            self._fail(problem.path, problem.description)
            return []
        top = self._object(document, (), _TOP_KEYS)
        if top is not None:
            self._schema_version(top)
            if "Patient" in top:
                self._patient(top["Patient"], ("Patient",))
            if "Study" in top:
                self._study(top["Study"], ("Study",))
        return self._changes

    def _fail(self, path: Path, description: str) -> None:
        self._violations.add(jsondoc.field_path(self._prefix, path), description)

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

    def _schema_version(self, top: dict[str, object]) -> None:
        version = top.get("SchemaVersion")
        valid = not isinstance(version, bool) and version in _SCHEMA_VERSIONS
        if "SchemaVersion" in top and not valid:
            self._fail(("SchemaVersion",), 'must be 1.1 (the number or the string "1.1")')

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
        nested: dict[str, AttributeChange] = {}
        categories = set(attribute.categories) | ({"sequence"} if vr == "SQ" else set())
        if entry.in_dicom:
            self._value(entry.value, vr, entry.path, 0)
            self._nested(entry.value, vr, entry.path, 0, (place, attribute.tag, nested))
        problem = self._problem(entry, vr, place, categories)
        if problem:
            self._fail(entry.path, problem)
        self._changes.append(
            _fact(self._action, place, attribute, vr, categories, entry.value, within="")
        )
        self._changes.extend(nested.values())

    def _problem(
        self, entry: _Entry, vr: str, place: _Place, categories: set[str]
    ) -> str:  # fmt: skip
        """What HealthImaging refuses here, in its order; adds the value-derived categories."""
        attribute, name = entry.attribute, entry.attribute.keyword or entry.attribute.tag
        if not attribute.standard:
            return self._unlisted_problem(attribute, place)
        value_problem = self._value_problem(entry, vr, name, categories)
        level_problem = _level_problem(attribute, place)
        if level_problem or self._force:
            return level_problem
        if "uid" in categories:
            return f"changing {name} {values.FORCE_HINT}"
        if vr == "SQ":
            return f"{name} is a sequence (SQ); changing it {values.FORCE_HINT}"
        return value_problem

    def _unlisted_problem(self, attribute: dicom.Attribute, place: _Place) -> str:
        """Private and non-standard attributes: only an instance takes them, and only with force."""
        what = "a private attribute" if attribute.private else "an attribute not in the standard"
        if place.level != "instance":
            return f"{what} is only supported on an instance, even with force"
        return "" if self._force else f"changing {what} of an instance {values.FORCE_HINT}"

    def _value_problem(
        self, entry: _Entry, vr: str, name: str, categories: set[str]
    ) -> str:  # fmt: skip
        if vr == "SQ":
            return ""
        problem = values.multiplicity_problem(name, entry.attribute.vm, entry.value)
        if problem:
            categories.add("multi_valued")
        checked = self._action == "update" and entry.in_dicom
        format_problem = values.format_problem(name, vr, entry.value) if checked else ""
        if format_problem:
            categories.add(_NONCONFORMING)
        return problem or format_problem

    # --- values ---

    def _value(self, value: object, vr: str, path: Path, depth: int) -> None:
        """The shape of one attribute value: scalar, list of scalars, or items of a sequence."""
        if _is_scalar(value):
            return
        if isinstance(value, list):
            if value and all(isinstance(item, dict) for item in value):
                if vr not in _ITEM_VRS:
                    self._fail(path, f"a list of objects needs a sequence (SQ) attribute, not {vr}")
                elif depth >= MAX_VALUE_DEPTH:
                    self._fail(path, f"sequences nested deeper than {MAX_VALUE_DEPTH} levels")
                return
            for index, item in enumerate(value):
                if not _is_scalar(item):
                    self._fail((*path, index), "must be a string, number or null")
            return
        self._fail(path, "must be a string, number, null or a list (of objects only for SQ)")

    def _nested(
        self, value: object, vr: str, path: Path, depth: int,
        where: tuple[_Place, str, dict[str, AttributeChange]],
    ) -> None:  # fmt: skip
        """Attributes inside sequence items: checked, and recorded once per tag in `where`."""
        if vr not in _ITEM_VRS or depth >= MAX_VALUE_DEPTH or not _is_items(value):
            return
        place, within, found = where
        for index, item in enumerate(value):
            seen: set[str] = set()
            for key, inner in item.items():
                item_path = (*path, index, key)
                attribute = self._attribute(key, item_path)
                if attribute is None:
                    continue
                if attribute.tag in seen:
                    self._fail(item_path, f"attribute {attribute.tag} is given twice")
                seen.add(attribute.tag)
                self._value(inner, attribute.vr, item_path, depth + 1)
                self._nested(inner, attribute.vr, item_path, depth + 1, where)
                if attribute.tag not in found:
                    found[attribute.tag] = _fact(
                        self._action, place, attribute, attribute.vr,
                        set(attribute.categories), None, within,
                    )  # fmt: skip


def _fact(
    action: Literal["update", "remove"], place: _Place, attribute: dicom.Attribute, vr: str,
    categories: set[str], value: object, within: str,
) -> AttributeChange:  # fmt: skip
    """A change of `attribute`; nested ones (`within` set) need force with their sequence."""
    force = bool(within) or _NONCONFORMING in categories
    force = force or not dicom.FORCE_CATEGORIES.isdisjoint(categories)
    return AttributeChange(
        action=action,
        level=place.level,
        series_uid=place.series_uid,
        instance_uid=place.instance_uid,
        tag=attribute.tag,
        keyword=attribute.keyword,
        vr=vr,
        private=attribute.private,
        requires_force=force,
        categories=tuple(sorted(categories)),
        vm=attribute.vm,
        retired=attribute.retired,
        profile=attribute.profile,
        within=within,
        value=value,
    )


def _level_problem(attribute: dicom.Attribute, place: _Place) -> str:
    """HealthImaging keeps listed attributes at their level and everything else in instances."""
    home = attribute.home_level
    if home is not None and home != place.level:
        return f"{attribute.keyword} is a {home}-level attribute, not {place.level}"
    if home is None and place.level != "instance":
        return (
            f"{attribute.keyword or attribute.tag} is not a {place.level}-level attribute; "
            "attributes HealthImaging does not list for a level belong to an instance"
        )
    return ""


def _is_scalar(value: object) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _is_items(value: object) -> TypeGuard[list[dict[str, object]]]:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) for i in value)
