"""Journal records: what is kept of an operation, and its at-rest form (JSON, sealed if keyed).

The update's document (the attribute blobs) is patient data. A record keeps it only while a
submit may still need it (`queued`, `submitting`); once HealthImaging has acknowledged the
submit, or the operation has failed, the journal stores the record without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, cast, get_args

import structlog

from service.dicom import Level
from service.healthimaging import ImageSetStatus
from service.policy import Decision
from service.sealing import Sealer, UnreadableRecord
from service.updates import Action, AttributeChange, UpdatePlan, UpdateRequest

log = structlog.get_logger(__name__)

State = Literal["queued", "submitting", "submitted", "unwatched", "finished", "failed"]
"""`unwatched`: submitted, but nobody follows it any more (the watch timed out); the next
WatchUpdate adopts it and watches again."""
FINISHED: frozenset[str] = frozenset({"finished", "failed"})
RESUBMITTABLE: frozenset[str] = frozenset({"queued", "submitting"})
"""States in which the operation may still submit, so its record keeps the document."""


@dataclass(frozen=True)
class RecordedError:
    """How an operation failed, as the caller was (and will again be) told."""

    code: str  # grpc.StatusCode name
    reason: str
    message: str
    retry_after_seconds: float = 0.0


@dataclass(frozen=True)
class OperationRecord:
    """Everything needed to re-stream an operation, or to resume it after a restart."""

    id: str
    principal: str
    auth_method: str
    roles: tuple[str, ...]
    request: UpdateRequest
    """Without its document once the operation can no longer submit (see `at_rest`)."""
    decision: Decision
    fingerprint: str
    created_at: float
    deadline: float | None
    """Epoch seconds by which the submit must have started (the call's deadline)."""
    state: State = "queued"
    seq: int = 0
    """Number of the last event journaled: replayed events and live ones meet here."""
    submitted: ImageSetStatus | None = None
    last_status: ImageSetStatus | None = None
    error: RecordedError | None = None
    touched: tuple[str, ...] = ()
    """The audit's "level:TAG" list (no values), for an operation resumed without its document."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def at_rest(record: OperationRecord) -> OperationRecord:
    """The record as the journal keeps it: the document only while a submit may need it."""
    if record.state in RESUBMITTABLE:
        return record
    request = replace(record.request, updatable_attributes=None, removable_attributes=None)
    return replace(record, request=request)


def fingerprint(request: UpdateRequest) -> str:
    """What makes two requests "the same" for an idempotency key (the key itself aside)."""
    fields = asdict(replace(request, idempotency_key=""))
    for name, value in fields.items():
        if isinstance(value, bytes):
            fields[name] = hashlib.sha256(value).hexdigest()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def encode(record: OperationRecord, sealer: Sealer) -> str:
    document = asdict(at_rest(record))
    for name in ("updatable_attributes", "removable_attributes"):
        blob = document["request"][name]
        document["request"][name] = base64.b64encode(blob).decode() if blob is not None else None
    text = json.dumps(document, separators=(",", ":"))
    if not sealer.enabled:
        return text
    return json.dumps(sealer.seal(record.id, text.encode()), separators=(",", ":"))


def decode(text: str, operation_id: str, sealer: Sealer) -> OperationRecord:
    """A record stored under `operation_id`; clear ones (written before keys were set) too."""
    document = json.loads(text)
    if "sealed" in document:
        document = json.loads(sealer.open(operation_id, document))
    request = document["request"]
    for name in ("updatable_attributes", "removable_attributes"):
        if request[name] is not None:
            request[name] = base64.b64decode(request[name])
    decision = document["decision"]
    return OperationRecord(
        **{
            **document,
            "roles": tuple(document["roles"]),
            "request": UpdateRequest(**request),
            "decision": Decision(
                decision["allow"], tuple(decision["reasons"]), decision["decision_id"]
            ),
            "submitted": _status(document["submitted"]),
            "last_status": _status(document["last_status"]),
            "error": RecordedError(**document["error"]) if document["error"] else None,
            "touched": tuple(document.get("touched", ())),
        }
    )


def decode_readable(stored: Iterable[tuple[str, str]], sealer: Sealer) -> list[OperationRecord]:
    """(id, body) pairs to resume, oldest first. One that cannot be opened is logged as an
    error and left as it is in the journal (WatchUpdate on it says why), never dropped."""
    records = []
    for operation_id, body in stored:
        try:
            records.append(decode(body, operation_id, sealer))
        except UnreadableRecord as error:
            log.error("journal_record_unreadable", operation_id=operation_id, error=error.message)
    return sorted(records, key=lambda r: r.created_at)


def followed(record: OperationRecord) -> UpdatePlan:
    """The plan of an operation past its submit, whose record no longer holds the document:
    enough to follow the image set, and to audit the tags it touched (without values)."""
    request = record.request
    changes = []
    for touched in record.touched:
        level, _, what = touched.partition(":")
        removal = what in get_args(Action)
        changes.append(
            AttributeChange(
                action=cast(Action, what) if removal else "update",
                level=cast(Level, level),
                series_uid="",
                instance_uid="",
                tag="" if removal else what,
                keyword="",
                vr="",
                private=False,
                requires_force=False,
                categories=(),
            )
        )
    return UpdatePlan(
        datastore_id=request.datastore_id,
        image_set_id=request.image_set_id,
        latest_version_id=request.latest_version_id,
        force=request.force,
        include_study_image_sets=request.include_study_image_sets,
        kind=request.kind or "dicom_updates",
        revert_to_version_id=request.revert_to_version_id or "",
        changes=tuple(changes),
        updatable_attributes=None,
        removable_attributes=None,
        idempotency_key=request.idempotency_key,
    )


def _status(document: Mapping[str, Any] | None) -> ImageSetStatus | None:
    return ImageSetStatus(**document) if document else None
