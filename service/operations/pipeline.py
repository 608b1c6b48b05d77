"""Request path: gate → normalise → same idempotency key? → decide → admit → check references →
record → launch → follow, each step one line of `Pipeline.update`. The gate
(service/policy/decision_gate.py)
refuses callers without a role, then the request waits its caller's turn in the decisions stage
before it is normalised and decided. The pipeline calls the runner and the streams; neither calls
back into the pipeline."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.admission.stages import FairStage
from service.backend.references import References
from service.core.config import LimitSettings
from service.core.errors import PermissionDenied, PolicyUnavailable
from service.core.model import (
    Approval,
    Caller,
    Decision,
    OperationRecord,
    UpdatePlan,
    UpdateRequest,
)
from service.journal import fingerprint
from service.normaliser.updates import normalise
from service.observability import audit, tracing
from service.observability.metrics import Metrics
from service.operations.event_streams import Streams
from service.operations.events import Event
from service.operations.runner import Runner
from service.operations.steering import may_act_on
from service.policy.decision_gate import Gate
from service.policy.decisions import PolicyClient

UPDATE_RPC, EVALUATE_RPC, WATCH_RPC = "UpdateImageSetMetadata", "EvaluateUpdate", "WatchUpdate"


class Pipeline:
    """What the gRPC handlers call, with protobuf-free values."""

    def __init__(
        self,
        policy: PolicyClient,
        runner: Runner,
        streams: Streams,
        metrics: Metrics,
        limits: LimitSettings,
        decisions: FairStage,
        references: References,
    ) -> None:
        self._policy = policy
        self._runner = runner
        self._streams = streams
        self._metrics = metrics
        self._limits = limits
        self._references = references
        self._gate = Gate(policy.role_answer, limits, decisions, metrics)

    async def update(
        self, caller: Caller, request: UpdateRequest, time_remaining: float | None
    ) -> AsyncIterator[Event]:
        """One update, decided and launched; returns its events to the end. `time_remaining`:
        seconds left of the call's deadline. Returned, not yielded through: a stream holds no
        generator of the pipeline while it waits.

        A retry with the same idempotency key follows the first operation, undecided again.
        """
        deadline = _deadline(time_remaining)
        async with self._decision_of(caller, request, UPDATE_RPC, deadline):
            plan = normalise(request, self._limits)
            record = await self._runner.existing(caller.principal, request)
            decision = await self._allowed(caller, plan) if record is None else None
        if decision is not None:  # a new operation, allowed (or to be approved first)
            if decision.needs_approval:  # it waits for approvers, not for the call's deadline
                deadline = None
            await self._runner.admit(caller.principal, deadline)
            await self._references.check(caller.principal, plan, deadline)
            fresh = new_record(caller, request, plan, decision, deadline)
            record = await self._runner.record(fresh)
            tracing.tag_operation(record.id)
            if record.id == fresh.id:  # otherwise the same key won a race: follow the winner
                self._noted(record)
                self._runner.launch(record, caller, plan)
        assert record is not None  # the twin of an earlier call, or the one recorded above
        return self._streams.follow(record)

    async def evaluate(
        self,
        caller: Caller,
        request: UpdateRequest,
        time_remaining: float | None = None,
        with_input: bool = False,
    ) -> tuple[UpdatePlan, Decision, str]:
        """Validate, classify and decide; nothing is submitted. `with_input`: also the exact
        policy input as JSON, when the policy lets the caller see it (else PermissionDenied)."""
        async with self._decision_of(caller, request, EVALUATE_RPC, _deadline(time_remaining)):
            plan = normalise(request, self._limits)
            decision = await self._decide(caller, plan)
        self._decided(caller, plan, decision, EVALUATE_RPC)
        shown = await self._policy_input(caller, plan, request) if with_input else ""
        return plan, decision, shown

    async def _policy_input(self, caller: Caller, plan: UpdatePlan, request: UpdateRequest) -> str:
        async with self._failing_closed(caller, request, EVALUATE_RPC):
            seeing = await self._policy.permits(caller, "see_input", plan.datastore_id, {})
        self._metrics.decisions.labels("allowed" if seeing.allow else "denied", "policy").inc()
        if not seeing.allow:
            reasons = "; ".join(seeing.reasons or ("no reason given",))
            raise PermissionDenied(
                f"policy denied see_input: {reasons}", seeing.decision_id, seeing.reasons
            )
        return json.dumps(self._policy.input_for(caller, plan), indent=2)

    async def watch(self, caller: Caller, operation_id: str) -> AsyncIterator[Event]:
        """Re-attach to an operation by id (its owner, or whom the policy allows)."""
        record = await self._runner.lookup(operation_id)
        await may_act_on(self._policy, self._metrics, caller, "watch", record)
        return self._streams.follow(record)

    @asynccontextmanager
    async def _decision_of(
        self, caller: Caller, request: UpdateRequest, rpc: str, deadline: float | None
    ) -> AsyncIterator[None]:
        """Through the gate for the block (waiting the caller's turn until `deadline`), failing
        closed (audited) when OPA cannot answer."""
        gate = self._gate.entry(caller, request.datastore_id, request.image_set_id, rpc, deadline)
        async with self._failing_closed(caller, request, rpc), gate:
            yield

    @asynccontextmanager
    async def _failing_closed(
        self, caller: Caller, request: UpdateRequest, rpc: str
    ) -> AsyncIterator[None]:
        """A refusal because OPA gave no usable answer is audited and counted."""
        try:
            yield
        except PolicyUnavailable as error:
            self._metrics.decisions.labels("unavailable", error.cause).inc()
            audit.unavailable(caller, request.datastore_id, request.image_set_id, rpc, error.cause)
            raise

    def _noted(self, record: OperationRecord) -> None:
        """Count what is out of the ordinary (its decision is audited with its own outcome)."""
        if record.approval is not None:
            self._metrics.approvals.labels("required").inc()
        elif record.decision.break_glass:
            self._metrics.break_glass.inc()

    async def _allowed(self, caller: Caller, plan: UpdatePlan) -> Decision:
        """OPA's decision (audited); PermissionDenied unless it allows the update (or asks for
        approval first)."""
        decision = await self._decide(caller, plan)
        self._decided(caller, plan, decision, UPDATE_RPC)
        if not decision.allow and not decision.needs_approval:
            raise PermissionDenied(
                "policy denied this update: " + "; ".join(decision.reasons or ("no reason given",)),
                decision.decision_id,
                decision.reasons,
            )
        return decision

    def _decided(self, caller: Caller, plan: UpdatePlan, decision: Decision, rpc: str) -> None:
        self._metrics.decisions.labels("allowed" if decision.allow else "denied", "policy").inc()
        audit.decided(caller, plan, decision, rpc)

    async def _decide(self, caller: Caller, plan: UpdatePlan) -> Decision:
        started = time.perf_counter()
        try:
            with tracing.span("policy.decide", tracing.plan_attributes(plan)):
                return await self._policy.decide(caller, plan)
        finally:
            self._metrics.decision_seconds.observe(time.perf_counter() - started)


def _deadline(time_remaining: float | None) -> float | None:
    """The call's deadline as epoch seconds (None: the caller set none)."""
    return time.time() + time_remaining if time_remaining is not None else None


def new_record(
    caller: Caller,
    request: UpdateRequest,
    plan: UpdatePlan,
    decision: Decision,
    deadline: float | None,
) -> OperationRecord:
    """The first record of an allowed update: queued (or awaiting approval, when the policy asks
    for it), with the audit's tag list (no values)."""
    now = time.time()
    approval = Approval.asked(decision, now) if decision.needs_approval else None
    return OperationRecord(
        id=str(uuid.uuid4()),
        principal=caller.principal,
        auth_method=caller.auth_method,
        roles=caller.roles,
        request=request,
        decision=decision,
        fingerprint=fingerprint(request),
        created_at=now,
        deadline=deadline,
        state="awaiting_approval" if approval else "queued",
        seq=1,
        touched=plan.touched_tags(),
        approval=approval,
    )
