"""Mostly valid update documents for one real image set: its UIDs, the dictionary, good values.

Each attribute is placed at the level HealthImaging keeps it (service/normaliser/dicom.py's lists),
spelled as
keyword or upper/lower hex, with a value valid for its VR (checked by pydicom's own validators) and
its VM. Sequences, multiple values, UIDs and private tags appear too (they need `force`), as do
removals of present attributes (with their current values) and of whole series or instances.
"""

from __future__ import annotations

import json
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import strategies as st
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from pydicom import datadict
from pydicom._dicom_dict import DicomDictionary  # what datadict itself reads

from service.normaliser import dicom
from tests.e2e.fuzz.dicom_values import (
    IDENTIFIERS,
    POOLS,
    VALUES,
    Document,
    single_value,
    spelled,
    spellings,
)


@dataclass(frozen=True)
class Layout:
    """An image set as the backend returns it: the latest version and its metadata document."""

    image_set_id: str
    version: str
    document: Document

    @property
    def series(self) -> dict[str, list[str]]:
        """Series UID → its SOP instance UIDs."""
        found = self.document["Study"].get("Series", {})
        return {uid: list(body.get("Instances", {})) for uid, body in found.items()}

    def node(self, where: tuple[str, ...]) -> Document:
        """The node at `where` (a `Path`); {} when absent."""
        node: Any = self.document
        for key in where:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}


def sample_layout(image_set_id: str = "a" * 32) -> Layout:
    """A made-up image set shaped like the seeded ones (two series: two instances and one), for
    requests that are only evaluated."""
    instance = {"DICOM": {"ImageComments": "x", "00190010": "GEMS_ACQU_01", "00191002": 912}}
    series = {
        "1.2.826.0.1.3680043.8.498.1": {
            "DICOM": {"Modality": "CT", "SeriesDescription": "A"},
            "Instances": {
                "1.2.826.0.1.3680043.8.498.1.1": instance,
                "1.2.826.0.1.3680043.8.498.1.2": instance,
            },
        },
        "1.2.826.0.1.3680043.8.498.2": {
            "DICOM": {"Modality": "CT"},
            "Instances": {"1.2.826.0.1.3680043.8.498.2.1": instance},
        },
    }
    document = {
        "Patient": {"DICOM": {"PatientName": "A^B", "PatientSex": "O"}},
        "Study": {"DICOM": {"StudyDescription": "S", "StudyDate": "20040119"}, "Series": series},
    }
    return Layout(image_set_id, "1", document)


# --- edits and cases -----------------------------------------------------------------------------

Path = tuple[str, ...]
"""A node of the document: ("Patient",), ("Study",), ("Study", "Series", uid), or an instance's
("Study", "Series", uid, "Instances", sop)."""

KINDS = [
    *["plain"] * 14,
    *["multi", "sequence", "uid", "identifier", "private", "private"],
    *["remove", "remove", "remove", "remove_node"],
    *["careless"],
]
"""Edit kinds, weighted: mostly plain attributes that need no force."""

PRINCIPALS = [
    *["demo-admin"] * 4,
    *["demo-editor"] * 3,
    *["demo-patient"] * 2,
    *["demo-private", "demo-viewer", "nobody"],
]
FORCE_KINDS = frozenset({"multi", "sequence", "identifier", "private"})


@dataclass(frozen=True)
class Edit:
    """One change to make: set `key` (or remove it, with its current value) at `path`."""

    kind: str
    path: Path
    key: str = ""
    value: Any = None
    private_vr: str = ""
    """DICOMVRs entry, for a new private attribute."""


@dataclass(frozen=True)
class Case:
    """One request to make: who, on which image set and version, with which documents."""

    principal: str
    layout: Layout = field(repr=False)
    version: str
    force: bool
    edits: tuple[Edit, ...]

    @property
    def kinds(self) -> list[str]:
        return sorted({edit.kind for edit in self.edits})

    def documents(self) -> tuple[Document | None, Document | None]:
        """(updatableAttributes, removableAttributes), each None when empty."""
        updatable: Document = {}
        removable: Document = {}
        for edit in self.edits:
            if edit.kind == "remove_node":
                _at(removable, edit.path)
            elif edit.kind == "remove":
                _at(removable, (*edit.path, "DICOM"))[edit.key] = edit.value
            else:
                _at(updatable, (*edit.path, "DICOM"))[edit.key] = edit.value
                if edit.private_vr:
                    _at(updatable, (*edit.path, "DICOMVRs"))[edit.key] = edit.private_vr
        return _schema(updatable), _schema(removable)

    def request(self, datastore_id: str) -> pb.UpdateImageSetMetadataRequest:
        updatable, removable = self.documents()
        dicom_updates = pb.DICOMUpdates()
        if updatable is not None:
            dicom_updates.updatable_attributes = json.dumps(updatable).encode()
        if removable is not None:
            dicom_updates.removable_attributes = json.dumps(removable).encode()
        return pb.UpdateImageSetMetadataRequest(
            datastore_id=datastore_id,
            image_set_id=self.layout.image_set_id,
            latest_version_id=self.version,
            force=self.force,
            dicom_updates=dicom_updates,
        )


