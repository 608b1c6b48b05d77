"""In-memory stand-ins for the runner's I/O: a journal shared by replicas, and one image set."""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from service.admission.budget import Budget
from service.admission.stages import Stages, shared_stages
from service.admission.write_queue import Admission
from service.core.config import AdmissionSettings, BackendSettings, BudgetSettings, WatchSettings
from service.core.errors import Aborted, NotFound
from service.core.model import (
    Caller,
    Decision,
    ImageSetKey,
    ImageSetStatus,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
)
from service.journal import Journal, at_rest, fingerprint, is_stale, key_digest
from service.normaliser.updates import DEFAULT_LIMITS, normalise
from service.observability.metrics import Metrics
from service.operations.event_streams import Streams
from service.operations.events import Event, Finished
from service.operations.image_set_polls import Watcher
from service.operations.runner import Runner

DATASTORE = "0123456789abcdef0123456789abcdef"
IMAGE_SET = "fedcba9876543210fedcba9876543210"
CALLER = Caller("dev:alice", "dev")
ALLOWED = Decision(True, (), "decision-1")
FAST = WatchSettings(
    first_poll_seconds=0.0,
    initial_interval_seconds=0.01,
    max_interval_seconds=0.02,
    jitter=0.0,
    heartbeat_seconds=5.0,
    timeout_seconds=30.0,
)


def update_request(key: str = "", latest_version_id: str = "1") -> UpdateRequest:
    """A valid update of the study's description (what the normaliser accepts)."""
    document = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHEST"}}}
    return UpdateRequest(
        datastore_id=DATASTORE,
        image_set_id=IMAGE_SET,
        latest_version_id=latest_version_id,
        force=False,
        include_study_image_sets=False,
        updatable_attributes=json.dumps(document).encode(),
        removable_attributes=None,
        revert_to_version_id=None,
        kind="dicom_updates",
        idempotency_key=key,
    )


def new_record(request: UpdateRequest, operation_id: str = "op-1") -> OperationRecord:
    plan = normalise(request, DEFAULT_LIMITS)
    return OperationRecord(
        id=operation_id,
        principal=CALLER.principal,
        auth_method=CALLER.auth_method,
        roles=CALLER.roles,
        request=request,
        decision=ALLOWED,
        fingerprint=fingerprint(request),
        created_at=1.0,
        deadline=None,
        seq=1,
        touched=plan.touched_tags(),
    )


# --- the journal --------------------------------------------------------------------------------


@dataclass
class Shared:
    """What every replica's journal sees: records with their owners, keys, holds, live leases."""

    records: dict[str, OperationRecord] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)
    in_flight: dict[ImageSetKey, str] = field(default_factory=dict)
    leases: set[str] = field(default_factory=set)
    writes: list[tuple[str, str, str]] = field(default_factory=list)
    """(replica, operation id, state) of every write, in order."""

    def states(self, operation_id: str) -> list[str]:
        return [state for _, op, state in self.writes if op == operation_id]


