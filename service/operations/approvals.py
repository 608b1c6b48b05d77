"""Approvals: ApproveUpdate, RejectUpdate and ReviewUpdate, with protobuf-free values.

An update the policy wants approved waits as `awaiting_approval` (service/operations/awaiting.py),
holding
nothing. Who may approve or reject it, and who may review a break-glass update, is the policy's
to say (`data.imaging.operations.decision`, actions "approve", "reject", "review", given the
operation's facts and the approval asked); a requester never approves, rejects or reviews their
own update, whatever the policy says. The approval that completes the count decides the update
again (the policy sees who approved) and reads the image set: changed since the request, the
update ends ABORTED (IMAGE_SET_CHANGED), nothing written. Each change is a journal transition,
made here on whichever replica was called; the owner is then nudged to tell its streams.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, cast

import structlog

from service.admission.budget import GET_IMAGE_SET, Budget
from service.backend.healthimaging import HealthImaging
from service.core.config import LimitSettings
from service.core.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    WrongState,
)
from service.core.model import AuthMethod, Caller, OperationRecord, UpdatePlan
from service.journal import NUDGES, Journal, hear_forever
from service.normaliser.purpose import text_problem
from service.normaliser.updates import normalise
from service.observability import audit
from service.observability.metrics import Metrics
from service.operations import awaiting
from service.operations.events import record_error
from service.operations.runner import Runner
from service.operations.steering import denied, operation_facts
from service.policy.decisions import PolicyClient

log = structlog.get_logger(__name__)

Verdict = Literal["approve", "reject", "review"]
_ATTEMPTS = 3
"""Transitions tried when the record changes between reading and writing it (another approver)."""


class Approvals:
    """Approve, reject and review operations; the journal is the source of truth."""

    def __init__(
        self,
        policy: PolicyClient,
        runner: Runner,
        journal: Journal,
        backend: HealthImaging,
        budget: Budget,
        metrics: Metrics,
        limits: LimitSettings,
    ) -> None:
        self._policy = policy
        self._runner = runner
        self._journal = journal
        self._backend = backend
        self._budget = budget
        self._metrics = metrics
        self._limits = limits

    async def approve(self, caller: Caller, operation_id: str, comment: str) -> OperationRecord:
        """One approval; the last one needed decides the update again and lets it queue."""
        return await self._transition(caller, operation_id, comment, "approve")

    async def reject(self, caller: Caller, operation_id: str, comment: str) -> OperationRecord:
        """Ends an update awaiting approval as `rejected`; nothing is written."""
        return await self._transition(caller, operation_id, comment, "reject")

    async def review(self, caller: Caller, operation_id: str, comment: str) -> OperationRecord:
        """Marks an ended break-glass update reviewed."""
        return await self._transition(caller, operation_id, comment, "review")

    async def _transition(
        self, caller: Caller, operation_id: str, comment: str, verdict: Verdict
    ) -> OperationRecord:
        problem = text_problem(comment)
        if problem:
            raise InvalidArgument([FieldViolation("comment", problem)])
        for _ in range(_ATTEMPTS):
            record = await self._journal.get(operation_id)
            if record is None:
                raise NotFound(f"no operation {operation_id!r}")
            if _already(record, caller.principal, verdict):
                return record  # a retried call: the same answer
            _check_state(record, verdict)
            if caller.principal == record.principal:
                raise PermissionDenied(f"a requester may not {verdict} their own update")
            await self._permitted(caller, verdict, record)
            changed = await self._changed(caller, record, verdict)
            stored = await self._journal.transition(changed, record)
            if stored is not None and stored.seq == changed.seq and stored.state == changed.state:
                self._nudge(operation_id)
                self._counted(verdict, stored)
                audit.verdict(caller, stored, verdict, comment)
                return stored
        raise Aborted(f"operation {operation_id} kept changing; retry", "CONCURRENT_CHANGE")

    async def _permitted(self, caller: Caller, verdict: Verdict, record: OperationRecord) -> None:
        request, approval = record.request, record.approval
        facts = {
            "operation": {
                **operation_facts(record),
                "touched": list(record.touched),
                "purpose_of_use": request.purpose_of_use,
                "ticket": request.ticket,
                "break_glass": record.decision.break_glass,
                "approval": {
                    "roles": list(approval.roles),
                    "principals": list(approval.principals),
                    "count": approval.count,
                    "approved_by": list(approval.approved_by),
                }
                if approval
                else None,
            }
        }
        decision = await self._policy.permits(caller, verdict, request.datastore_id, facts)
        if not decision.allow:
            raise denied(verdict, decision.reasons, decision.decision_id)

    async def _changed(
        self, caller: Caller, record: OperationRecord, verdict: Verdict
    ) -> OperationRecord:
        """The record after this verdict (numbered past the events it will make the owner tell)."""
        approval = record.approval
        if verdict == "review":
            return replace(record, seq=record.seq + 1, reviewed_by=caller.principal)
        assert approval is not None
        if verdict == "reject":
            changed = replace(
                record, state="rejected", approval=replace(approval, rejected_by=caller.principal)
            )
        else:
            given = replace(approval, approved_by=(*approval.approved_by, caller.principal))
            changed = replace(record, approval=given)
            if given.complete:
                changed = await self._decided_again(changed)
        return replace(changed, seq=record.seq + len(awaiting.news(record, changed)))

    async def _decided_again(self, record: OperationRecord) -> OperationRecord:
        """Enough approvals: the policy decides again (seeing who approved) and the image set
        must still be as the requester saw it. Queued, still awaiting, or failed."""
        approval = record.approval
        assert approval is not None
        requester = Caller(record.principal, cast(AuthMethod, record.auth_method), record.roles)
        plan = normalise(record.request, self._limits)
        decision = await self._policy.decide(requester, plan, approval.approved_by)
        outcome = "allowed" if decision.allow else "denied"
        self._metrics.decisions.labels(outcome, "policy").inc()
        audit.decided(requester, plan, decision, "ApproveUpdate")  # decided again, audited
        if decision.needs_approval:  # the rules changed meanwhile: what they ask now
            need = decision.approval
            assert need is not None
            asked = replace(approval, roles=need.roles, principals=need.principals)
            return replace(record, approval=replace(asked, count=need.count))
        try:
            if not decision.allow:
                said = "; ".join(decision.reasons or ("no reason given",))
                raise PermissionDenied(
                    f"policy denied this update after its approval: {said}",
                    decision.decision_id,
                    decision.reasons,
                )
            await self._unchanged(plan)
        except (PermissionDenied, Aborted) as error:
            return replace(record, state="failed", error=record_error(error))
        return replace(record, state="queued", decision=decision)

    async def _unchanged(self, plan: UpdatePlan) -> None:
        latest = await self._budget.call(
            GET_IMAGE_SET,
            lambda: self._backend.get_image_set(plan.datastore_id, plan.image_set_id, ""),
        )
        if not latest.untouched_since(plan.latest_version_id):
            raise Aborted(
                f"the image set changed while the update awaited approval (version "
                f"{plan.latest_version_id} asked, {latest.version_id} {latest.state} now); "
                "nothing was written",
                "IMAGE_SET_CHANGED",
            )

    def _nudge(self, operation_id: str) -> None:
        operation = self._runner.operation(operation_id)
        if operation is not None:
            operation.nudged.set()
        elif self._journal.shared:
            self._journal.publish(NUDGES, {"operation_id": operation_id})

    def _counted(self, verdict: Verdict, record: OperationRecord) -> None:
        if verdict == "review":
            self._metrics.break_glass_reviews.inc()
        else:
            self._metrics.approvals.labels("rejected" if verdict == "reject" else "approved").inc()

    async def hear_nudges_forever(self) -> None:
        """Several replicas: wake our operations whose record another replica changed (the
        owner reads its record every POLL_SECONDS anyway)."""
        await hear_forever(self._journal, NUDGES, self._nudged, "nudge_channel_failed")

    async def _nudged(self, word: dict[str, Any]) -> None:
        operation = self._runner.operation(word["operation_id"])
        if operation is not None:
            operation.nudged.set()


def _already(record: OperationRecord, principal: str, verdict: Verdict) -> bool:
    approval = record.approval
    if verdict == "review":
        return record.reviewed_by == principal
    if approval is None:
        return False
    if verdict == "reject":
        return record.state == "rejected" and approval.rejected_by == principal
    return principal in approval.approved_by


def _check_state(record: OperationRecord, verdict: Verdict) -> None:
    if verdict == "review":
        if not record.decision.break_glass:
            raise WrongState(
                f"operation {record.id} did not break the glass: nothing to review",
                "NOT_BREAK_GLASS",
                record.state,
            )
        if not record.finished:
            raise WrongState(
                f"operation {record.id} is {record.state}: review it once it has ended",
                "NOT_ENDED",
                record.state,
            )
        if record.reviewed_by:
            raise WrongState(
                f"operation {record.id} was reviewed by {record.reviewed_by}",
                "ALREADY_REVIEWED",
                record.state,
            )
    elif record.state != "awaiting_approval":
        raise WrongState(
            f"operation {record.id} is {record.state}: only an update awaiting approval can be "
            "approved or rejected",
            "NOT_AWAITING_APPROVAL",
            record.state,
        )
