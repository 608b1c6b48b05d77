"""DICOM knowledge: an attribute key, however spelled, → the facts the standard gives about it.

Facts come from maintained sources, never from tables typed here: tag, keyword, VR, VM and retired
from pydicom's data dictionary (PS3.6); the action of PS3.15 Annex E's Basic Application Level
Confidentiality Profile (Table E.1-1) from dicom-anonymizer's copy of that table. Which facts need
which role is decided by the policy (policies/), not here. This module only adds, as keyword
lists, what neither source can know:

* Level membership follows HealthImaging's metadata normalization (devguide "Metadata
  normalization", DICOM 2022b): the Patient, Study and Series buckets hold exactly the listed
  module attributes; everything else lives with the instance. A prefix rule ("keywords beginning
  with Patient") would be wrong both ways: PatientAge/PatientWeight/PatientSize are Patient
  *Study* module attributes (study level) while ResponsiblePerson or ClinicalTrialSubjectID are
  patient level. Only these listed attributes have a level we are sure of.
* The identifiers HealthImaging refuses to change without force (category "uid").
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Final

from pydicom import datadict
from pydicom._dicom_dict import RepeatersDictionary  # what datadict itself reads
from pydicom.valuerep import VR as _VR

from service.core.model import Level

# HealthImaging "Metadata normalization": Patient module, Issuer of Patient ID and Patient Group
# macros, Clinical Trial Subject module.
PATIENT_LEVEL_KEYWORDS: Final = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "PatientBirthDate", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar", "PatientSex",
    "ReferencedPatientPhotoSequence", "QualityControlSubject", "ReferencedPatientSequence",
    "PatientBirthTime", "OtherPatientIDsSequence", "OtherPatientNames", "EthnicGroup",
    "PatientComments", "PatientSpeciesDescription", "PatientSpeciesCodeSequence",
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "StrainDescription", "StrainNomenclature", "StrainCodeSequence",
    "StrainAdditionalInformation", "StrainStockSequence", "GeneticModificationsSequence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "SourcePatientGroupIdentificationSequence", "GroupOfPatientsIdentificationSequence",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
})  # fmt: skip

# General Study, Patient Study and Clinical Trial Study modules.
STUDY_LEVEL_KEYWORDS: Final = frozenset({
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingService",
    "RequestingServiceCodeSequence", "ReferencedStudySequence", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize", "PatientWeight",
    "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
    "PatientSizeCodeSequence", "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus",
    "LastMenstrualDate", "PatientState", "Occupation", "AdditionalPatientHistory", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ReasonForVisit", "ReasonForVisitCodeSequence",
    "ServiceEpisodeID", "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription",
    "PatientSexNeutered", "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ConsentForClinicalTrialUseSequence",
})  # fmt: skip

# General Series, Clinical Trial Series, General Equipment and Frame of Reference modules.
SERIES_LEVEL_KEYWORDS: Final = frozenset({
    "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence", "ProtocolName",
    "SeriesDescription", "SeriesDescriptionCodeSequence", "OperatorsName",
    "OperatorIdentificationSequence", "ReferencedPerformedProcedureStepSequence",
    "RelatedSeriesSequence", "BodyPartExamined", "PatientPosition",
    "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "RequestAttributesSequence",
    "AnatomicalOrientationType", "TreatmentSessionUID", "ClinicalTrialCoordinatingCenterName",
    "ClinicalTrialSeriesID", "ClinicalTrialSeriesDescription", "Manufacturer",
    "InstitutionName", "InstitutionAddress", "StationName", "InstitutionalDepartmentName",
    "InstitutionalDepartmentTypeCodeSequence", "ManufacturerModelName",
    "ManufacturerDeviceClassUID", "DeviceSerialNumber", "SoftwareVersions", "GantryID",
    "UDISequence", "DeviceUID", "SpatialResolution", "DateOfLastCalibration",
    "TimeOfLastCalibration", "PixelPaddingValue", "FrameOfReferenceUID",
    "PositionReferenceIndicator",
})  # fmt: skip

# HealthImaging refuses changes to these without force (API reference, "force"): the identifiers
# that place the image set in the study/series/instance hierarchy.
IDENTIFIER_KEYWORDS: Final = frozenset(
    {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"}
)

# HealthImaging-generated keys, never updatable ("DICOM metadata constraints"); the pixel data
# keywords are dictionary attributes (any spelling is refused), the rest are HealthImaging names.
GENERATED_KEYWORDS: Final = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})
GENERATED_NAMES: Final = frozenset({
    "SchemaVersion", "DatastoreID", "ImageSetID", "Checksum", "Width", "Height",
    "MinPixelValue", "MaxPixelValue", "FrameSizeInBytes", "ImageFrames", *GENERATED_KEYWORDS,
})  # fmt: skip

# What HealthImaging gates behind force (API reference, "force"). "multi_valued" depends on the
# value, so only the normaliser adds it.
FORCE_CATEGORIES: Final = frozenset({"uid", "private", "sequence", "non_standard", "multi_valued"})

# The two-letter VRs (pydicom's enum also lists ambiguous forms such as "US or SS").
VRS: Final = frozenset(vr.value for vr in _VR if len(vr.value) == 2)

# PS3.15 Table E.1-1 as dicom-anonymizer ships it: one list of tags per action code. The edition
# is named in the policy input and docs/POLICIES.md; a newer package edition is a reviewed change.
PS3_15_EDITION: Final = "2026c"
PROFILE_ACTIONS: Final = {
    "X_TAGS": "X", "Z_TAGS": "Z", "D_TAGS": "D", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}  # fmt: skip

_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# Keywords never start with a digit: "0010,0010", "(0010,0010)", "0x00100010" are tag attempts.
_TAG_LIKE = re.compile(r"[(0-9]")


class KeyProblem(ValueError):
    """An attribute key that names no attribute; the message says why (never echoes a value)."""


@dataclass(frozen=True, slots=True)
class Attribute:
    """What is known about one attribute, independent of how its key was written."""

    tag: str  # canonical: 8 upper-case hex digits
    keyword: str  # "" for private, unknown or keyword-less dictionary entries
    vr: str  # dictionary VR, possibly ambiguous ("US or SS"); "" when not in the dictionary
    vm: str  # dictionary VM ("1", "1-n", "2-2n"); "" when not in the dictionary
    retired: bool  # the dictionary marks it retired
    profile: str  # PS3.15 Table E.1-1 action ("X", "Z", "D", "U", "X/Z", ...); "" = not listed
    private: bool  # odd group
    standard: bool  # in the data dictionary (a repeating-group entry counts)
    home_level: Level | None  # HealthImaging's bucket when listed above; None = not listed
    generated: bool  # HealthImaging-generated: never updatable
    categories: frozenset[str]  # spelling-independent categories

    @property
    def force_gated(self) -> bool:
        """HealthImaging refuses a change of this attribute without force, whatever its value."""
        return not FORCE_CATEGORIES.isdisjoint(self.categories)


def resolve_key(key: str) -> Attribute:
    """An attribute key (keyword, or 8 hex digits in any case) → Attribute; raises KeyProblem."""
    return _resolve_key(key)


@lru_cache(maxsize=8192)
def _resolve_key(key: str) -> Attribute:
    if _HEX_TAG.fullmatch(key):
        return attribute_for_tag(int(key, 16))
    tag = datadict.tag_for_keyword(key) if _KEYWORD.fullmatch(key) else None
    if tag is None:
        tag = _repeater_keywords().get(key)
    if tag is not None:
        return attribute_for_tag(tag)
    if _TAG_LIKE.match(key):
        raise KeyProblem("malformed tag: expected 8 hex digits without separators, e.g. 0010A0B0")
    if _KEYWORD.fullmatch(key):
        raise KeyProblem("unknown DICOM keyword (keywords are case-sensitive)")
    raise KeyProblem("malformed attribute key: expected a DICOM keyword or 8 hex digits")


@lru_cache(maxsize=8192)
def attribute_for_tag(tag: int) -> Attribute:
    """Everything the dictionary and our keyword lists say about one tag."""
    private = bool((tag >> 16) & 1)
    standard = not private and _in_dictionary(tag)
    keyword = datadict.keyword_for_tag(tag) if standard else ""
    vr = datadict.dictionary_VR(tag) if standard else ""
    return Attribute(
        tag=f"{tag:08X}",
        keyword=keyword,
        vr=vr,
        vm=datadict.dictionary_VM(tag) if standard else "",
        retired=standard and datadict.dictionary_is_retired(tag),
        profile="" if private else profile_action(tag),
        private=private,
        standard=standard,
        home_level=_home_levels().get(keyword) if keyword else None,
        generated=keyword in GENERATED_KEYWORDS,
        categories=_categories(keyword, vr, private, standard),
    )


def _categories(keyword: str, vr: str, private: bool, standard: bool) -> frozenset[str]:
    found = set()
    if keyword in IDENTIFIER_KEYWORDS:
        found.add("uid")
    if private:
        found.add("private")
    elif not standard:
        found.add("non_standard")
    if vr == "SQ":
        found.add("sequence")
    return frozenset(found)


def profile_action(tag: int) -> str:
    """The Confidentiality Profile's action for a standard tag ("X", "Z/D", ...); "" = not listed.

    Private tags are not looked up: the table has no entry for them (its "private attributes" row
    is an option of the anonymizer), and the policy judges them by `private`.
    """
    exact, masked = profile_table()
    action = exact.get(tag)
    if action is not None:
        return action
    group, element = tag >> 16, tag & 0xFFFF
    for (g, e, group_mask, element_mask), masked_action in masked:
        if group & group_mask == g and element & element_mask == e:
            return masked_action
    return ""


Masked = tuple[tuple[int, int, int, int], str]


@cache
def profile_table() -> tuple[Mapping[int, str], tuple[Masked, ...]]:
    """PS3.15 Table E.1-1: tag → action, plus the repeating-group rows (50xx,xxxx curves;
    60xx,3000/4000 overlays), which the table writes as (group, element, group mask, element
    mask). Read-only: the table is loaded once and shared."""
    module = _load_profile_module()
    exact: dict[int, str] = {}
    masked: list[Masked] = []
    for name, action in PROFILE_ACTIONS.items():
        for entry in getattr(module, name):
            if len(entry) == 2:
                exact.setdefault((entry[0] << 16) | entry[1], action)
            else:
                masked.append(((entry[0], entry[1], entry[2], entry[3]), action))
    return MappingProxyType(exact), tuple(masked)


def _load_profile_module() -> ModuleType:
    """dicom-anonymizer's table module alone: importing it the usual way would run the package's
    __init__, which loads the anonymizer (tqdm, file walking) that the proxy never uses."""
    package = importlib.util.find_spec("dicomanonymizer")  # finds without importing
    if package is None or not package.submodule_search_locations:
        raise ImportError("dicom-anonymizer is not installed")
    path = Path(package.submodule_search_locations[0]) / "dicom_anonymization_databases"
    name = f"dicomfields_{PS3_15_EDITION}"
    spec = importlib.util.spec_from_file_location(name, path / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"dicom-anonymizer has no PS3.15 {PS3_15_EDITION} table")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_dictionary(tag: int) -> bool:
    """True for PS3.6 entries, repeating groups (60xx overlays, 50xx curves) included."""
    try:
        datadict.get_entry(tag)
    except KeyError:
        return False
    return True


@cache
def _repeater_keywords() -> dict[str, int]:
    """Keywords of repeating-group entries (OverlayRows, ...) → the first group's tag."""
    return {
        entry[4]: int(mask.replace("x", "0"), 16)
        for mask, entry in RepeatersDictionary.items()
        if entry[4]
    }


@cache
def _home_levels() -> dict[str, Level]:
    levels: dict[str, Level] = {}
    buckets: tuple[tuple[frozenset[str], Level], ...] = (
        (PATIENT_LEVEL_KEYWORDS, "patient"),
        (STUDY_LEVEL_KEYWORDS, "study"),
        (SERIES_LEVEL_KEYWORDS, "series"),
    )
    for keywords, level in buckets:
        levels.update(dict.fromkeys(keywords, level))
    return levels
