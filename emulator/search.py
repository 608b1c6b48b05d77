"""SearchImageSets: filters, sort order and the DICOMTags summary of each image set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator import pagination
from emulator.exceptions import ValidationException
from emulator.models import Backend
from emulator.resources import ImageSet

Criteria = dict[str, Any]
_RANGES = frozenset({"createdAt", "updatedAt", "DICOMStudyDateAndTime"})


def search_image_sets(
    backend: Backend,
    datastore_id: str,
    criteria: Criteria | None,
    max_results: int | None,
    token: str | None,
) -> tuple[list[ImageSet], str | None]:
    backend.tick()
    criteria = criteria or {}
    matches = [
        s
        for s in backend.datastore(datastore_id).live_image_sets()
        if all(_matches(s, f) for f in criteria.get("filters") or [])
    ]
    sort = criteria.get("sort") or {"sortField": "updatedAt", "sortOrder": "DESC"}
    key = _SORT_KEYS[sort["sortField"]]
    matches.sort(key=lambda s: (key(s), s.image_set_id), reverse=sort["sortOrder"] == "DESC")
    scope = f"search/{datastore_id}/{sorted(criteria.items())!r}"
    return pagination.page(matches, max_results, token, scope)


def _matches(image_set: ImageSet, search_filter: dict[str, Any]) -> bool:
    values, operator = search_filter["values"], search_filter["operator"]
    attributes = {next(iter(v)) for v in values}
    if len(attributes) != 1:
        raise ValidationException("the values of one filter must name the same attribute")
    attribute = attributes.pop()
    wanted = [v[attribute] for v in values]
    if operator == "EQUAL":
        if len(wanted) != 1:
            raise ValidationException("EQUAL takes exactly one value")
        return _equal(image_set, attribute, wanted[0])
    if len(wanted) != 2 or attribute not in _RANGES:
        raise ValidationException(
            "BETWEEN takes two values of createdAt, updatedAt or a study date"
        )
    current = _attribute(image_set, attribute)
    return current is not None and _comparable(wanted[0]) <= current <= _comparable(wanted[1])


def _equal(image_set: ImageSet, attribute: str, wanted: Any) -> bool:
    if attribute == "DICOMSeriesInstanceUID":
        return wanted in image_set.latest.document["Study"]["Series"]
    current = _attribute(image_set, attribute)
    return current is not None and current == _comparable(wanted)


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):  # DICOMStudyDateAndTime
        return str(value.get("DICOMStudyDate", "")) + str(value.get("DICOMStudyTime") or "")
    return value


def _attribute(image_set: ImageSet, attribute: str) -> Any:
    doc = image_set.latest.document
    getters: dict[str, Callable[[], Any]] = {
        "DICOMPatientId": lambda: doc["Patient"]["DICOM"].get("PatientID"),
        "DICOMAccessionNumber": lambda: doc["Study"]["DICOM"].get("AccessionNumber"),
        "DICOMStudyId": lambda: doc["Study"]["DICOM"].get("StudyID"),
        "DICOMStudyInstanceUID": lambda: doc["Study"]["DICOM"].get("StudyInstanceUID"),
        "createdAt": lambda: image_set.created_at,
        "updatedAt": lambda: image_set.latest.updated_at,
        "DICOMStudyDateAndTime": lambda: _study_date_time(image_set),
        "isPrimary": lambda: image_set.is_primary,
    }
    getter = getters.get(attribute)
    if getter is None:
        raise ValidationException(f"search by {attribute} is not supported")
    return getter()


def _study_date_time(image_set: ImageSet) -> str:
    study = image_set.latest.document["Study"]["DICOM"]
    return str(study.get("StudyDate") or "") + str(study.get("StudyTime") or "")


_SORT_KEYS: dict[str, Callable[[ImageSet], Any]] = {
    "updatedAt": lambda s: s.latest.updated_at,
    "createdAt": lambda s: s.created_at,
    "DICOMStudyDateAndTime": _study_date_time,
}


def dicom_tags(image_set: ImageSet) -> dict[str, Any]:
    """The summary SearchImageSets returns; series fields describe the first series."""
    doc = image_set.latest.document
    patient, study = doc["Patient"]["DICOM"], doc["Study"]["DICOM"]
    series_map = doc["Study"]["Series"]
    first: dict[str, Any] = next(iter(series_map.values()), {"DICOM": {}})["DICOM"]
    tags = {
        "DICOMPatientId": patient.get("PatientID"),
        "DICOMPatientName": patient.get("PatientName"),
        "DICOMPatientBirthDate": patient.get("PatientBirthDate"),
        "DICOMPatientSex": patient.get("PatientSex"),
        "DICOMStudyInstanceUID": study.get("StudyInstanceUID"),
        "DICOMStudyId": study.get("StudyID"),
        "DICOMStudyDescription": study.get("StudyDescription"),
        "DICOMAccessionNumber": study.get("AccessionNumber"),
        "DICOMStudyDate": study.get("StudyDate"),
        "DICOMStudyTime": study.get("StudyTime"),
        "DICOMSeriesInstanceUID": first.get("SeriesInstanceUID"),
        "DICOMSeriesModality": first.get("Modality"),
        "DICOMSeriesBodyPart": first.get("BodyPartExamined"),
    }
    result: dict[str, Any] = {k: v for k, v in tags.items() if isinstance(v, str)}
    result["DICOMNumberOfStudyRelatedSeries"] = len(series_map)
    result["DICOMNumberOfStudyRelatedInstances"] = sum(
        len(s["Instances"]) for s in series_map.values()
    )
    number = str(first.get("SeriesNumber") or "").strip()
    if number.lstrip("+-").isdigit():
        result["DICOMSeriesNumber"] = int(number)
    return result
