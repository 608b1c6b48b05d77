"""CopyImageSet (with promoteToPrimary) and DeleteImageSet: the other writes that lock."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from emulator.exceptions import (
    ConflictException,
    ServiceQuotaExceededException,
    ValidationException,
)
from emulator.models import Backend
from emulator.resources import Document, ImageSet, State, Version
from emulator.state import Job

SERIES_MISMATCH = "INVALID_REQUEST: Series of SourceImageSet and DestinationImageSet don't match."


@dataclass(frozen=True)
class CopyRequest:
    """A CopyImageSet request, as the backend receives it."""

    source_version_id: str
    copiable_attributes: str | None = None
    destination_image_set_id: str | None = None
    destination_version_id: str | None = None
    force: bool = False
    promote_to_primary: bool = False


@dataclass(frozen=True)
class CopyStarted:
    source: ImageSet
    destination: ImageSet


def copy_image_set(
    backend: Backend, datastore_id: str, source_id: str, request: CopyRequest
) -> CopyStarted:
    now = backend.tick()
    source = backend.live_image_set(datastore_id, source_id)
    _check_version(source, request.source_version_id)
    subset = _subset(source.latest.document, request.copiable_attributes)
    _check_copy_capacity(backend, datastore_id)
    destination = _destination(backend, datastore_id, request, subset, now)
    if request.promote_to_primary:
        _check_promotion(backend, datastore_id, destination, subset)
    source_before = (source.latest.state, source.latest.status)
    source.latest.state, source.latest.status = State.LOCKED, "COPYING_WITH_READ_ONLY_ACCESS"

    def finish(at: float) -> None:
        source.latest.state, source.latest.status = source_before
        _finish_copy(destination, subset, request.promote_to_primary, at)

    keys = (source.image_set_id, destination.image_set_id)
    backend.jobs.add(Job(keys, backend.settings.progressions.copy, now, finish))
    return CopyStarted(source, destination)


def _check_version(image_set: ImageSet, version_id: str | None) -> None:
    if image_set.locked:
        raise ConflictException("the image set is locked by another operation")
    if version_id != str(image_set.latest.version_id):
        raise ConflictException("latestVersionId is not the latest version of the image set")


def _subset(document: Document, copiable: str | None) -> Document:
    """The whole document, or the series/instances `copiableAttributes` names."""
    if copiable is None:
        return copy.deepcopy(document)
    try:
        wanted = json.loads(copiable)
        wanted_series: dict[str, Any] = wanted["Study"]["Series"]
    except (ValueError, KeyError, TypeError):
        raise ValidationException(
            "copiableAttributes must name series under Study.Series"
        ) from None
    result = copy.deepcopy(document)
    result["Study"]["Series"] = {
        uid: _series_subset(document, uid, spec) for uid, spec in wanted_series.items()
    }
    return result


def _series_subset(document: Document, uid: str, spec: Any) -> Document:
    series = document["Study"]["Series"].get(uid)
    if series is None or not isinstance(spec, dict):
        raise ValidationException("copiableAttributes names a series that is not in the source")
    picked = copy.deepcopy(series)
    instances = spec.get("Instances")
    if instances:
        missing = [sop for sop in instances if sop not in series["Instances"]]
        if missing:
            raise ValidationException(
                "copiableAttributes names an instance that is not in the source"
            )
        picked["Instances"] = {sop: picked["Instances"][sop] for sop in instances}
    result: Document = picked
    return result


def _check_copy_capacity(backend: Backend, datastore_id: str) -> None:
    quotas = backend.settings.quotas
    busy = sum(
        1 for s in backend.datastore(datastore_id).live_image_sets() if s.latest.status == "COPYING"
    )
    if quotas.enforce and busy >= quotas.concurrent_copies_per_datastore:
        raise ServiceQuotaExceededException("too many concurrent copies in this data store")


def _destination(
    backend: Backend, datastore_id: str, request: CopyRequest, subset: Document, now: float
) -> ImageSet:
    if request.destination_image_set_id is None:
        created = backend.add_image_set(datastore_id, subset, is_primary=False, status="COPYING")
        created.latest.state = State.LOCKED
        created.latest.forced = request.force
        return created
    destination = backend.live_image_set(datastore_id, request.destination_image_set_id)
    _check_version(destination, request.destination_version_id)
    previous = destination.latest
    destination.add_version(
        Version(
            previous.version_id + 1,
            previous.document,
            State.LOCKED,
            "COPYING",
            now,
            now,
            forced=request.force,
        )
    )
    return destination


def _check_promotion(
    backend: Backend, datastore_id: str, destination: ImageSet, subset: Document
) -> None:
    """A study's instances live in at most one primary image set."""
    sops = {sop for s in subset["Study"]["Series"].values() for sop in s["Instances"]}
    for other in backend.datastore(datastore_id).live_image_sets():
        if other is not destination and other.is_primary and other.sop_uids() & sops:
            raise ConflictException("a primary image set already holds these instances")


def _finish_copy(destination: ImageSet, subset: Document, promote: bool, at: float) -> None:
    version = destination.latest
    merged = _merge(version.document, subset) if version.version_id > 1 else subset
    if merged is None:
        version.state, version.status, version.message = (
            State.ACTIVE,
            "COPY_FAILED",
            SERIES_MISMATCH,
        )
        version.updated_at = at
        return
    merged.update(DatastoreID=destination.datastore_id, ImageSetID=destination.image_set_id)
    version.document = merged
    version.state, version.status, version.updated_at = State.ACTIVE, "COPIED", at
    destination.is_primary = destination.is_primary or promote


def _merge(target: Document, subset: Document) -> Document | None:
    """Add the copied series/instances to the destination; None when the studies do not match."""
    study_uid = target["Study"]["DICOM"].get("StudyInstanceUID")
    if study_uid != subset["Study"]["DICOM"].get("StudyInstanceUID"):
        return None
    merged = copy.deepcopy(target)
    for uid, series in subset["Study"]["Series"].items():
        existing = merged["Study"]["Series"].get(uid)
        if existing is None:
            merged["Study"]["Series"][uid] = copy.deepcopy(series)
        elif existing["DICOM"] != series["DICOM"]:
            return None
        else:
            existing["Instances"].update(copy.deepcopy(series["Instances"]))
    result: Document = merged
    return result


def delete_image_set(backend: Backend, datastore_id: str, image_set_id: str) -> ImageSet:
    now = backend.tick()
    image_set = backend.live_image_set(datastore_id, image_set_id)
    if image_set.locked:
        raise ConflictException("the image set is locked by another operation")
    image_set.latest.state, image_set.latest.status = State.LOCKED, "DELETING"

    def finish(at: float) -> None:
        image_set.deleted_at = at
        for version in image_set.versions:
            version.state, version.deleted_at = State.DELETED, at
        image_set.latest.status, image_set.latest.updated_at = "DELETED", at

    backend.jobs.add(Job((image_set_id,), backend.settings.progressions.delete, now, finish))
    return image_set
