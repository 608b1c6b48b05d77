"""The update pipeline below the transport: gate → normalise → (same key?) → decide → admit →
stream. The gate (service/gate.py) refuses callers without a role and bounds the requests being
normalised and decided, before any of that work starts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from service import audit
from service.config import LimitSettings
from service.errors import PermissionDenied
from service.events import Event
from service.gate import Gate
from service.identity import Caller
from service.journal import OperationRecord
from service.metrics import Metrics
from service.operations import Operations
from service.policy import Decision, PolicyClient
from service.updates import UpdatePlan, UpdateRequest, normalise

ADMIN_ROLE = "metadata-admin"


class Pipeline:
    """What the gRPC handlers call, with protobuf-free values."""

    def __init__(
        self, policy: PolicyClient, operations: Operations, metrics: Metrics, limits: LimitSettings
    ) -> None:
        self._policy = policy
        self._operations = operations
        self._metrics = metrics
        self._limits = limits
        self._gate = Gate(policy.role_answer, limits, metrics)

    async def evaluate(self, caller: Caller, request: UpdateRequest) -> tuple[UpdatePlan, Decision]:
        """Validate, classify and decide; nothing is submitted."""
        async with self._gate.entry(caller, request.datastore_id, request.image_set_id):
            plan = normalise(request, self._limits)
            return plan, await self._decide(caller, plan)

    async def _decide(self, caller: Caller, plan: UpdatePlan) -> Decision:
        started = time.perf_counter()
        try:
            return await self._policy.decide(caller, plan)
        finally:
            self._metrics.decision_seconds.observe(time.perf_counter() - started)

    async def update(
        self, caller: Caller, request: UpdateRequest, time_remaining: float | None
    ) -> AsyncIterator[Event]:
        """`time_remaining`: seconds left of the call's deadline (None: no deadline).

        A retry with the same idempotency key re-streams the first operation, undecided again.
        """
        record = await self._operation(caller, request, time_remaining)
        async for event in self._operations.stream(record):
            yield event

    async def _operation(
        self, caller: Caller, request: UpdateRequest, time_remaining: float | None
    ) -> OperationRecord:
        """The first operation of a repeated idempotency key, or a new allowed one (admitted)."""
        async with self._gate.entry(caller, request.datastore_id, request.image_set_id):
            plan = normalise(request, self._limits)
            record = await self._operations.existing(caller.principal, request)
            if record is not None:
                return record
            decision = await self._allowed(caller, plan)
        deadline = time.time() + time_remaining if time_remaining is not None else None
        return await self._operations.start(caller, request, plan, decision, deadline)

    async def _allowed(self, caller: Caller, plan: UpdatePlan) -> Decision:
        """OPA's decision when it allows the update; PermissionDenied (audited) otherwise."""
        decision = await self._decide(caller, plan)
        if not decision.allow:
            audit.denied(caller, plan, decision)
            raise PermissionDenied(
                "policy denied this update: " + "; ".join(decision.reasons or ("no reason given",)),
                decision.decision_id,
                decision.reasons,
            )
        return decision

    async def watch(self, caller: Caller, operation_id: str) -> AsyncIterator[Event]:
        record = await self._operations.lookup(operation_id)
        await self._may_watch(caller, record)
        async for event in self._operations.stream(record):
            yield event

    async def _may_watch(self, caller: Caller, record: OperationRecord) -> None:
        """Its owner, or an admin on its data store (roles as OPA grants them)."""
        if caller.principal == record.principal:
            return
        if ADMIN_ROLE in await self._policy.roles(caller, record.request.datastore_id):
            return
        raise PermissionDenied(
            "only the caller who started an operation (or an admin) may watch it"
        )
