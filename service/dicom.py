"""DICOM knowledge: an attribute key, however spelled, → canonical tag, keyword, VR, level and risk.

Everything about tags comes from pydicom's data dictionary (PS3.6); this module only adds what
the dictionary cannot know, as keyword lists:

* Level membership follows HealthImaging's metadata normalization (devguide "Metadata
  normalization", DICOM 2022b): the Patient, Study and Series buckets hold exactly the listed
  module attributes; everything else lives with the instance. A prefix rule ("keywords beginning
  with Patient") would be wrong both ways: PatientAge/PatientWeight/PatientSize are Patient
  *Study* module attributes (study level) while ResponsiblePerson or ClinicalTrialSubjectID are
  patient level. Only these listed attributes have a level we are sure of.
* Categories are policy choices (what counts as patient identity), documented next to each list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Final, Literal

from pydicom import datadict
from pydicom._dicom_dict import RepeatersDictionary  # what datadict itself reads
from pydicom.valuerep import VR as _VR

Level = Literal["patient", "study", "series", "instance"]

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

# Policy choice: attributes that identify the person (or animal) rather than describe the visit.
# The whole Patient bucket is not identity (EthnicGroup, Strain*, ClinicalTrialProtocol* are not),
# but names, ids, birth data, sex, contact details and de-identification status are, wherever they
# appear (several are instance-level in HealthImaging, e.g. PatientAddress).
PATIENT_IDENTITY_KEYWORDS: Final = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar",
    "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar", "PatientSex",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "PatientTelecomInformation", "MedicalRecordLocator", "ReferencedPatientPhotoSequence",
    "ReferencedPatientSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientIdentityRemoved", "ResponsiblePerson",
    "ResponsibleOrganization", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
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
    private: bool  # odd group
    standard: bool  # in the data dictionary (a repeating-group entry counts)
    home_level: Level | None  # HealthImaging's bucket when listed above; None = not listed
    generated: bool  # HealthImaging-generated: never updatable
    categories: frozenset[str]  # spelling-independent categories

    @property
    def force_gated(self) -> bool:
        """HealthImaging refuses a change of this attribute without force, whatever its value."""
        return not FORCE_CATEGORIES.isdisjoint(self.categories)

    def vr_options(self) -> frozenset[str]:
        """The VRs the dictionary allows ("US or SS" → {"US", "SS"}); empty when unknown."""
        return frozenset(self.vr.split(" or ")) if self.vr else frozenset()


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
        private=private,
        standard=standard,
        home_level=_home_levels().get(keyword) if keyword else None,
        generated=keyword in GENERATED_KEYWORDS,
        categories=_categories(keyword, vr, private, standard),
    )


def _categories(keyword: str, vr: str, private: bool, standard: bool) -> frozenset[str]:
    found = set()
    if keyword in PATIENT_IDENTITY_KEYWORDS:
        found.add("patient_identity")
    if keyword in IDENTIFIER_KEYWORDS:
        found.add("uid")
    if private:
        found.add("private")
    elif not standard:
        found.add("non_standard")
    if vr == "SQ":
        found.add("sequence")
    return frozenset(found)


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
