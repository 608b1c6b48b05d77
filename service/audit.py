"""Audit trail: one structured line per request: who, which image set, which tags, the verdict.

Tags and levels only, never attribute values: they are patient data.
"""

from __future__ import annotations

import structlog

from service import tracing
from service.model import Caller, Decision, OperationRecord, UpdatePlan, UpdateRequest
from service.purpose import digest

_log = structlog.get_logger("imaging_proxy.audit")


def operation_outcome(caller: Caller, plan: UpdatePlan, decision: Decision, outcome: str) -> None:
    """An allowed update has ended (UPDATED, UPDATE_FAILED or an error reason)."""
    _emit(caller, plan, decision, outcome)


def denied(caller: Caller, plan: UpdatePlan, decision: Decision) -> None:
    _emit(caller, plan, decision, "DENIED")


def no_role(
    caller: Caller, datastore_id: str, image_set_id: str, decision_id: str, reason: str
) -> None:
    """Refused before the document was read: OPA's decision gives the caller no role here."""
    _log.info(
        "audit",
        principal=caller.principal,
        auth_method=caller.auth_method,
        datastore_id=datastore_id,
        image_set_id=image_set_id,
        decision_id=decision_id,
        allow=False,
        reasons=[reason],
        outcome="DENIED",
        **tracing.log_fields(),
    )


def cancelled(caller: Caller, record: OperationRecord) -> None:
    """A queued operation taken back (by its owner, or whom the policy allows): never written."""
    _log.info(
        "audit",
        rpc="CancelUpdate",
        principal=caller.principal,
        auth_method=caller.auth_method,
        operation_id=record.id,
        owner=record.principal,
        datastore_id=record.request.datastore_id,
        image_set_id=record.request.image_set_id,
        touched=list(record.touched),
        decision_id=record.decision.decision_id,
        outcome="CANCELLED",
        **tracing.log_fields(),
    )


def approval_required(caller: Caller, plan: UpdatePlan, record: OperationRecord) -> None:
    """The policy wants the update approved first: recorded as awaiting approval."""
    _emit(caller, plan, record.decision, "APPROVAL_REQUIRED", operation_id=record.id)


def break_glass(caller: Caller, plan: UpdatePlan, record: OperationRecord) -> None:
    """Allowed only because the caller broke the glass on a required approval (to review)."""
    _emit(caller, plan, record.decision, "BREAK_GLASS", operation_id=record.id)


def verdict(caller: Caller, record: OperationRecord, verdict: str, comment: str) -> None:
    """An approver's approval or rejection, or a reviewer's review; of the comment (which may
    name a patient) only its length and digest."""
    outcome = {"approve": "APPROVED", "reject": "REJECTED", "review": "REVIEWED"}[verdict]
    _log.info(
        "audit",
        rpc=f"{verdict.capitalize()}Update",
        principal=caller.principal,
        auth_method=caller.auth_method,
        operation_id=record.id,
        owner=record.principal,
        datastore_id=record.request.datastore_id,
        image_set_id=record.request.image_set_id,
        touched=list(record.touched),
        decision_id=record.decision.decision_id,
        state=record.state,
        outcome=outcome,
        **_text_fields("comment", comment),
        **why(record.request),
        **tracing.log_fields(),
    )


def why(request: UpdateRequest | UpdatePlan) -> dict[str, object]:
    """The purpose of use and ticket as sent; the justification's length and digest only."""
    fields: dict[str, object] = {}
    if request.purpose_of_use:
        fields["purpose_of_use"] = request.purpose_of_use
    if request.ticket:
        fields["ticket"] = request.ticket
    if request.break_glass:
        fields["break_glass"] = True
    return {**fields, **_text_fields("justification", request.justification)}


def _text_fields(name: str, text: str) -> dict[str, object]:
    if not text:
        return {}
    return {f"{name}_length": len(text), f"{name}_sha256": digest(text)}


def refused(method: str, principal: str, auth_method: str, reason: str) -> None:
    """A caller refused before it was identified (UNAUTHENTICATED): no principal to name."""
    _log.info(
        "audit",
        rpc=method,
        principal=principal,
        auth_method=auth_method,
        allow=False,
        outcome=reason,
    )


def _emit(
    caller: Caller, plan: UpdatePlan, decision: Decision, outcome: str, **extra: object
) -> None:
    _log.info(
        "audit",
        principal=caller.principal,
        auth_method=caller.auth_method,
        datastore_id=plan.datastore_id,
        image_set_id=plan.image_set_id,
        kind=plan.kind,
        force=plan.force,
        include_study_image_sets=plan.include_study_image_sets,
        touched=list(plan.touched_tags()),
        decision_id=decision.decision_id,
        allow=decision.allow,
        reasons=list(decision.reasons),
        outcome=outcome,
        **extra,
        **why(plan),
        **tracing.log_fields(),
    )
