"""DICOM knowledge: every spelling of a key resolves to the same classified attribute."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydicom import datadict

from service.normaliser import dicom
from service.normaliser.dicom import KeyProblem, resolve_key


@pytest.mark.parametrize(
    "spellings",
    [
        ("PatientName", "00100010"),
        ("StudyInstanceUID", "0020000D", "0020000d"),
        ("SeriesDescription", "0008103E", "0008103e"),
        ("ReferencedImageSequence", "00081140"),
        ("PixelData", "7FE00010", "7fe00010", "7Fe00010"),
        ("OverlayRows", "60000010"),  # a repeating-group keyword names the first group
        ("001910F9", "001910f9"),
        ("0010A0B0", "0010a0b0"),
    ],
)
def test_every_spelling_resolves_to_the_same_attribute(spellings: tuple[str, ...]) -> None:
    resolved = {resolve_key(key) for key in spellings}
    assert len(resolved) == 1


@pytest.mark.parametrize(
    ("key", "tag", "keyword", "vr", "private", "standard", "home", "categories"),
    [
        ("PatientName", "00100010", "PatientName", "PN", False, True, "patient", set()),
        ("PatientAge", "00101010", "PatientAge", "AS", False, True, "study", set()),
        ("PatientWeight", "00101030", "PatientWeight", "DS", False, True, "study", set()),
        ("ResponsiblePerson", "00102297", "ResponsiblePerson", "PN", False, True, "patient", set()),
        ("PatientAddress", "00101040", "PatientAddress", "LO", False, True, None, set()),
        ("StudyInstanceUID", "0020000D", "StudyInstanceUID", "UI", False, True, "study", {"uid"}),
        ("StudyID", "00200010", "StudyID", "SH", False, True, "study", {"uid"}),
        ("SeriesInstanceUID", "0020000E", "SeriesInstanceUID", "UI", False, True, "series",
         {"uid"}),
        ("SOPInstanceUID", "00080018", "SOPInstanceUID", "UI", False, True, None, {"uid"}),
        ("Modality", "00080060", "Modality", "CS", False, True, "series", set()),
        ("FrameOfReferenceUID", "00200052", "FrameOfReferenceUID", "UI", False, True, "series",
         set()),
        ("ImageType", "00080008", "ImageType", "CS", False, True, None, set()),
        ("OtherPatientIDsSequence", "00101002", "OtherPatientIDsSequence", "SQ", False, True,
         "patient", {"sequence"}),
        ("SmallestPixelValueInSeries", "00280108", "SmallestPixelValueInSeries", "US or SS",
         False, True, "series", set()),
        ("001910f9", "001910F9", "", "", True, False, None, {"private"}),
        ("00190010", "00190010", "", "", True, False, None, {"private"}),  # private creator
        ("00100011", "00100011", "", "", False, False, None, {"non_standard"}),
        ("60020010", "60020010", "OverlayRows", "US", False, True, None, set()),
    ],
)  # fmt: skip
def test_classification(
    key: str, tag: str, keyword: str, vr: str, private: bool, standard: bool,
    home: str | None, categories: set[str],
) -> None:  # fmt: skip
    attribute = resolve_key(key)
    assert (attribute.tag, attribute.keyword, attribute.vr) == (tag, keyword, vr)
    assert (attribute.private, attribute.standard, attribute.home_level) == (
        private,
        standard,
        home,
    )
    assert attribute.categories == categories


@pytest.mark.parametrize(
    ("key", "force_gated"),
    [
        ("PatientName", False),
        ("StudyInstanceUID", True),
        ("SOPInstanceUID", True),
        ("StudyID", True),
        ("ReferencedImageSequence", True),
        ("00091001", True),
        ("00100011", True),
        ("ImageType", False),  # multi-valued only by value: the normaliser decides
    ],
)
def test_force_gated(key: str, force_gated: bool) -> None:
    assert resolve_key(key).force_gated is force_gated


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("0010,0010", "malformed tag"),
        ("(0010,0010)", "malformed tag"),
        ("0x00100010", "malformed tag"),
        ("0010001", "malformed tag"),
        ("001000100", "malformed tag"),
        ("0010001G", "malformed tag"),
        ("patientname", "unknown DICOM keyword"),
        ("PatientsName", "unknown DICOM keyword"),
        ("Width", "unknown DICOM keyword"),
        ("Patient Name", "malformed attribute key"),
        ("", "malformed attribute key"),
        ("Pätient", "malformed attribute key"),
    ],
)
def test_bad_keys(key: str, problem: str) -> None:
    with pytest.raises(KeyProblem, match=problem):
        resolve_key(key)


def test_generated_pixel_data_in_any_spelling() -> None:
    assert all(resolve_key(key).generated for key in ("PixelData", "7FE00010", "7fe00010"))
    assert not resolve_key("PatientName").generated


def test_keyword_lists_name_dictionary_attributes() -> None:
    lists = (
        dicom.PATIENT_LEVEL_KEYWORDS, dicom.STUDY_LEVEL_KEYWORDS, dicom.SERIES_LEVEL_KEYWORDS,
        dicom.IDENTIFIER_KEYWORDS, dicom.GENERATED_KEYWORDS,
    )  # fmt: skip
    unknown = {k for keywords in lists for k in keywords if datadict.tag_for_keyword(k) is None}
    assert unknown == set()


def test_level_lists_are_disjoint() -> None:
    patient, study = dicom.PATIENT_LEVEL_KEYWORDS, dicom.STUDY_LEVEL_KEYWORDS
    series = dicom.SERIES_LEVEL_KEYWORDS
    assert not (patient & study or patient & series or study & series)


def test_identifiers_sit_at_their_levels() -> None:
    levels = {k: resolve_key(k).home_level for k in dicom.IDENTIFIER_KEYWORDS}
    assert levels == {
        "StudyInstanceUID": "study", "StudyID": "study", "SeriesInstanceUID": "series",
        "SOPInstanceUID": None,
    }  # fmt: skip


def test_vrs_are_the_two_letter_codes() -> None:
    assert {"PN", "SQ", "UN", "OB", "UV"} <= dicom.VRS
    assert all(len(vr) == 2 for vr in dicom.VRS)


# --- PS3.15 Table E.1-1 (dicom-anonymizer's 2026c table) ----------------------------------------


@pytest.mark.parametrize(
    ("key", "vm", "retired", "profile"),
    [
        ("PatientName", "1", False, "Z"),
        ("StudyDescription", "1", False, "X"),
        ("ContextGroupVersion", "1", False, "D"),
        ("StudyInstanceUID", "1", False, "U"),
        ("PatientID", "1", False, "Z/D"),
        ("AcquisitionDate", "1", False, "X/Z"),
        ("SeriesDate", "1", False, "X/D"),
        ("InstitutionName", "1", False, "X/Z/D"),
        ("ReferencedImageSequence", "1", False, "X/Z/U*"),
        ("OtherPatientIDs", "1-n", True, "X"),  # retired, still listed
        ("PatientReligiousPreference", "1", False, "X"),
        ("SOPClassUID", "1", False, ""),  # not listed: the VR UI is what the policy judges
        ("TransferSyntaxUID", "1", False, ""),
        ("BodyPartExamined", "1", False, ""),
        ("ImageType", "2-n", False, ""),
        ("00100044", "", False, "X"),  # newer than pydicom's dictionary, listed by tag
        ("60003000", "1", False, "X"),  # Overlay Data, the (60xx,3000) mask row
        ("601E4000", "1", True, "X"),  # Overlay Comments (60xx,4000), any overlay group
        ("50020010", "1", True, "X"),  # Curve Data (50xx,xxxx)
        ("60020010", "1", False, ""),  # OverlayRows: a 60xx group, but no row lists it
        ("001910F9", "", False, ""),  # private: judged by `private`, not by the table
    ],
)
def test_standard_facts(key: str, vm: str, retired: bool, profile: str) -> None:
    attribute = resolve_key(key)
    assert (attribute.vm, attribute.retired, attribute.profile) == (vm, retired, profile)


def test_profile_is_spelling_independent() -> None:
    assert {resolve_key(k).profile for k in ("MilitaryRank", "00101080", "00101080".lower())} == {
        "X"
    }


def test_profile_table_has_every_action_code_and_no_private_rows() -> None:
    exact, masked = dicom.profile_table()
    assert set(exact.values()) == set(dicom.PROFILE_ACTIONS.values())
    assert len(exact) > 600
    assert not [tag for tag in exact if (tag >> 16) & 1]
    assert {(g, e, gm, em) for (g, e, gm, em), _ in masked} == {
        (0x5000, 0x0000, 0xFF00, 0x0000), (0x6000, 0x3000, 0xFF00, 0xFFFF),
        (0x6000, 0x4000, 0xFF00, 0xFFFF),
    }  # fmt: skip
    assert dicom.PS3_15_EDITION == "2026c"


def test_profile_table_loads_without_the_anonymizer() -> None:
    code = (
        "import sys; from service.normaliser import dicom; dicom.profile_action(0x00100010); "
        "print(sorted(m for m in sys.modules if m.startswith('dicomanonymizer')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
