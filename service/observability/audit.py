"""Audit trail: one record per decision, submit, finish and cancel, in a sink of its own.

Records go to `[audit] path` (a file, or standard output), never to the logs on standard error,
as JSON lines docs/audit.schema.json describes, or as FHIR AuditEvent
(service/observability/audit_fhir.py).
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

from service.core.config import AuditSettings
from service.core.errors import PolicyCause
from service.core.model import (
    Caller,
    Decision,
    DecisionIdSource,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
    decision_id,
    is_resource_id,
)
from service.normaliser.purpose import digest
from service.observability import tracing

SCHEMA_VERSION = 1
Event = Literal["decision", "submit", "finish", "cancel", "refusal", "approval"]
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
        from service.observability.audit_fhir import (
            to_fhir_json,  # pydantic models: loaded only when asked for
        )

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
    """OPA allowed or denied an update (or an evaluation of one), asked for approval first, or
    allowed it only because the caller broke the glass."""
    outcome = "allowed" if decision.allow else "denied"
    if decision.needs_approval:
        outcome = "approval_required"
    elif decision.break_glass:
        outcome = "break_glass"
    _emit("decision", outcome, caller, decision, rpc=rpc, **_plan_fields(plan), **why(plan))


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
    """The operation has ended: HealthImaging's final status, or the error that ended it (a
    cancelled one's end is its `cancel` record)."""
    if record.state == "cancelled":
        return
    status = record.last_status
    outcome = record.error.reason if record.error else (status.workflow_status if status else "")
    if record.state in ("cancelled", "rejected", "expired"):
        outcome = record.state
    _emit("finish", outcome or "UNKNOWN", caller, record.decision, **_operation_fields(record))


def cancelled(caller: Caller, record: OperationRecord) -> None:
    """`caller` (the owner, or one the policy lets) cancelled the operation before its submit."""
    fields = _operation_fields(record)
    _emit("cancel", "cancelled", caller, record.decision, owner=record.principal, **fields)


def verdict(caller: Caller, record: OperationRecord, verdict: str, comment: str) -> None:
    """An approver approved or rejected another's update, or a reviewer reviewed a break-glass
    one; of the comment (it may name a patient) only its length and digest."""
    outcome = {"approve": "approved", "reject": "rejected", "review": "reviewed"}[verdict]
    fields = {**_operation_fields(record), **_text_fields("comment", comment)}
    rpc = f"{verdict.capitalize()}Update"
    _emit("approval", outcome, caller, record.decision, rpc=rpc, owner=record.principal, **fields)


def why(request: UpdateRequest | UpdatePlan) -> Record:
    """The purpose of use and ticket as sent; the justification's length and digest only."""
    fields: Record = {}
    if request.purpose_of_use:
        fields["purpose_of_use"] = request.purpose_of_use
    if request.ticket:
        fields["ticket"] = request.ticket
    if request.break_glass:
        fields["break_glass"] = True
    return {**fields, **_text_fields("justification", request.justification)}


def _text_fields(name: str, text: str) -> Record:
    if not text:
        return {}
    return {f"{name}_length": len(text), f"{name}_sha256": digest(text)}


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
        **why(request),
    }


def _checked(resource_id: str) -> str:
    """An id as given, when it has an id's shape; unchecked input is never written."""
    return resource_id if is_resource_id(resource_id) else ""
