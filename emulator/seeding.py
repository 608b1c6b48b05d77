"""Seeding: DICOM files or folders → image sets in a data store (one per StudyInstanceUID)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from emulator.dicom_import import build_document, group_by_study, read_instances
from emulator.exceptions import ValidationException
from emulator.models import Backend
from emulator.resources import DatastoreStatus, ImageSet


def seed(
    backend: Backend,
    paths: Iterable[Path],
    datastore_id: str | None,
    *,
    is_primary: bool,
    image_set_id: str | None = None,
) -> tuple[str, list[ImageSet]]:
    """Import the files synchronously; a missing data store is created (ACTIVE at once)."""
    studies = group_by_study(read_instances(paths))
    if image_set_id is not None and len(studies) != 1:
        raise ValidationException("an explicit imageSetId needs files of exactly one study")
    datastore_id = ensure_datastore(backend, datastore_id)
    image_sets = [
        backend.add_image_set(
            datastore_id,
            build_document(instances),
            is_primary=is_primary,
            image_set_id=image_set_id,
        )
        for instances in studies.values()
    ]
    return datastore_id, image_sets


def ensure_datastore(backend: Backend, datastore_id: str | None) -> str:
    if datastore_id is not None and datastore_id in backend.datastores:
        return datastore_id
    datastore = backend.create_datastore("emulator-seed", "", datastore_id=datastore_id)
    datastore.status = DatastoreStatus.ACTIVE
    return datastore.datastore_id
