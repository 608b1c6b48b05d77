"""The proxy's normaliser and the emulator keep the same Patient/Study/Series attribute lists.

Both copy HealthImaging's "Metadata normalization" page; the emulator may not import the service,
so the lists are duplicated and this test keeps them from drifting apart.
"""

from __future__ import annotations

import pytest

from emulator import dicom_levels
from service.normaliser import dicom

PAIRS = [
    pytest.param(dicom.PATIENT_LEVEL_KEYWORDS, dicom_levels.Level.PATIENT, id="patient"),
    pytest.param(dicom.STUDY_LEVEL_KEYWORDS, dicom_levels.Level.STUDY, id="study"),
    pytest.param(dicom.SERIES_LEVEL_KEYWORDS, dicom_levels.Level.SERIES, id="series"),
]


@pytest.mark.parametrize(("service_keywords", "emulator_level"), PAIRS)
def test_level_keyword_sets_are_identical(
    service_keywords: frozenset[str], emulator_level: dicom_levels.Level
) -> None:
    emulator_keywords = dicom_levels.LEVEL_KEYWORDS[emulator_level]
    assert sorted(service_keywords - emulator_keywords) == [], "missing from the emulator"
    assert sorted(emulator_keywords - service_keywords) == [], "missing from the service"


def test_emulator_has_exactly_the_three_normalised_levels() -> None:
    assert set(dicom_levels.LEVEL_KEYWORDS) == {
        dicom_levels.Level.PATIENT,
        dicom_levels.Level.STUDY,
        dicom_levels.Level.SERIES,
    }


def test_both_lookups_place_every_listed_keyword_at_the_same_level() -> None:
    levels = {
        "patient": dicom_levels.Level.PATIENT,
        "study": dicom_levels.Level.STUDY,
        "series": dicom_levels.Level.SERIES,
    }
    listed = dicom.PATIENT_LEVEL_KEYWORDS | dicom.STUDY_LEVEL_KEYWORDS | dicom.SERIES_LEVEL_KEYWORDS
    disagreements = {
        keyword: (home, dicom_levels.level_of(keyword))
        for keyword in sorted(listed)
        if (home := dicom.resolve_key(keyword).home_level) is None
        or levels[home] is not dicom_levels.level_of(keyword)
    }
    assert disagreements == {}
