"""Journal codec: what is kept of an operation, and its at-rest form (JSON, sealed if keyed).

The update's document (the attribute blobs) is patient data. A record keeps it only while a
submit may still need it (`queued`, `submitting`); once HealthImaging has acknowledged the
submit, or the operation has failed, the journal stores the record without it. Both journals
(`sqlite.py`, `redis.py`) use this module; it imports neither. A journal encodes with a
`RecordEncoder`: the fields fixed at creation are turned into JSON once per operation, not on
every save; the text is the same `asdict` + `json.dumps` gave (older journals read as before).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import fields, replace
from operator import attrgetter, is_
from typing import Any, cast, get_args

import structlog

from service.core.model import (
    Action,
    Approval,
    ApprovalNeed,
    AttributeChange,
    Decision,
    ImageSetStatus,
    Level,
    OperationRecord,
    RecordedError,
    UpdatePlan,
    UpdateRequest,
)
from service.journal.sealing import Sealer, UnreadableRecord

log = structlog.get_logger(__name__)

RESUBMITTABLE: frozenset[str] = frozenset({"awaiting_approval", "queued", "submitting"})
"""States in which the operation may still submit, so its record keeps the document."""
_UNLESS_SET: dict[str, object] = {
    "purpose_of_use": "",
    "justification": "",
    "ticket": "",
    "break_glass": False,
    "approval": None,
    "reviewed_by": "",
    "cancelled_by": "",
}
"""Fields added by issues 21 and 22, written only when set: older records, fingerprints and
journals read and compare as they did."""

_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False)
"""`json.dumps(..., separators=(",", ":"))` without building an encoder per call."""
_NAMES: dict[type, tuple[str, ...]] = {}
_RECORD_FIELDS = tuple(field.name for field in fields(OperationRecord))
_FIXED_NAMES = _RECORD_FIELDS[: _RECORD_FIELDS.index("state")]  # set at creation, in order
_CHANGING_NAMES = _RECORD_FIELDS[len(_FIXED_NAMES) :]
_fixed = cast("Callable[[OperationRecord], tuple[Any, ...]]", attrgetter(*_FIXED_NAMES))
_DOCUMENT = ("updatable_attributes", "removable_attributes")
_SAVED_AGAIN = RESUBMITTABLE | {"submitted"}
"""States after which this process saves the same record again (and may reuse its parts)."""


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
    document = _unless_set(_plain(request))
    document["idempotency_key"] = ""
    for name, value in document.items():
        if isinstance(value, bytes):
            document[name] = hashlib.sha256(value).hexdigest()
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def encode(record: OperationRecord, sealer: Sealer) -> str:
    """The record at rest, as stored (`RecordEncoder` does the same, reusing unchanged parts)."""
    return _sealed(
        record.id, _head(_fixed(record), record.state in RESUBMITTABLE) + _tail(record), sealer
    )


class RecordEncoder:
    """`encode` for one journal: the JSON of a live operation's fields fixed at creation
    (request, decision, caller...) is made once, and only the changing fields on each save.

    The output is the same text `encode` gives. A cached part is reused only while every fixed
    field is the very same object; the part holding the document is dropped with it (at rest),
    or by `forget` when its operation will not be saved again.
    """

    def __init__(self, sealer: Sealer, capacity: int = 4096) -> None:
        self._sealer = sealer
        self._capacity = capacity
        self._heads: dict[str, tuple[bool, tuple[Any, ...], str]] = {}
        """Operation id → (document kept, fixed field values, their JSON without its '}')."""

    def encode(self, record: OperationRecord) -> str:
        keep = record.state in RESUBMITTABLE
        fixed = _fixed(record)
        cached = self._heads.pop(record.id, None)
        if cached is not None and cached[0] == keep and all(map(is_, cached[1], fixed)):
            head = cached[2]
        else:
            head = _head(fixed, keep)
        if record.state in _SAVED_AGAIN:  # otherwise done here: forget it
            self._heads[record.id] = (keep, fixed, head)
            if len(self._heads) > self._capacity:  # the least recently saved goes
                del self._heads[next(iter(self._heads))]
        return _sealed(record.id, head + _tail(record), self._sealer)

    def forget(self, operation_id: str) -> None:
        """Drop an operation's cached part (it may hold the document): its write failed, or
        it lost an idempotency race or its ownership, so no later save of it may come."""
        self._heads.pop(operation_id, None)

    @contextlib.contextmanager
    def forgotten_on_failure(self, operation_id: str) -> Iterator[None]:
        """Around a write of the record: if it fails, `forget` it (no save may follow)."""
        try:
            yield
        except BaseException:
            self.forget(operation_id)
            raise


def _plain(value: Any) -> dict[str, Any]:
    """A flat frozen dataclass as a dict, field by field (what `asdict` gives, without
    its deep copy); nested ones are converted by the caller."""
    kind = type(value)
    names = _NAMES.get(kind)
    if names is None:
        names = _NAMES[kind] = tuple(field.name for field in fields(kind))
    return {name: getattr(value, name) for name in names}


def _head(fixed: tuple[Any, ...], keep_document: bool) -> str:
    """The fixed fields' JSON, as `asdict` + `json.dumps` would give it, open at the end."""
    document = dict(zip(_FIXED_NAMES, fixed, strict=True))
    request = document["request"] = _unless_set(_plain(document["request"]))
    for name in _DOCUMENT:
        blob = request[name] if keep_document else None
        request[name] = base64.b64encode(blob).decode() if blob is not None else None
    decision = document["decision"] = _unless_set(_plain(document["decision"]))
    if decision.get("approval") is not None:
        decision["approval"] = _plain(decision["approval"])
    return _COMPACT.encode(document)[:-1]