def _at(document: Document, path: Path) -> Document:
    node = document
    for key in path:
        node = node.setdefault(key, {})
    return node


def _schema(document: Document) -> Document | None:
    return {"SchemaVersion": 1.1, **document} if document else None


def _node_paths(layout: Layout, level: str) -> list[Path]:
    if level in ("patient", "study"):
        return [(level.capitalize(),)]
    series: list[Path] = [("Study", "Series", uid) for uid in layout.series]
    if level == "series":
        return series
    return [(*s, "Instances", sop) for s in series for sop in layout.series[s[2]]]


_LEVELS = ["patient", "study", "study", "series", "series", "instance", "instance", "instance"]

# Strategies draw nothing from the image set: hypothesis requires the same choices to draw the same
# way, and image sets move on between examples. They draw indexes ("picks") and values, and return
# a builder that resolves them against the image set's current layout.
Builder = Callable[[Layout], Edit]
T = TypeVar("T")
picks = st.integers(0, 2**20)


def _choose(options: Sequence[T], pick: int) -> T:
    return options[pick % len(options)]


@st.composite
def _set_attribute(draw: st.DrawFn, kind: str) -> Builder:
    level = draw(st.sampled_from([level for level in _LEVELS if (level, kind) in POOLS]))
    entry = draw(st.sampled_from(POOLS[level, kind]))
    key, value, pick = (
        spelled(entry.tag, entry.keyword, draw(spellings)),
        draw(single_value(entry)),
        draw(picks),
    )
    return lambda layout: Edit(kind, _choose(_node_paths(layout, level), pick), key, value)


@st.composite
def _identifier(draw: st.DrawFn) -> Builder:
    level = draw(st.sampled_from(sorted(IDENTIFIERS)))
    keyword = IDENTIFIERS[level]
    key = spelled(datadict.tag_for_keyword(keyword) or 0, keyword, draw(spellings))
    value, pick = draw(_fresh_uids), draw(picks)
    return lambda layout: Edit("identifier", _choose(_node_paths(layout, level), pick), key, value)


# Never hypothesis' choice: two nodes given one new UID would merge, which is not what is tested.
_fresh_uids = st.builds(lambda: f"2.25.{uuid.uuid4().int}")


def _private_keys(layout: Layout, path: Path) -> tuple[list[int], list[int]]:
    """The instance's private data elements and its private creators' blocks (group, block)."""
    tags = [int(key, 16) for key in layout.node(path).get("DICOM", {}) if _is_hex(key)]
    private = [tag for tag in tags if tag >> 16 & 1]
    creators = [tag for tag in private if 0x10 <= tag & 0xFFFF <= 0xFF]
    return [tag for tag in private if tag & 0xFFFF >= 0x1000], creators


def _is_hex(key: str) -> bool:
    return len(key) == 8 and all(c in string.hexdigits for c in key)


@st.composite
def _private(draw: st.DrawFn) -> Builder:
    """A present private attribute changed, or a new one in a present creator's block."""
    path_pick, element_pick, creator_pick = draw(picks), draw(picks), draw(picks)
    present, element, hex_case = (
        draw(st.booleans()),
        draw(st.integers(0, 0xFF)),
        draw(st.sampled_from(["upper", "lower"])),
    )
    number, text, fallback = (
        draw(st.integers(0, 30_000)),
        draw(VALUES["SH"]),
        draw(_set_attribute("plain")),
    )

    def build(layout: Layout) -> Edit:
        path = _choose(_node_paths(layout, "instance"), path_pick)
        elements, creators = _private_keys(layout, path)
        if not creators:
            return fallback(layout)
        if present and elements:
            tag = _choose(elements, element_pick)
        else:
            creator = _choose(creators, creator_pick)
            tag = (creator & 0xFFFF0000) | (creator & 0xFF) << 8 | element
        key = spelled(tag, "", hex_case)
        current = layout.node(path)["DICOM"].get(f"{tag:08X}", text)
        new_vr = "" if tag in elements else "LO"
        return Edit("private", path, key, number if isinstance(current, int) else text, new_vr)

    return build


