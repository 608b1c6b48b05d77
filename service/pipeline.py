"""The update pipeline below the transport: normalise → decide → start an operation → stream it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from service import audit
from service.errors import PermissionDenied
from service.identity import Caller
from service.operations import Event, Operations
from service.policy import Decision, PolicyClient
from service.updates import UpdatePlan, UpdateRequest, normalise


class Pipeline:
    """What the gRPC handlers call, with protobuf-free values."""

    def __init__(self, policy: PolicyClient, operations: Operations) -> None:
        self._policy = policy
        self._operations = operations

    async def evaluate(self, caller: Caller, request: UpdateRequest) -> tuple[UpdatePlan, Decision]:
        """Validate, classify and decide; nothing is submitted."""
        plan = normalise(request)
        return plan, await self._policy.decide(caller, plan)

    async def update(self, caller: Caller, request: UpdateRequest) -> AsyncIterator[Event]:
        plan, decision = await self.evaluate(caller, request)
        if not decision.allow:
            audit.denied(caller, plan, decision)
            raise PermissionDenied(
                "policy denied this update: " + "; ".join(decision.reasons or ("no reason given",)),
                decision.decision_id,
                decision.reasons,
            )
        operation = self._operations.start(caller, plan, decision)
        async for event in self._operations.stream(operation):
            yield event

    async def watch(self, caller: Caller, operation_id: str) -> AsyncIterator[Event]:
        operation = self._operations.get(operation_id, caller)
        async for event in self._operations.stream(operation):
            yield event