class MemoryJournal:
    """The Journal protocol over `Shared`, for one replica; records are stored at rest, as the
    real journals store them (no document once HealthImaging has acknowledged the submit)."""

    def __init__(self, shared: Shared, replica: str, *, is_shared: bool = False) -> None:
        self.store = shared
        self.replica = replica
        self.shared = is_shared
        self.published: list[Mapping[str, Any]] = []
        shared.leases.add(replica)

    def write(self, record: OperationRecord) -> None:
        """Store `record` as this replica's (what `create` and `save` do once allowed)."""
        self.store.records[record.id] = at_rest(record)
        self.store.owners[record.id] = self.replica
        self.store.writes.append((self.replica, record.id, record.state))

    async def create(self, record: OperationRecord) -> OperationRecord:
        key = record.request.idempotency_key
        if key and (earlier := self._named(record.principal, key)) is not None:
            return earlier
        if key:
            self.store.keys[(record.principal, key_digest(key))] = record.id
        self.write(record)
        return record

    async def save(self, record: OperationRecord) -> bool:
        if self.store.owners.get(record.id) != self.replica:
            return False
        self.write(record)
        return True

    async def get(self, operation_id: str) -> OperationRecord | None:
        return self.store.records.get(operation_id)

    async def by_key(self, principal: str, key: str) -> OperationRecord | None:
        return self._named(principal, key)

    def _named(self, principal: str, key: str) -> OperationRecord | None:
        operation_id = self.store.keys.get((principal, key_digest(key)))
        return self.store.records.get(operation_id) if operation_id else None

    async def forget_key(self, principal: str, key: str, operation_id: str) -> None:
        if self.store.keys.get((principal, key_digest(key))) == operation_id:
            del self.store.keys[(principal, key_digest(key))]

    async def take_over(self) -> list[OperationRecord]:
        taken = [
            record
            for record in self.store.records.values()
            if not record.finished and self.store.owners[record.id] not in self.store.leases
        ]
        for record in taken:
            self.store.owners[record.id] = self.replica
        return sorted(taken, key=lambda record: record.created_at)

    async def adopt(self, operation_id: str) -> OperationRecord | None:
        record = self.store.records.get(operation_id)
        if record is None or record.state != "unwatched":
            return None
        self.store.owners[operation_id] = self.replica
        return record

    async def restore(self, record: OperationRecord) -> OperationRecord:
        self.write(record)
        return record

    async def records(self) -> list[OperationRecord]:
        return sorted(self.store.records.values(), key=lambda record: record.created_at)

    async def cancel_queued(self, cancelled: OperationRecord) -> str:
        held = self.store.records.get(cancelled.id)
        if held is None or held.state != "queued":
            return held.state if held is not None else ""
        self.write(cancelled)
        self.store.owners[cancelled.id] = ""  # its owner can no longer save it
        return "queued"

    async def snapshot(self) -> Mapping[ImageSetKey, str]:
        return dict(self.store.in_flight)

    async def mark(self, key: ImageSetKey, operation_id: str) -> bool:
        return self.store.in_flight.setdefault(key, operation_id) == operation_id

    async def release(self, key: ImageSetKey, operation_id: str) -> None:
        if self.store.in_flight.get(key) == operation_id:
            del self.store.in_flight[key]

    async def stale(self, operation_id: str) -> bool:
        return is_stale(self.store.records.get(operation_id))

    def publish(self, operation_id: str, event: Mapping[str, Any]) -> None:
        self.published.append(event)

    def subscribe(
        self, operation_id: str
    ) -> contextlib.AbstractAsyncContextManager[Any]:  # pragma: no cover - local streams only
        raise NotImplementedError("these tests stream operations run by the same runner")


# --- HealthImaging ------------------------------------------------------------------------------


