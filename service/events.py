"""Operation events: what a stream tells, rebuilt from a journal record or carried between replicas.

Pure: dataclasses and their JSON form (pub/sub payloads), the replay of a record (the last known
state first), and errors recorded so a re-attached stream ends as the first one did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from service.errors import ProxyError, ResourceExhausted, status_named
from service.model import Decision, ImageSetStatus, OperationRecord, RecordedError


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
class Heartbeat:
    operation_id: str
    at: float
    status: ImageSetStatus | None


Event = Authorized | Queued | Submitted | StatusChanged | Finished | Heartbeat
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
    items: list[Item] = [Authorized(record.id, record.created_at, record.decision)]
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
    if kind in _STATUS_EVENTS:
        return _STATUS_EVENTS[kind](operation_id, at, ImageSetStatus(**payload["status"]))
    return Heartbeat(operation_id, at, None)
