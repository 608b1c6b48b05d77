"""Which DICOM attributes HealthImaging keeps at the Patient, Study and Series level."""

from __future__ import annotations

import re
from enum import StrEnum

from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag


class Level(StrEnum):
    PATIENT = "Patient"
    STUDY = "Study"
    SERIES = "Series"
    INSTANCE = "Instance"


# The normalization page's module lists (Patient with the Issuer of Patient ID and Patient Group
# macros, Clinical Trial Subject; General Study, Patient Study, Clinical Trial Study; General
# Series, Clinical Trial Series, General Equipment, Frame of Reference); keywords missing from
# pydicom's dictionary are dropped below. Must equal service/normaliser/dicom.py's *_LEVEL_KEYWORDS
# (checked
# by tests/test_level_lists_agree.py; the emulator does not import the service).
_PATIENT = """
PatientName PatientID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence TypeOfPatientID
PatientBirthDate PatientBirthDateInAlternativeCalendar PatientDeathDateInAlternativeCalendar
PatientAlternativeCalendar PatientSex ReferencedPatientPhotoSequence QualityControlSubject
ReferencedPatientSequence PatientBirthTime OtherPatientIDsSequence OtherPatientNames EthnicGroup
PatientComments PatientSpeciesDescription PatientSpeciesCodeSequence PatientBreedDescription
PatientBreedCodeSequence BreedRegistrationSequence StrainDescription StrainNomenclature
StrainCodeSequence StrainAdditionalInformation StrainStockSequence GeneticModificationsSequence
ResponsiblePerson ResponsiblePersonRole ResponsibleOrganization PatientIdentityRemoved
DeidentificationMethod DeidentificationMethodCodeSequence SourcePatientGroupIdentificationSequence
GroupOfPatientsIdentificationSequence ClinicalTrialSponsorName ClinicalTrialProtocolID
ClinicalTrialProtocolName ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSubjectID
ClinicalTrialSubjectReadingID ClinicalTrialProtocolEthicsCommitteeName
ClinicalTrialProtocolEthicsCommitteeApprovalNumber
"""
_STUDY = """
StudyInstanceUID StudyDate StudyTime ReferringPhysicianName ReferringPhysicianIdentificationSequence
ConsultingPhysicianName ConsultingPhysicianIdentificationSequence StudyID AccessionNumber
IssuerOfAccessionNumberSequence StudyDescription PhysiciansOfRecord
PhysiciansOfRecordIdentificationSequence NameOfPhysiciansReadingStudy
PhysiciansReadingStudyIdentificationSequence RequestingService RequestingServiceCodeSequence
ReferencedStudySequence ProcedureCodeSequence ReasonForPerformedProcedureCodeSequence
AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence PatientAge PatientSize PatientWeight
PatientBodyMassIndex MeasuredAPDimension MeasuredLateralDimension PatientSizeCodeSequence
MedicalAlerts Allergies SmokingStatus PregnancyStatus LastMenstrualDate PatientState Occupation
AdditionalPatientHistory AdmissionID IssuerOfAdmissionIDSequence ServiceEpisodeID
ServiceEpisodeDescription IssuerOfServiceEpisodeIDSequence PatientSexNeutered ReasonForVisit
ReasonForVisitCodeSequence ClinicalTrialTimePointID ClinicalTrialTimePointDescription
LongitudinalTemporalOffsetFromEvent LongitudinalTemporalEventType ConsentForClinicalTrialUseSequence
"""
_SERIES = """
Modality SeriesInstanceUID SeriesNumber Laterality SeriesDate SeriesTime PerformingPhysicianName
PerformingPhysicianIdentificationSequence ProtocolName SeriesDescription
SeriesDescriptionCodeSequence OperatorsName OperatorIdentificationSequence
ReferencedPerformedProcedureStepSequence RelatedSeriesSequence BodyPartExamined PatientPosition
SmallestPixelValueInSeries LargestPixelValueInSeries RequestAttributesSequence
AnatomicalOrientationType TreatmentSessionUID ClinicalTrialCoordinatingCenterName
ClinicalTrialSeriesID ClinicalTrialSeriesDescription Manufacturer InstitutionName InstitutionAddress
StationName InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence
ManufacturerModelName ManufacturerDeviceClassUID DeviceSerialNumber SoftwareVersions GantryID
UDISequence DeviceUID SpatialResolution DateOfLastCalibration TimeOfLastCalibration
PixelPaddingValue FrameOfReferenceUID PositionReferenceIndicator
"""


def _known(words: str) -> frozenset[str]:
    return frozenset(w for w in words.split() if tag_for_keyword(w) is not None)


LEVEL_KEYWORDS: dict[Level, frozenset[str]] = {
    Level.PATIENT: _known(_PATIENT),
    Level.STUDY: _known(_STUDY),
    Level.SERIES: _known(_SERIES),
}

# Keys HealthImaging generates itself: never updatable, even with force.
GENERATED_KEYS = frozenset(
    {
        "SchemaVersion",
        "DatastoreID",
        "ImageSetID",
        "PixelData",
        "Checksum",
        "Width",
        "Height",
        "MinPixelValue",
        "MaxPixelValue",
        "FrameSizeInBytes",
        "ImageFrames",
        "StoredTransferSyntaxUID",
    }
)

# Identifiers whose change needs force (and is refused on primary image sets).
FORCE_UID_KEYWORDS = frozenset(
    {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"}
)

_HEX_KEY = re.compile(r"[0-9A-Fa-f]{8}")


def level_of(keyword: str) -> Level:
    for level, words in LEVEL_KEYWORDS.items():
        if keyword in words:
            return level
    return Level.INSTANCE


def parse_key(key: str) -> BaseTag | None:
    """A document key (keyword or 8-hex tag) → its tag; None when it names no attribute."""
    if _HEX_KEY.fullmatch(key):
        return Tag(int(key, 16))
    tag = tag_for_keyword(key)
    return None if tag is None else Tag(tag)


def canonical_key(tag: BaseTag) -> str:
    """How HealthImaging spells a tag: its keyword, else (private/unknown) 8 upper-case hex."""
    if not tag.is_private:
        keyword = keyword_for_tag(tag)
        if keyword:
            return str(keyword)
    return f"{int(tag):08X}"


def standard_vr(tag: BaseTag) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def is_multi_valued(tag: BaseTag) -> bool:
    try:
        return str(dictionary_VM(tag)) != "1"
    except KeyError:
        return False
