"""Values valid for each DICOM VR and VM, and pydicom's data dictionary by level and kind."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from hypothesis import strategies as st
from pydicom import config, valuerep
from pydicom._dicom_dict import DicomDictionary  # what datadict itself reads

from service.normaliser import dicom

Document = dict[str, Any]
Values = st.SearchStrategy[Any]

# --- values valid for their VR -------------------------------------------------------------------

_PRINTABLE = st.characters(codec="ascii", min_codepoint=0x20, exclude_characters="\\")
_LETTERS = st.text(string.ascii_letters, min_size=1, max_size=12)
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses


MARKER = "QXVALUEQX"
"""In every text value, so a test can check that no refusal ever echoes a value."""


def _text(max_size: int) -> Values:
    return st.text(_PRINTABLE, max_size=max_size - len(MARKER)).map(lambda t: MARKER + t.strip())


def _regex(pattern: str) -> Values:
    return st.from_regex(pattern, fullmatch=True)


_BY_VR: dict[str, Values] = {
    "AE": _regex(r"[A-Z][A-Z0-9]{0,15}"),
    "AS": _regex(r"[0-9]{3}[DWMY]"),
    "CS": _regex(r"[A-Z0-9_]{1,16}"),
    "DA": st.dates(date(1900, 1, 1), date(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d")),
    "DS": st.builds(lambda a, b: f"{a}.{b}", st.integers(-99_999, 99_999), st.integers(0, 999)),
    "DT": st.datetimes(datetime(1900, 1, 1), datetime(2099, 12, 31)).map(
        lambda d: d.strftime("%Y%m%d%H%M%S")
    ),
    "FD": st.floats(allow_nan=False, allow_infinity=False),
    "FL": st.floats(allow_nan=False, allow_infinity=False, width=32),
    "IS": st.integers(-(2**31) + 1, 2**31 - 1).map(str),
    "LO": _text(40),
    "LT": _text(60),
    "PN": st.builds(lambda family, given: f"{MARKER}{family}^{given}", _LETTERS, _LETTERS),
    "SH": _text(16),
    "SL": st.integers(-(2**31), 2**31 - 1),
    "SS": st.integers(-(2**15), 2**15 - 1),
    "ST": _text(60),
    "SV": st.integers(-(2**53), 2**53),
    "TM": st.times(time(0), time(23, 59, 59)).map(lambda t: t.strftime("%H%M%S")),
    "UC": _text(40),
    "UI": st.lists(st.integers(1, 99_999), min_size=1, max_size=5).map(
        lambda parts: _UID_ROOT + ".".join(map(str, parts))
    ),
    "UL": st.integers(0, 2**32 - 1),
    "UR": _LETTERS.map(lambda path: f"https://example.org/{path}"),
    "US": st.integers(0, 2**16 - 1),
    "UT": _text(60),
    "UV": st.integers(0, 2**53),
}


def _valid_for(vr: str) -> Callable[[Any], bool]:
    def valid(value: Any) -> bool:
        try:
            valuerep.validate_value(vr, value, config.RAISE)
        except ValueError:
            return False
        return True

    return valid


VALUES: dict[str, Values] = {
    vr: values.filter(_valid_for(vr)) if vr in valuerep.VALIDATORS else values
    for vr, values in _BY_VR.items()
}


def value_counts(vm: str) -> list[int]:
    """How many values the dictionary's VM allows ("1-n" → 1..3, "2-2n" → 2, 4), kept small."""
    low, _, high = vm.partition("-")
    if not high:
        return [int(low)]
    if high.endswith("n"):
        step = int(high[:-1] or 1)
        return list(range(int(low), int(low) + 2 * step, step))
    return list(range(int(low), min(int(high), int(low) + 2) + 1))


# --- the dictionary, by level and kind -----------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One dictionary attribute we can write."""

    tag: int
    keyword: str
    vr: str
    vm: str


def _entries() -> list[Entry]:
    never = dicom.GENERATED_NAMES | dicom.IDENTIFIER_KEYWORDS
    return [
        Entry(tag, keyword, vr, vm)
        for tag, (vr, vm, _name, _retired, keyword) in sorted(DicomDictionary.items())
        if keyword and keyword not in never and (vr in VALUES or vr == "SQ")
        if tag >> 16 not in (0x0000, 0xFFFE)
    ]


_LEVEL_LISTS = {
    "patient": dicom.PATIENT_LEVEL_KEYWORDS,
    "study": dicom.STUDY_LEVEL_KEYWORDS,
    "series": dicom.SERIES_LEVEL_KEYWORDS,
}


def _level_of(entry: Entry) -> str:
    levels = (level for level, words in _LEVEL_LISTS.items() if entry.keyword in words)
    return next(levels, "instance")


def _kind_of(entry: Entry) -> str:
    if entry.vr == "SQ":
        return "sequence"
    if entry.vm != "1":
        return "multi"
    return "uid" if entry.vr == "UI" else "plain"


POOLS: dict[tuple[str, str], list[Entry]] = {}
for _entry in _entries():
    POOLS.setdefault((_level_of(_entry), _kind_of(_entry)), []).append(_entry)
IDENTIFIERS = {  # the UIDs that place a node (need force; the backend re-keys the node)
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def spelled(tag: int, keyword: str, how: str) -> str:
    if how == "keyword" and keyword:
        return keyword
    return f"{tag:08x}" if how == "lower" else f"{tag:08X}"


spellings = st.sampled_from(["keyword", "keyword", "upper", "lower"])


def single_value(entry: Entry) -> Values:
    if entry.vr == "SQ":
        return st.lists(sequence_items, min_size=1, max_size=2)
    one = VALUES[entry.vr]
    if entry.vm == "1":
        return one
    return st.sampled_from(value_counts(entry.vm)).flatmap(
        lambda n: st.lists(one, min_size=n, max_size=n)
    )


@st.composite
def _item(draw: st.DrawFn) -> Document:
    entries = draw(st.lists(st.sampled_from(POOLS["instance", "plain"]), min_size=1, max_size=2))
    by_tag = {entry.tag: entry for entry in entries}
    return {
        spelled(tag, entry.keyword, draw(spellings)): draw(VALUES[entry.vr])
        for tag, entry in by_tag.items()
    }


sequence_items: st.SearchStrategy[Document] = _item()
