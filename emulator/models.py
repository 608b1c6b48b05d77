"""The backend: owns every data store, image set and version, and HealthImaging's rules."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from emulator import pagination
from emulator.config import Faults, Settings
from emulator.exceptions import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from emulator.resources import (
    Datastore,
    DatastoreStatus,
    Document,
    ImageSet,
    State,
    Version,
    new_id,
)
from emulator.state import Job, JobTable, Progression, Trigger
from emulator.updates import (
    MetadataUpdate,
    UpdateFailed,
    apply_changes,
    decode_blob,
    plan_update,
)

SIMULATED_FAILURE = "INTERNAL_ERROR: simulated update failure"


@dataclass(frozen=True)
class _PlannedUpdate:
    """What an accepted update will do to each image set it touches."""

    target: ImageSet
    siblings: tuple[ImageSet, ...]
    build: Callable[[ImageSet, bool], Document]


class Backend:
    """All state of one emulated account and region."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.faults: Faults = settings.faults
        self.clock = clock
        self.rng = rng or random.Random(settings.random_seed)
        self.datastores: dict[str, Datastore] = {}
        self.jobs = JobTable()
        self.tags: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------ time and lookups

    def tick(self) -> float:
        """Advance every due asynchronous job; every public call starts here."""
        now = self.clock()
        self.jobs.advance(now)
        return now

    def datastore(self, datastore_id: str) -> Datastore:
        found = self.datastores.get(datastore_id)
        if found is None or found.status is DatastoreStatus.DELETED:
            raise ResourceNotFoundException("the data store does not exist")
        return found

    def image_set(self, datastore_id: str, image_set_id: str) -> ImageSet:
        image_set = self.datastore(datastore_id).image_set(image_set_id)
        self.jobs.observe(image_set_id)
        return image_set

    def live_image_set(self, datastore_id: str, image_set_id: str) -> ImageSet:
        image_set = self.image_set(datastore_id, image_set_id)
        if image_set.deleted:
            raise ResourceNotFoundException("the image set has been deleted")
        return image_set

    def arn(self, *parts: str) -> str:
        base = f"arn:aws:medical-imaging:{self.settings.region}:{self.settings.account_id}"
        return f"{base}:" + "/".join(parts)

    # ------------------------------------------------------------ data stores

    def create_datastore(
        self,
        name: str | None,
        client_token: str,
        *,
        datastore_id: str | None = None,
        kms_key_arn: str | None = None,
        lambda_authorizer_arn: str | None = None,
        lossless_storage_format: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Datastore:
        now = self.tick()
        for existing in self.datastores.values():
            if client_token and existing.client_token == client_token:
                return existing  # the client token makes retries idempotent
        new = datastore_id or new_id()
        if new in self.datastores:
            raise ConflictException("a data store with this id already exists")
        datastore = Datastore(
            new,
            name or new,
            self.arn("datastore", new),
            DatastoreStatus.CREATING,
            now,
            now,
            client_token,
            kms_key_arn,
            lambda_authorizer_arn,
            lossless_storage_format,
        )
        self.datastores[new] = datastore
        self.tags[datastore.arn] = dict(tags or {})
        self._schedule(
            datastore.datastore_id,
            self.settings.progressions.datastore,
            now,
            lambda at: _set_status(datastore, DatastoreStatus.ACTIVE, at),
        )
        return datastore

    def get_datastore(self, datastore_id: str) -> Datastore:
        self.tick()
        self.jobs.observe(datastore_id)
        return self.datastore(datastore_id)

    def list_datastores(
        self, status: str | None, max_results: int | None, next_token: str | None
    ) -> tuple[list[Datastore], str | None]:
        self.tick()
        matching = [d for d in self.datastores.values() if status is None or d.status == status]
        return pagination.page(matching, max_results, next_token, f"datastores/{status}")

    def delete_datastore(self, datastore_id: str) -> Datastore:
        now = self.tick()
        datastore = self.datastore(datastore_id)
        if datastore.live_image_sets():
            raise ConflictException("the data store still holds image sets")
        if datastore.status is not DatastoreStatus.ACTIVE:
            raise ConflictException("the data store is not ACTIVE")
        _set_status(datastore, DatastoreStatus.DELETING, now)
        self._schedule(
            datastore_id,
            self.settings.progressions.delete,
            now,
            lambda at: _set_status(datastore, DatastoreStatus.DELETED, at),
        )
        return datastore

    def active_datastore(self, datastore_id: str) -> Datastore:
        datastore = self.datastore(datastore_id)
        if datastore.status is not DatastoreStatus.ACTIVE:
            raise ConflictException("the data store is not ACTIVE")
        return datastore

    def _schedule(
        self, key: str, progression: Progression, now: float, finish: Callable[[float], None]
    ) -> None:
        self.jobs.add(Job((key,), progression, now, finish))

    # ------------------------------------------------------------ image sets

    def add_image_set(
        self,
        datastore_id: str,
        document: Document,
        *,
        is_primary: bool,
        status: str = "CREATED",
        image_set_id: str | None = None,
    ) -> ImageSet:
        """A new image set at version 1 (seeding, import, copy)."""
        now = self.clock()
        datastore = self.datastore(datastore_id)
        set_id = image_set_id or new_id()
        if set_id in datastore.image_sets:
            raise ConflictException("an image set with this id already exists")
        doc = {**document, "DatastoreID": datastore_id, "ImageSetID": set_id}
        image_set = ImageSet(
            datastore_id,
            set_id,
            self.arn("datastore", datastore_id, "imageset", set_id),
            is_primary,
            now,
        )
        image_set.add_version(Version(1, doc, State.ACTIVE, status, now, now))
        datastore.image_sets[set_id] = image_set
        return image_set

    def get_image_set(
        self, datastore_id: str, image_set_id: str, version_id: str | None
    ) -> tuple[ImageSet, Version]:
        self.tick()
        image_set = self.image_set(datastore_id, image_set_id)
        image_set.last_accessed_at = self.clock()
        return image_set, self._readable(image_set, version_id)

    def get_image_set_metadata(
        self, datastore_id: str, image_set_id: str, version_id: str | None
    ) -> bytes:
        self.tick()
        image_set = self.live_image_set(datastore_id, image_set_id)
        image_set.last_accessed_at = self.clock()
        return self._readable(image_set, version_id).metadata_blob()

    def _readable(self, image_set: ImageSet, version_id: str | None) -> Version:
        """The version a read sees: without a version id, the one before the latest while the
        latest is younger than the `read_lag_ms` fault (a read replica not caught up yet)."""
        latest = image_set.version(version_id)
        lag = self.faults.read_lag_ms / 1000
        young = self.clock() - latest.created_at < lag
        if version_id is None and young and len(image_set.versions) > 1:
            return image_set.versions[-2]
        return latest

    def list_image_set_versions(
        self, datastore_id: str, image_set_id: str, max_results: int | None, next_token: str | None
    ) -> tuple[list[Version], ImageSet, str | None]:
        """Newest first, as the AWS CLI example shows."""
        self.tick()
        image_set = self.image_set(datastore_id, image_set_id)
        newest_first = list(reversed(image_set.versions))
        page, token = pagination.page(
            newest_first, max_results, next_token, f"versions/{image_set_id}"
        )
        return page, image_set, token

    # ------------------------------------------------------------ updates

    def update_image_set_metadata(
        self, datastore_id: str, image_set_id: str, request: MetadataUpdate
    ) -> tuple[ImageSet, Version]:
        now = self.tick()
        target = self.live_image_set(datastore_id, image_set_id)
        self._check_writable(target, request.latest_version_id)
        planned = self._plan(target, request)
        self._check_update_capacity(datastore_id, 1 + len(planned.siblings))
        if self.settings.content_checks == "sync":
            self._build_or_refuse(planned)
        version = self._start_update(planned, request.force, now)
        return target, version

    def _check_writable(self, image_set: ImageSet, latest_version_id: str) -> None:
        if image_set.locked:
            raise ConflictException("the image set is locked by another operation")
        if latest_version_id != str(image_set.latest.version_id):
            raise ConflictException("latestVersionId is not the latest version of the image set")

    def _plan(self, target: ImageSet, request: MetadataUpdate) -> _PlannedUpdate:
        if request.revert_to_version_id is not None:
            return self._plan_revert(target, request)
        blobs = [b for b in (request.updatable, request.removable) if b is not None]
        if not blobs:
            raise ValidationException(
                "DICOMUpdates must hold updatableAttributes or removableAttributes"
            )
        limit = self.settings.quotas.max_update_payload_bytes
        if self.settings.quotas.enforce and sum(len(b) for b in blobs) > limit:
            raise ServiceQuotaExceededException("the update payload exceeds the payload size quota")
        updatable = self._blob(request.updatable, "updatableAttributes")
        removable = self._blob(request.removable, "removableAttributes")
        changes = plan_update(
            updatable, removable, force=request.force, is_primary=target.is_primary
        )
        siblings = self._study_siblings(target) if request.include_study_image_sets else ()
        if siblings:
            # Siblings are primary image sets: their restrictions apply to the shared update.
            plan_update(updatable, removable, force=request.force, is_primary=True)
            if any(s.locked for s in siblings):
                raise ConflictException("an image set of the study is locked by another operation")

        def build(image_set: ImageSet, strict: bool) -> Document:
            # The pending version still carries the previous document until the update lands.
            return apply_changes(image_set.latest.document, changes, strict=strict)

        return _PlannedUpdate(target, siblings, build)

    def _blob(self, blob: bytes | None, name: str) -> Document | None:
        if blob is None:
            return None
        return decode_blob(blob, name, lenient_base64=self.settings.lenient_base64_blobs)

    def _plan_revert(self, target: ImageSet, request: MetadataUpdate) -> _PlannedUpdate:
        if request.include_study_image_sets:
            raise ValidationException(
                "includeStudyImageSets is not supported with revertToVersionId"
            )
        wanted = request.revert_to_version_id or ""
        if not wanted.isdigit() or not 1 <= int(wanted) <= len(target.versions):
            raise ValidationException("revertToVersionId does not name a version of this image set")
        source = target.versions[int(wanted) - 1].document

        def build(image_set: ImageSet, strict: bool) -> Document:
            return copy.deepcopy(source)

        return _PlannedUpdate(target, (), build)

    def _study_siblings(self, target: ImageSet) -> tuple[ImageSet, ...]:
        datastore = self.datastore(target.datastore_id)
        return tuple(
            s
            for s in datastore.live_image_sets()
            if s is not target and s.is_primary and s.study_uid == target.study_uid
        )

    def _check_update_capacity(self, datastore_id: str, wanted: int) -> None:
        quotas = self.settings.quotas
        if not quotas.enforce:
            return
        busy = sum(
            1
            for s in self.datastore(datastore_id).live_image_sets()
            if s.locked and s.latest.status.startswith("UPDATING")
        )
        if busy + wanted > quotas.concurrent_updates_per_datastore:
            raise ServiceQuotaExceededException("too many concurrent updates in this data store")

    def _build_or_refuse(self, planned: _PlannedUpdate) -> None:
        try:
            planned.build(planned.target, True)
        except UpdateFailed as failure:
            raise ValidationException(failure.message) from None

    def _start_update(self, planned: _PlannedUpdate, force: bool, now: float) -> Version:
        members = (planned.target, *planned.siblings)
        for image_set in members:
            status = "UPDATING" if image_set is planned.target else "UPDATING_FOR_STUDY_CONSISTENCY"
            previous = image_set.latest
            image_set.add_version(
                Version(
                    previous.version_id + 1,
                    previous.document,
                    State.LOCKED,
                    status,
                    now,
                    now,
                    forced=force,
                )
            )
        outcome = self._dice_for_update()

        def finish(at: float) -> None:
            self._finish_update(planned, outcome, at)

        keys = tuple(s.image_set_id for s in members)
        self.jobs.add(Job(keys, self._update_progression(outcome), now, finish))
        return planned.target.latest

    def _dice_for_update(self) -> str:
        faults = self.faults
        roll = self.rng.random()
        if roll < faults.update_stall_rate:
            return "stall"
        if roll < faults.update_stall_rate + faults.update_failure_rate:
            return "fail"
        return "apply"

    def _update_progression(self, outcome: str) -> Progression:
        return (
            Progression(Trigger.NEVER, 0)
            if outcome == "stall"
            else self.settings.progressions.update
        )

    def _finish_update(self, planned: _PlannedUpdate, outcome: str, at: float) -> None:
        """All image sets of one update succeed or fail together (the update is atomic)."""
        members = (planned.target, *planned.siblings)
        try:
            if outcome == "fail":
                raise UpdateFailed(SIMULATED_FAILURE)
            documents = [planned.build(s, s is planned.target) for s in members]
        except UpdateFailed as failure:
            for image_set in members:
                _settle(image_set.latest, "UPDATE_FAILED", at, failure.message)
            return
        for image_set, document in zip(members, documents, strict=True):
            document.update(DatastoreID=image_set.datastore_id, ImageSetID=image_set.image_set_id)
            image_set.latest.document = document
            _settle(image_set.latest, "UPDATED", at, None)

    # ------------------------------------------------------------ tagging

    def tag_resource(self, arn: str, tags: dict[str, str]) -> None:
        self.tick()
        self._check_arn(arn)
        self.tags.setdefault(arn, {}).update(tags)

    def untag_resource(self, arn: str, keys: list[str]) -> None:
        self.tick()
        self._check_arn(arn)
        for key in keys:
            self.tags.get(arn, {}).pop(key, None)

    def list_tags_for_resource(self, arn: str) -> dict[str, str]:
        self.tick()
        self._check_arn(arn)
        return dict(self.tags.get(arn, {}))

    def _check_arn(self, arn: str) -> None:
        """The ARN must name a live data store or image set of this account and region."""
        prefix = self.arn("datastore", "")
        parts = arn.removeprefix(prefix).split("/") if arn.startswith(prefix) else []
        if len(parts) == 1:
            self.datastore(parts[0])
        elif len(parts) == 3 and parts[1] == "imageset":
            self.live_image_set(parts[0], parts[2])
        else:
            raise ResourceNotFoundException("the resource does not exist")

    # ------------------------------------------------------------ fault knobs

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def release_stalled(self) -> int:
        return self.jobs.release_stalled(self.clock())

    def reset(self) -> None:
        """Forget every resource and pending job (tests start from a clean account)."""
        self.datastores.clear()
        self.jobs = JobTable()
        self.tags.clear()


def _set_status(datastore: Datastore, status: DatastoreStatus, at: float) -> None:
    datastore.status = status
    datastore.updated_at = at


def _settle(version: Version, status: str, at: float, message: str | None) -> None:
    version.state = State.ACTIVE
    version.status = status
    version.updated_at = at
    version.message = message
