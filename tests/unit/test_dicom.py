"""DICOM knowledge: every spelling of a key resolves to the same classified attribute."""

from __future__ import annotations

import pytest
from pydicom import datadict

from service import dicom
from service.dicom import KeyProblem, resolve_key


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
        ("PatientName", "00100010", "PatientName", "PN", False, True, "patient",
         {"patient_identity"}),
        ("PatientAge", "00101010", "PatientAge", "AS", False, True, "study", set()),
        ("PatientWeight", "00101030", "PatientWeight", "DS", False, True, "study", set()),
        ("ResponsiblePerson", "00102297", "ResponsiblePerson", "PN", False, True, "patient",
         {"patient_identity"}),
        ("PatientAddress", "00101040", "PatientAddress", "LO", False, True, None,
         {"patient_identity"}),
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
         "patient", {"patient_identity", "sequence"}),
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
        dicom.PATIENT_IDENTITY_KEYWORDS, dicom.IDENTIFIER_KEYWORDS, dicom.GENERATED_KEYWORDS,
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


def test_vr_options_split_ambiguous_vrs() -> None:
    assert resolve_key("SmallestPixelValueInSeries").vr_options() == {"US", "SS"}
    assert resolve_key("PatientName").vr_options() == {"PN"}
    assert resolve_key("001910F9").vr_options() == frozenset()


def test_vrs_are_the_two_letter_codes() -> None:
    assert {"PN", "SQ", "UN", "OB", "UV"} <= dicom.VRS
    assert all(len(vr) == 2 for vr in dicom.VRS)