class ImageSet:
    """HealthImaging holding one image set, as the runner uses it (submit and GetImageSet).

    A submitted version stays LOCKED/UPDATING for `reads` GetImageSet calls on it (forever while
    `stuck`), then becomes ACTIVE with `outcome` as its workflow status.
    """

    longest_call_seconds = 0.0
    """No call of this stand-in can land later than it answers."""

    def __init__(self, outcome: str = "UPDATED", reads: int = 2) -> None:
        self.versions: dict[str, tuple[str, str]] = {"1": ("ACTIVE", "CREATED")}
        self.documents: dict[str, dict[str, Any]] = {"1": {"Study": {"DICOM": {}}}}
        self.outcome = outcome
        self.reads = reads
        self.reads_left = 0
        self.stuck = False
        self.submits = 0
        self.lagging_reads = 0
        """The next this many reads of the latest version still show the one before it."""

    @property
    def latest(self) -> str:
        return max(self.versions, key=int)

    def status(self, version: str) -> ImageSetStatus:
        state, workflow = self.versions[version]
        return ImageSetStatus(DATASTORE, IMAGE_SET, version, state, workflow)

    def land(self, plan: UpdatePlan) -> ImageSetStatus:
        """A submit reaching HealthImaging (whether or not its answer reaches the caller)."""
        assert plan.latest_version_id == self.latest, "a stale submit would be a conflict"
        version = str(int(self.latest) + 1)
        self.versions[version] = ("LOCKED", "UPDATING")
        document = copy.deepcopy(self.documents[plan.latest_version_id])
        _merge(document, json.loads(plan.updatable_attributes or b"{}"))
        self.documents[version] = document
        self.reads_left = self.reads
        return self.status(version)

    async def update(self, plan: UpdatePlan) -> ImageSetStatus:
        self.submits += 1
        if plan.latest_version_id != self.latest:  # HealthImaging's compare-and-set
            raise Aborted("ConflictException: version changed", reason="BACKEND_CONFLICT")
        return self.land(plan)

    def land_theirs(self) -> ImageSetStatus:
        """Someone else's update of the latest version (it wins the compare-and-set)."""
        document = {"Study": {"DICOM": {"StudyDescription": "SOMEONE ELSE"}}}
        plan = normalise(update_request(latest_version_id=self.latest), DEFAULT_LIMITS)
        return self.land(replace(plan, updatable_attributes=json.dumps(document).encode()))

    async def get_image_set(
        self, datastore_id: str, image_set_id: str, version_id: str = ""
    ) -> ImageSetStatus:
        version = version_id or self.latest
        if not version_id and self.lagging_reads > 0:
            self.lagging_reads -= 1
            return self.status(str(int(version) - 1))  # a read replica not caught up yet
        if version not in self.versions:
            raise NotFound(f"no version {version}")
        if self.versions[version][0] == "LOCKED" and not self.stuck:
            self.reads_left -= 1
            if self.reads_left <= 0:
                self.versions[version] = ("ACTIVE", self.outcome)
        return self.status(version)

    async def image_set_metadata(
        self, datastore_id: str, image_set_id: str, version_id: str = ""
    ) -> bytes:
        version = version_id or self.latest
        if version not in self.documents:
            raise NotFound(f"no version {version}")
        return gzip.compress(json.dumps(self.documents[version]).encode())


def _merge(document: dict[str, Any], updates: Mapping[str, Any]) -> None:
    for name, value in updates.items():
        if name == "SchemaVersion":
            continue
        if isinstance(value, Mapping):
            _merge(document.setdefault(name, {}), value)
        else:
            document[name] = value


# --- one replica's runner -----------------------------------------------------------------------


@dataclass
class Replica:
    """A runner with its journal, admission and watcher (and the streams reading it)."""

    runner: Runner
    streams: Streams
    journal: MemoryJournal
    admission: Admission
    watcher: Watcher
    stages: Stages

    async def events(self, record: OperationRecord) -> list[Event]:
        """A stream of the operation until its end (an error ending it is raised)."""
        seen: list[Event] = []
        async for event in self.streams.follow(record):
            seen.append(event)
        assert isinstance(seen[-1], Finished)
        return seen


@contextlib.asynccontextmanager
async def replica(
    journal: Journal, image_set: ImageSet, settings: WatchSettings = FAST
) -> AsyncIterator[Replica]:
    """A runner with a real watcher and admission, a disabled budget, and `journal`."""
    metrics = Metrics()
    budget_settings = BudgetSettings(enabled=False)
    async with Budget.open(budget_settings, BackendSettings(), "", "test", metrics) as budget:
        backend: Any = image_set  # HealthImaging's submit and GetImageSet, scripted
        stages = shared_stages(AdmissionSettings(), DEFAULT_LIMITS, budget, metrics)
        watcher = Watcher(backend, stages.polls, settings, metrics)
        admission = Admission(AdmissionSettings(), budget, journal, metrics, stages.flows)
        admission.start()
        runner = Runner(
            backend, watcher, admission, budget, journal, settings, metrics, DEFAULT_LIMITS
        )
        streams = Streams(runner, journal, settings.heartbeat_seconds)
        assert isinstance(journal, MemoryJournal)
        try:
            yield Replica(runner, streams, journal, admission, watcher, stages)
        finally:
            await runner.close()
            await admission.close()
            await watcher.close()


def plan_of(record: OperationRecord) -> UpdatePlan:
    return normalise(record.request, DEFAULT_LIMITS)
