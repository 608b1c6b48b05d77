"""HealthImaging's resources as the emulator keeps them: data stores, image sets, versions, jobs."""

from __future__ import annotations

import gzip
import json
import secrets
import string
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from emulator.exceptions import ConflictException, ResourceNotFoundException

Document = dict[str, Any]
_ID_ALPHABET = string.digits + string.ascii_lowercase


def new_id(length: int = 32) -> str:
    """A HealthImaging-style identifier: `[0-9a-z]{32}`."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


class State(StrEnum):
    ACTIVE = "ACTIVE"
    LOCKED = "LOCKED"
    DELETED = "DELETED"


@dataclass
class Version:
    """One version of an image set: its metadata and the outcome of the work that produced it."""

    version_id: int
    document: Document
    state: State
    status: str
    created_at: float
    updated_at: float
    message: str | None = None
    forced: bool = False
    deleted_at: float | None = None

    def metadata_blob(self) -> bytes:
        return gzip.compress(json.dumps(self.document).encode(), mtime=0)


@dataclass
class ImageSet:
    datastore_id: str
    image_set_id: str
    arn: str
    is_primary: bool
    created_at: float
    versions: list[Version] = field(default_factory=list)
    deleted_at: float | None = None
    last_accessed_at: float | None = None

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    @property
    def locked(self) -> bool:
        return self.latest.state is State.LOCKED

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def version(self, version_id: str | None) -> Version:
        if version_id is None:
            return self.latest
        number = int(version_id)
        if not 1 <= number <= len(self.versions):
            raise ResourceNotFoundException("the image set version does not exist")
        return self.versions[number - 1]

    @property
    def study_uid(self) -> str:
        return str(self.latest.document["Study"]["DICOM"].get("StudyInstanceUID", ""))

    def sop_uids(self) -> set[str]:
        series = self.latest.document["Study"]["Series"].values()
        return {uid for s in series for uid in s.get("Instances", {})}

    def add_version(self, version: Version) -> None:
        """Versions are numbered 1, 2, 3… with no gap (the admin rewind alone reuses them)."""
        assert version.version_id == len(self.versions) + 1
        self.versions.append(version)

    def rewind(self) -> None:
        """Forget every version after the first: the image set is back as it was seeded.

        Only the admin endpoint does this (AWS never reuses a version id), so that every AWS
        example, each written for version 1, can run in turn on one emulator.
        """
        if self.locked:
            raise ConflictException("the image set is locked; wait for its update to finish")
        del self.versions[1:]


class DatastoreStatus(StrEnum):
    CREATING = "CREATING"
    CREATE_FAILED = "CREATE_FAILED"
    ACTIVE = "ACTIVE"
    DELETING = "DELETING"
    DELETED = "DELETED"


@dataclass
class Datastore:
    datastore_id: str
    name: str
    arn: str
    status: DatastoreStatus
    created_at: float
    updated_at: float
    client_token: str = ""
    kms_key_arn: str | None = None
    lambda_authorizer_arn: str | None = None
    lossless_storage_format: str | None = None
    image_sets: dict[str, ImageSet] = field(default_factory=dict)
    import_jobs: dict[str, ImportJob] = field(default_factory=dict)

    def image_set(self, image_set_id: str) -> ImageSet:
        found = self.image_sets.get(image_set_id)
        if found is None:
            raise ResourceNotFoundException("the image set does not exist")
        return found

    def live_image_sets(self) -> list[ImageSet]:
        return [s for s in self.image_sets.values() if not s.deleted]


class JobStatus(StrEnum):
    SUBMITTED = "SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass
class ImportJob:
    job_id: str
    job_name: str
    datastore_id: str
    status: JobStatus
    data_access_role_arn: str
    input_s3_uri: str
    output_s3_uri: str
    submitted_at: float
    client_token: str = ""
    ended_at: float | None = None
    message: str | None = None
    image_set_ids: list[str] = field(default_factory=list)
