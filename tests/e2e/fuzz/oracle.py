"""The boundary oracle: what an update changed between two versions of an image set's metadata, and
whether the change list a decision saw covers it. Pure: documents and change lists in, touches out.

The emulator's request log says THAT an update reached the backend, not its body; the versions
before and after say what the body did. A series or instance whose UID changed is re-keyed by the
backend, so nodes are paired by content before their attributes are compared.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom import datadict

Document = dict[str, Any]
_MISSING = object()
_HEX = re.compile(r"[0-9A-Fa-f]{8}")
APPEARED = "appeared"
"""The `tag` of a touch that says a node exists now that did not before: no change explains it."""


@dataclass(frozen=True, order=True)
class Touch:
    """One thing an update changed: an attribute (tag), or a whole instance removed (tag "")."""

    level: str
    series_uid: str
    instance_uid: str
    tag: str


class Change(Protocol):
    """What the oracle reads of an AttributeChange (the Evaluation's change list)."""

    @property
    def action(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def series_uid(self) -> str: ...
    @property
    def instance_uid(self) -> str: ...
    @property
    def tag(self) -> str: ...


def canonical_tag(key: str) -> str:
    """A document key → 8 upper-case hex digits (the key itself when it names no attribute)."""
    if _HEX.fullmatch(key):
        return key.upper()
    tag = datadict.tag_for_keyword(key)
    return key if tag is None else f"{tag:08X}"


def touched(before: Document, after: Document) -> set[Touch]:
    """Everything that differs between two versions of one image set's metadata."""
    found = _attributes(before.get("Patient", {}), after.get("Patient", {}), "patient", "", "")
    old_study, new_study = before.get("Study", {}), after.get("Study", {})
    found |= _attributes(old_study, new_study, "study", "", "")
    old, new = old_study.get("Series", {}), new_study.get("Series", {})
    pairs, vanished, appeared = pair(old, new)
    for uid in vanished:  # the backend drops a series with its last instance
        found |= {Touch("instance", uid, sop, "") for sop in old[uid].get("Instances", {})}
    found |= {Touch("series", uid, "", APPEARED) for uid in appeared}
    for old_uid, new_uid in pairs:
        found |= _series(old_uid, old[old_uid], new[new_uid])
    return found


def _series(uid: str, before: Document, after: Document) -> set[Touch]:
    found = _attributes(before, after, "series", uid, "")
    old, new = before.get("Instances", {}), after.get("Instances", {})
    pairs, vanished, appeared = pair(old, new)
    found |= {Touch("instance", uid, sop, "") for sop in vanished}
    found |= {Touch("instance", uid, sop, APPEARED) for sop in appeared}
    for old_sop, new_sop in pairs:
        found |= _attributes(old[old_sop], new[new_sop], "instance", uid, old_sop)
    return found


def _attributes(
    before: Document, after: Document, level: str, series_uid: str, instance_uid: str
) -> set[Touch]:
    found = set()
    for part in ("DICOM", "DICOMVRs"):
        old, new = before.get(part, {}), after.get(part, {})
        for key in old.keys() | new.keys():
            if old.get(key, _MISSING) != new.get(key, _MISSING):
                found.add(Touch(level, series_uid, instance_uid, canonical_tag(key)))
    return found


def pair(old: Document, new: Document) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Nodes by UID (series or instances): (old, new) pairs, the vanished and the appeared.

    Same UID pairs; a node whose UID changed pairs with the vanished node it shares most with.
    """
    pairs = [(uid, uid) for uid in old if uid in new]
    vanished = [uid for uid in old if uid not in new]
    appeared = []
    for uid in (uid for uid in new if uid not in old):
        scores = {gone: _shared(old[gone], new[uid]) for gone in vanished}
        best = max(scores, key=lambda gone: scores[gone], default=None)
        if best is None or scores[best] == 0:
            appeared.append(uid)
            continue
        pairs.append((best, uid))
        vanished.remove(best)
    return pairs, vanished, appeared


def _shared(before: Document, after: Document) -> int:
    old, new = before.get("DICOM", {}), after.get("DICOM", {})
    same = sum(1 for key, value in old.items() if new.get(key, _MISSING) == value)
    return same + len(before.get("Instances", {}).keys() & after.get("Instances", {}).keys())


def uncovered(touches: Iterable[Touch], changes: Iterable[Change]) -> list[Touch]:
    """The touches no change explains (should be none), sorted."""
    listed = list(changes)
    return sorted(touch for touch in touches if not any(_covers(c, touch) for c in listed))


def _covers(change: Change, touch: Touch) -> bool:
    if touch.tag == APPEARED:
        return False
    if change.action == "remove_series":
        return not touch.tag and change.series_uid == touch.series_uid
    if change.action == "remove_instance":
        node = (change.series_uid, change.instance_uid)
        return not touch.tag and node == (touch.series_uid, touch.instance_uid)
    place = (change.level, change.series_uid, change.instance_uid)
    if place != (touch.level, touch.series_uid, touch.instance_uid) or not touch.tag:
        return False
    return touch.tag in (change.tag, *_within(change))


def _within(change: Change) -> list[str]:
    """The sequence a nested change sits in (its outermost tag), when the contract names one."""
    within = getattr(change, "within", "")
    text = within if isinstance(within, str) else " ".join(map(str, within))
    tags = re.findall(r"[0-9A-Fa-f]{8}", text)
    return [tags[0].upper()] if tags else []