def _unless_set(document: dict[str, Any]) -> dict[str, Any]:
    """Leave out the newer fields still at their defaults (see `_UNLESS_SET`)."""
    for name, default in _UNLESS_SET.items():
        if name in document and document[name] == default:
            del document[name]
    return document


def _tail(record: OperationRecord) -> str:
    """The fields that change as the operation goes on, closing the record's JSON."""
    document = _unless_set({name: getattr(record, name) for name in _CHANGING_NAMES})
    del document["epoch"]  # the Redis journal keeps it beside the body, where scripts check it
    if not record.inflight_until:
        del document["inflight_until"]  # only an interrupted submit needs it (older text kept)
    for name in ("submitted", "last_status", "error", "approval"):
        if document.get(name) is not None:
            document[name] = _plain(document[name])
    return "," + _COMPACT.encode(document)[1:]


def _sealed(operation_id: str, text: str, sealer: Sealer) -> str:
    if not sealer.enabled:
        return text
    return _COMPACT.encode(sealer.seal(operation_id, text.encode()))


def decode(text: str, operation_id: str, sealer: Sealer) -> OperationRecord:
    """A record stored under `operation_id`; clear ones (written before keys were set) too."""
    document = json.loads(text)
    if "sealed" in document:
        document = json.loads(sealer.open(operation_id, document))
    request = document["request"]
    for name in ("updatable_attributes", "removable_attributes"):
        if request[name] is not None:
            request[name] = base64.b64decode(request[name])
    return OperationRecord(
        **{
            **document,
            "roles": tuple(document["roles"]),
            "request": UpdateRequest(**request),
            "decision": _decision(document["decision"]),
            "approval": _approval(document.get("approval")),
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
        purpose_of_use=request.purpose_of_use,
        justification=request.justification,
        ticket=request.ticket,
        break_glass=request.break_glass,
    )


def _decision(document: Mapping[str, Any]) -> Decision:
    need = document.get("approval")
    return Decision(
        document["allow"],
        tuple(document["reasons"]),
        document["decision_id"],
        document.get("decision_id_source", "opa"),  # records from before the field
        ApprovalNeed(
            tuple(need["roles"]), tuple(need["principals"]), need["count"], need["ttl_seconds"]
        )
        if need
        else None,
        document.get("break_glass", False),
    )


def _approval(document: Mapping[str, Any] | None) -> Approval | None:
    if not document:
        return None
    lists = ("roles", "principals", "reasons", "approved_by")
    return Approval(**{**document, **{name: tuple(document[name]) for name in lists}})


def _status(document: Mapping[str, Any] | None) -> ImageSetStatus | None:
    return ImageSetStatus(**document) if document else None