@st.composite
def _remove(draw: st.DrawFn) -> Builder:
    """A present attribute removed, naming its current value (as HealthImaging requires)."""
    level, path_pick, key_pick = draw(st.sampled_from(_LEVELS)), draw(picks), draw(picks)
    spelling, fallback = draw(spellings), draw(_set_attribute("plain"))
    never = dicom.GENERATED_NAMES | dicom.IDENTIFIER_KEYWORDS

    def build(layout: Layout) -> Edit:
        path = _choose(_node_paths(layout, level), path_pick)
        present = sorted(set(layout.node(path).get("DICOM", {})) - never)
        if not present:
            return fallback(layout)
        key = _choose(present, key_pick)
        tag = int(key, 16) if _is_hex(key) else datadict.tag_for_keyword(key)
        respelled = key if tag is None else spelled(tag, key, spelling)
        return Edit("remove", path, respelled, layout.node(path)["DICOM"][key])

    return build


@st.composite
def _remove_node(draw: st.DrawFn) -> Builder:
    """A series or an instance removed, keeping at least one instance in the image set."""
    pick, fallback = draw(picks), draw(_set_attribute("plain"))

    def build(layout: Layout) -> Edit:
        series = layout.series
        options: list[Path] = (
            [("Study", "Series", uid) for uid in series] if len(series) > 1 else []
        )
        options += [
            ("Study", "Series", uid, "Instances", sop)
            for uid, sops in series.items()
            if len(sops) > 1
            for sop in sops
        ]
        return Edit("remove_node", _choose(options, pick)) if options else fallback(layout)

    return build


_DATES = [entry for entry in POOLS["instance", "plain"] if entry.vr in ("DA", "TM")]
_LONG_TEXT = next(entry for entry in POOLS["instance", "plain"] if entry.vr == "UT")


@st.composite
def _careless(draw: st.DrawFn) -> Builder:
    """What HealthImaging would refuse: a wrong level, a malformed value, an oversized payload."""
    how, pick = draw(st.sampled_from(["wrong_level", "bad_value", "oversize"])), draw(picks)
    entry, level = draw(st.sampled_from(POOLS["instance", "plain"])), "instance"
    value: Any = draw(VALUES[entry.vr])
    if how == "wrong_level":
        level = draw(st.sampled_from(["study", "series"]))
    elif how == "bad_value":
        entry, value = draw(st.sampled_from(_DATES)), "2021-13-45T25:61"
    else:
        entry, value = _LONG_TEXT, "A" * 11_000  # over HealthImaging's 10 KB payload quota
    key = spelled(entry.tag, entry.keyword, "keyword")
    return lambda layout: Edit(
        f"careless_{how}", _choose(_node_paths(layout, level), pick), key, value
    )


_SPECIAL: dict[str, Callable[[], st.SearchStrategy[Builder]]] = {
    "identifier": _identifier,
    "private": _private,
    "remove": _remove,
    "remove_node": _remove_node,
    "careless": _careless,
}


@dataclass(frozen=True)
class Plan:
    """A case before it meets an image set: who, and what to change where."""

    principal: str
    builders: tuple[Builder, ...]
    force_coin: int
    stale_coin: int

    def on(self, layout: Layout) -> Case:
        """The request on this image set's current version."""
        edits = _distinct([build(layout) for build in self.builders])
        needs_force = any(_needs_force(edit) for edit in edits)
        # Coins read high-is-rare: hypothesis favours 0, which should be the ordinary case.
        force = self.force_coin >= (15 if needs_force else 90)
        version = layout.version
        if self.stale_coin >= 95:  # stale: someone else updated since
            version = str(int(version) - 1) if int(version) > 1 else "99"
        return Case(self.principal, layout, version, force, edits)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """One to three edits of weighted kinds, by a principal from the demo's mix."""
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    builders = tuple(
        draw(_SPECIAL[kind]() if kind in _SPECIAL else _set_attribute(kind)) for kind in kinds
    )
    principal = draw(st.sampled_from(PRINCIPALS))
    return Plan(principal, builders, draw(percent), draw(percent))


percent = st.sampled_from(range(100))
"""Closer to uniform than st.integers, which favours the ends of its range."""


def _needs_force(edit: Edit) -> bool:
    if edit.kind in FORCE_KINDS or isinstance(edit.value, list):
        return True
    if edit.kind != "remove":
        return False
    tag = int(edit.key, 16) if _is_hex(edit.key) else datadict.tag_for_keyword(edit.key)
    entry = DicomDictionary.get(tag or 0)
    return entry is None or entry[0] == "SQ" or entry[1] != "1"


def _distinct(edits: list[Edit]) -> tuple[Edit, ...]:
    """No attribute twice, and nothing else once a node is removed (both would be refused)."""
    removed = [edit for edit in edits if edit.kind == "remove_node"]
    if removed:
        return (removed[0],)
    seen: dict[tuple[Path, int | str], Edit] = {}
    for edit in edits:
        tag = int(edit.key, 16) if _is_hex(edit.key) else datadict.tag_for_keyword(edit.key)
        seen.setdefault((edit.path, tag or edit.key), edit)
    return tuple(seen.values())
