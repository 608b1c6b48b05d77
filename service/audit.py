"""Audit trail: one record per decision, submit, finish and cancel, in a sink of its own.

Records go to `[audit] path` (a file, or standard output), never to the logs on standard error,
as JSON lines docs/audit.schema.json describes, or as FHIR AuditEvent (service/audit_fhir.py).
Every record names a decision id; the proxy makes one when OPA gave none, and says so. Ids,
tags and verdicts only, never an attribute value: those are patient data (docs/AUDIT.md).

The sink is opened once by the composition root (`opened`), like tracing's provider.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any, Literal

import structlog

from service import tracing
from service.config import AuditSettings
from service.errors import PolicyCause
from service.model import (
    Caller,
    Decision,
    DecisionIdSource,
    OperationRecord,
    UpdatePlan,
    decision_id,
    is_resource_id,
)

SCHEMA_VERSION = 1
Event = Literal["decision", "submit", "finish", "cancel", "refusal"]
Record = dict[str, Any]
Write = Callable[[Record], None]

log = structlog.get_logger(__name__)


_sinks: list[Write] = []
"""Where records go: the sink `opened` (and a test's `capture`); none: nowhere."""


def _write(record: Record) -> None:
    for sink in _sinks:
        sink(record)


@contextlib.contextmanager
def _added(sink: Write) -> Iterator[None]:
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)


@contextlib.contextmanager
def opened(settings: AuditSettings) -> Iterator[None]:
    """Write records to `settings.path` ("-": standard output) while inside."""
    render = _renderer(settings)
    with _stream(settings.path) as stream:

        def write(record: Record) -> None:
            try:
                stream.write(render(record) + "\n")
                stream.flush()
            except (OSError, ValueError) as exc:  # a full disk: said in the logs, by type only
                log.error(
                    "audit_write_failed", audit_event=record["event"], error=type(exc).__name__
                )

        with _added(write):
            yield


@contextlib.contextmanager
def capture() -> Iterator[list[Record]]:
    """The records written while inside, as dicts (for tests), besides any opened sink."""
    records: list[Record] = []
    with _added(records.append):
        yield records


def _renderer(settings: AuditSettings) -> Callable[[Record], str]:
    if settings.format == "fhir":
        from service.audit_fhir import to_fhir_json  # pydantic models: loaded only when asked for

        return to_fhir_json
    return lambda record: json.dumps(record, separators=(",", ":"))


@contextlib.contextmanager
def _stream(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    try:
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ValueError(f"audit.path: cannot append to {path} ({exc.strerror or exc})") from None
    with handle:
        yield handle


# --- the records --------------------------------------------------------------------------------


def decided(caller: Caller, plan: UpdatePlan, decision: Decision, rpc: str) -> None:
    """OPA allowed or denied an update (or an evaluation of one)."""
    outcome = "allowed" if decision.allow else "denied"
    _emit("decision", outcome, caller, decision, rpc=rpc, **_plan_fields(plan))


def no_role(
    caller: Caller, datastore_id: str, image_set_id: str, decision: Decision, rpc: str
) -> None:
    """Denied before the document was read: OPA's roles answer gives the caller none here."""
    where = {"datastore_id": datastore_id, "image_set_id": _checked(image_set_id)}
    _emit("decision", "denied", caller, decision, rpc=rpc, **where)


def unavailable(
    caller: Caller, datastore_id: str, image_set_id: str, rpc: str, cause: PolicyCause
) -> None:
    """Refused because OPA gave no usable answer (down, slow, erroring): fail closed, audited."""
    refusal = Decision(False, (f"policy decision unavailable: {cause}",), *decision_id(""))
    where = {"datastore_id": _checked(datastore_id), "image_set_id": _checked(image_set_id)}
    _emit("decision", "unavailable", caller, refusal, rpc=rpc, **where)


def access_decided(caller: Caller, record: OperationRecord, decision: Decision, rpc: str) -> None:
    """OPA decided whether `caller` may act on another's operation (watch it, list, cancel)."""
    outcome = "allowed" if decision.allow else "denied"
    fields = _operation_fields(record)
    _emit("decision", outcome, caller, decision, rpc=rpc, owner=record.principal, **fields)


def submitted(caller: Caller, record: OperationRecord) -> None:
    """The update was sent to HealthImaging (accepted: a new version is being written)."""
    _emit("submit", "submitted", caller, record.decision, **_operation_fields(record))


def finished(caller: Caller, record: OperationRecord) -> None:
    """The operation has ended: HealthImaging's final status, or the error that ended it."""
    status = record.last_status
    outcome = record.error.reason if record.error else (status.workflow_status if status else "")
    _emit("finish", outcome or "UNKNOWN", caller, record.decision, **_operation_fields(record))


def cancelled(caller: Caller, record: OperationRecord) -> None:
    """`caller` (the owner, or one the policy lets) cancelled the operation before its submit."""
    fields = _operation_fields(record)
    _emit("cancel", "cancelled", caller, record.decision, owner=record.principal, **fields)


def refused(rpc: str, reason: str) -> None:
    """A call refused before its caller was identified (UNAUTHENTICATED): nobody to name."""
    record = _base("refusal", reason, "", "", *decision_id(""))
    _write({**record, "rpc": rpc, **tracing.log_fields()})


def _emit(event: Event, outcome: str, caller: Caller, decision: Decision, **fields: Any) -> None:
    made, source = decision.decision_id, decision.decision_id_source
    record = _base(event, outcome, caller.principal, caller.auth_method, made, source)
    record.update(fields, reasons=list(decision.reasons))
    _write({**record, **tracing.log_fields()})


def _base(
    event: Event,
    outcome: str,
    principal: str,
    auth_method: str,
    made: str,
    source: DecisionIdSource,
) -> Record:
    return {
        "version": SCHEMA_VERSION,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "event": event,
        "outcome": outcome,
        "principal": principal,
        "auth_method": auth_method,
        "decision_id": made,
        "decision_id_source": source,
    }


def _plan_fields(plan: UpdatePlan) -> Record:
    return {
        "datastore_id": plan.datastore_id,
        "image_set_id": plan.image_set_id,
        "kind": plan.kind,
        "force": plan.force,
        "include_study_image_sets": plan.include_study_image_sets,
        "tags": list(plan.touched_tags()),
    }


def _operation_fields(record: OperationRecord) -> Record:
    request = record.request
    return {
        "datastore_id": request.datastore_id,
        "image_set_id": request.image_set_id,
        "operation_id": record.id,
        "kind": request.kind,
        "tags": list(record.touched),
    }


def _checked(resource_id: str) -> str:
    """An id as given, when it has an id's shape; unchecked input is never written."""
    return resource_id if is_resource_id(resource_id) else ""
