"""The boundary oracle without I/O: what a version diff touched, and which change covers it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from tests.e2e.fuzz.oracle import APPEARED, Touch, touched, uncovered

S1, S2, I1, I2, I3 = "1.1", "1.2", "1.1.1", "1.1.2", "1.2.1"


def image_set() -> dict[str, Any]:
    instance = {"DICOM": {"SOPInstanceUID": I1, "ImageComments": "a", "00091010": 1}}
    return {
        "Patient": {"DICOM": {"PatientName": "A^B"}},
        "Study": {
            "DICOM": {"StudyDescription": "x"},
            "Series": {
                S1: {
                    "DICOM": {"SeriesInstanceUID": S1, "Modality": "CT"},
                    "Instances": {I1: instance, I2: {"DICOM": {"SOPInstanceUID": I2}}},
                },
                S2: {"DICOM": {"SeriesInstanceUID": S2}, "Instances": {I3: {"DICOM": {}}}},
            },
        },
    }


@dataclass(frozen=True)
class Change:
    action: str
    level: str
    tag: str = ""
    series_uid: str = ""
    instance_uid: str = ""
    within: str = ""


def test_attribute_changes_at_every_level_are_touches_with_canonical_tags() -> None:
    before, after = image_set(), image_set()
    after["Patient"]["DICOM"]["PatientName"] = "C^D"
    after["Study"]["DICOM"]["00081032"] = [{"CodeValue": "1"}]
    del after["Study"]["Series"][S1]["DICOM"]["Modality"]
    after["Study"]["Series"][S1]["Instances"][I1]["DICOM"]["00091010"] = 2
    assert touched(before, after) == {
        Touch("patient", "", "", "00100010"),
        Touch("study", "", "", "00081032"),
        Touch("series", S1, "", "00080060"),
        Touch("instance", S1, I1, "00091010"),
    }


def test_a_touch_needs_a_change_at_the_same_place() -> None:
    touch = Touch("instance", S1, I1, "00204000")
    assert uncovered([touch], [Change("update", "instance", "00204000", S1, I1)]) == []
    assert uncovered([touch], [Change("update", "instance", "00204000", S1, I2)]) == [touch]
    assert uncovered([touch], [Change("update", "series", "00204000", S1)]) == [touch]
    assert uncovered([touch], [Change("remove_series", "series", "", S1)]) == [touch]


def test_a_sequence_is_covered_by_a_change_nested_within_it() -> None:
    touch = Touch("study", "", "", "00081032")
    assert uncovered([touch], [Change("update", "study", "00080100", within="00081032")]) == []
    assert uncovered([touch], [Change("update", "study", "00080100")]) == [touch]


def test_a_re_keyed_node_pairs_with_its_old_uid() -> None:
    before, after = image_set(), image_set()
    moved = after["Study"]["Series"].pop(S1)
    moved["DICOM"]["SeriesInstanceUID"] = "9.9"
    after["Study"]["Series"]["9.9"] = moved
    assert touched(before, after) == {Touch("series", S1, "", "0020000E")}


def test_removed_nodes_need_a_removal_and_new_nodes_are_never_covered() -> None:
    before, after = image_set(), image_set()
    del after["Study"]["Series"][S2]
    del after["Study"]["Series"][S1]["Instances"][I2]
    touches = touched(before, after)
    assert touches == {Touch("instance", S2, I3, ""), Touch("instance", S1, I2, "")}
    removals = [
        Change("remove_series", "series", "", S2),
        Change("remove_instance", "instance", "", S1, I2),
    ]
    assert uncovered(touches, removals) == []
    grown = copy.deepcopy(before)
    grown["Study"]["Series"]["7.7"] = {"DICOM": {"Modality": "MR"}, "Instances": {"7.7.1": {}}}
    assert touched(before, grown) == {Touch("series", "7.7", "", APPEARED)}
    assert uncovered(touched(before, grown), [Change("update", "series", "00080060", "7.7")])
