"""Journal codec: what is kept of an operation, and its at-rest form (JSON, sealed if keyed).

The update's document (the attribute blobs) is patient data. A record keeps it only while a
submit may still need it (`queued`, `submitting`); once HealthImaging has acknowledged the
submit, or the operation has failed, the journal stores the record without it. Both journals
(`sqlite.py`, `redis.py`) use this module; it imports neither.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from typing import Any, cast, get_args

import structlog

from service.journal.sealing import Sealer, UnreadableRecord
from service.model import (
    Action,
    AttributeChange,
    Decision,
    ImageSetStatus,
    Level,
    OperationRecord,
    RecordedError,
    UpdatePlan,
    UpdateRequest,
)

log = structlog.get_logger(__name__)

RESUBMITTABLE: frozenset[str] = frozenset({"queued", "submitting"})
"""States in which the operation may still submit, so its record keeps the document."""


def at_rest(record: OperationRecord) -> OperationRecord:
    """The record as the journal keeps it: the document only while a submit may need it."""
    if record.state in RESUBMITTABLE:
        return record
    request = replace(record.request, updatable_attributes=None, removable_attributes=None)
    return replace(record, request=request)


def is_stale(holder: OperationRecord | None) -> bool:
    """A hold whose operation is over, unwatched or gone no longer guards its image set."""
    return holder is None or holder.finished or holder.state == "unwatched"


def key_digest(key: str) -> str:
    """An idempotency key as the journal indexes it (the caller's key may say anything)."""
    return hashlib.sha256(key.encode()).hexdigest()


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
