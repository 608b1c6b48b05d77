"""Operation events: what a stream tells, rebuilt from a journal record or carried between replicas.

Pure: dataclasses and their JSON form (pub/sub payloads), the replay of a record (the last known
state first), and errors recorded so a re-attached stream ends as the first one did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from service.core.errors import ProxyError, ResourceExhausted, status_named
from service.core.model import Approval, Decision, ImageSetStatus, OperationRecord, RecordedError


@dataclass(frozen=True)
class Authorized:
    operation_id: str
    at: float
    decision: Decision


@dataclass(frozen=True)
class Queued:
    operation_id: str
    at: float
    position: int
    estimated_start: float


@dataclass(frozen=True)
class Submitted:
    operation_id: str
    at: float
    status: ImageSetStatus


@dataclass(frozen=True)
class StatusChanged:
    operation_id: str
    at: float
    status: ImageSetStatus


@dataclass(frozen=True)
class Finished:
    operation_id: str
    at: float
    status: ImageSetStatus


@dataclass(frozen=True)
class Cancelled:
    """Terminal: taken back before its submit; nothing was written."""

    operation_id: str
    at: float
    cancelled_by: str


@dataclass(frozen=True)
class ApprovalRequired:
    """The policy wants approval first: who may give it, how many, until when."""

    operation_id: str
    at: float
    approval: Approval


@dataclass(frozen=True)
class Approved:
    """One approval given (`authorized` follows once enough are)."""

    operation_id: str
    at: float
    approved_by: str
    approvals: int
    count: int


@dataclass(frozen=True)
class Rejected:
    """Terminal: an approver rejected the update; nothing was written."""

    operation_id: str
    at: float
    rejected_by: str


@dataclass(frozen=True)
class Expired:
    """Terminal: not approved in time; nothing was written."""

    operation_id: str
    at: float


@dataclass(frozen=True)
class Heartbeat:
    operation_id: str
    at: float
    status: ImageSetStatus | None


Event = (
    Authorized
    | Queued
    | Submitted
    | StatusChanged
    | Finished
    | Cancelled
    | Heartbeat
    | ApprovalRequired
    | Approved
    | Rejected
    | Expired
)
Terminal = Finished | Cancelled | Rejected | Expired
"""The events that end a stream."""
Item = Event | ProxyError

_STATUS_EVENTS: dict[str, type[Submitted | StatusChanged | Finished]] = {
    "submitted": Submitted,
    "status": StatusChanged,
    "finished": Finished,
}


class RecordedFailure(ProxyError):
    """An error told again from its record (same code, reason and message)."""

    def __init__(self, recorded: RecordedError) -> None:
        super().__init__(recorded.message, aws_code=recorded.aws_code)
        self.status = status_named(recorded.code)
        self.reason = recorded.reason


def record_error(error: ProxyError) -> RecordedError:
    retry = error.retry_after_seconds if isinstance(error, ResourceExhausted) else 0.0
    return RecordedError(error.status, error.reason, error.message, retry, error.aws_code)


def error_from(recorded: RecordedError) -> ProxyError:
    if recorded.retry_after_seconds:
        return ResourceExhausted(
            recorded.message,
            recorded.retry_after_seconds,
            recorded.reason,
            aws_code=recorded.aws_code,
        )
    return RecordedFailure(recorded)


def replay(record: OperationRecord) -> list[Item]:
    """The events a stream attaching now has missed, reduced to the last known state."""
    items: list[Item] = _approval_replayed(record)
    if record.decision.allow:
        items.append(Authorized(record.id, record.created_at, record.decision))
    if record.submitted is not None:
        items.append(Submitted(record.id, record.created_at, record.submitted))
    last = record.last_status
    # A finished record always ends with `finished`, even when its first state was already the
    # last (an update found landed and done when its submit was resumed).
    if last is not None and (last != record.submitted or record.state == "finished"):
        event = Finished if record.state == "finished" else StatusChanged
        items.append(event(record.id, record.created_at, last))
    if record.error is not None:
        items.append(error_from(record.error))
    if record.state == "cancelled":
        items.append(Cancelled(record.id, record.created_at, record.cancelled_by))
    return items


def _approval_replayed(record: OperationRecord) -> list[Item]:
    approval = record.approval
    if approval is None:
        return []
    at, count = record.created_at, approval.count
    items: list[Item] = [ApprovalRequired(record.id, at, approval)]
    for given, by in enumerate(approval.approved_by, 1):
        items.append(Approved(record.id, at, by, given, count))
    if record.state == "rejected":
        items.append(Rejected(record.id, at, approval.rejected_by))
    if record.state == "expired":
        items.append(Expired(record.id, approval.expires_at))
    return items


def to_payload(seq: int, item: Item) -> dict[str, Any]:
    """JSON-able form of an event (or of the error ending a stream), numbered."""
    match item:
        case ProxyError():
            return {"seq": seq, "kind": "error", "error": asdict(record_error(item))}
        case Authorized(at=at, decision=decision):
            return {"seq": seq, "kind": "authorized", "at": at, "decision": asdict(decision)}
        case Queued(at=at, position=position, estimated_start=start):
            return {"seq": seq, "kind": "queued", "at": at, "position": position, "start": start}
        case Submitted() | StatusChanged() | Finished():
            kind = next(k for k, cls in _STATUS_EVENTS.items() if isinstance(item, cls))
            return {"seq": seq, "kind": kind, "at": item.at, "status": asdict(item.status)}
        case Cancelled(at=at, cancelled_by=by):
            return {"seq": seq, "kind": "cancelled", "at": at, "cancelled_by": by}
        case ApprovalRequired(at=at, approval=approval):
            return {"seq": seq, "kind": "approval_required", "at": at, "approval": asdict(approval)}
        case Approved(at=at, approved_by=by, approvals=approvals, count=count):
            return {"seq": seq, "kind": "approved", "at": at, "by": by, "approvals": approvals,
                    "count": count}  # fmt: skip
        case Rejected(at=at, rejected_by=by):
            return {"seq": seq, "kind": "rejected", "at": at, "by": by}
        case Expired(at=at):
            return {"seq": seq, "kind": "expired", "at": at}
        case Heartbeat():
            return {"seq": seq, "kind": "heartbeat", "at": item.at}


def from_payload(operation_id: str, payload: dict[str, Any]) -> Item:
    kind, at = payload["kind"], payload.get("at", 0.0)
    if kind == "error":
        return error_from(RecordedError(**payload["error"]))
    if kind == "authorized":
        decision = payload["decision"]
        return Authorized(
            operation_id,
            at,
            Decision(decision["allow"], tuple(decision["reasons"]), decision["decision_id"]),
        )
    if kind == "queued":
        return Queued(operation_id, at, payload["position"], payload["start"])
    if kind == "cancelled":
        return Cancelled(operation_id, at, payload["cancelled_by"])
    if kind == "approval_required":
        approval = payload["approval"]
        lists = ("roles", "principals", "reasons", "approved_by")
        approval = Approval(**{**approval, **{name: tuple(approval[name]) for name in lists}})
        return ApprovalRequired(operation_id, at, approval)
    if kind == "approved":
        return Approved(operation_id, at, payload["by"], payload["approvals"], payload["count"])
    if kind == "rejected":
        return Rejected(operation_id, at, payload["by"])
    if kind == "expired":
        return Expired(operation_id, at)
    if kind in _STATUS_EVENTS:
        return _STATUS_EVENTS[kind](operation_id, at, ImageSetStatus(**payload["status"]))
    return Heartbeat(operation_id, at, None)
