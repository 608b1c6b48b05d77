"""The request path without processes: gate → normalise → same key? → decide → admit → record →
launch → follow, over the runner of tests/unit/inmemory.py and a scripted policy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest

from service.backend.references import References
from service.core.errors import InvalidArgument, PermissionDenied, Unavailable
from service.core.model import Caller, Decision, OperationRecord, UpdatePlan
from service.normaliser.updates import DEFAULT_LIMITS
from service.observability import audit
from service.observability.metrics import Metrics
from service.operations.events import Authorized, Event, Finished
from service.operations.pipeline import Pipeline
from service.policy.decisions import RoleAnswer
from tests.unit.operations.inmemory import (
    CALLER,
    ImageSet,
    MemoryJournal,
    Shared,
    new_record,
    replica,
    update_request,
)

WITHIN = 5.0
EDITOR = frozenset({"metadata-editor"})
ADMIN_ROLE = "metadata-admin"


class Policy:
    """OPA as the pipeline asks it, scripted: roles by principal, one verdict for every update."""

    def __init__(self, allow: bool = True, roles: dict[str, frozenset[str]] | None = None) -> None:
        self.allow = allow
        self.grants = roles if roles is not None else {CALLER.principal: EDITOR}
        self.decided = 0

    async def decide(self, caller: Caller, plan: UpdatePlan) -> Decision:
        self.decided += 1
        reasons = () if self.allow else ("metadata-editor may not change this attribute",)
        return Decision(self.allow, reasons, f"decision-{self.decided}")

    async def roles(self, caller: Caller, datastore_id: str) -> frozenset[str]:
        return self.grants.get(caller.principal, frozenset())

    async def permits(
        self, caller: Caller, action: str, datastore_id: str, facts: dict[str, Any]
    ) -> Decision:
        """policies/imaging/operations.rego's rule: an admin may act on others' operations."""
        allow = ADMIN_ROLE in await self.roles(caller, datastore_id)
        return Decision(allow, () if allow else ("requires role metadata-admin",), "ops-1")

    async def role_answer(self, caller: Caller, datastore_id: str) -> RoleAnswer:
        return RoleAnswer(await self.roles(caller, datastore_id), "roles-1")


@dataclass
class Path:
    pipeline: Pipeline
    shared: Shared
    image_set: ImageSet
    policy: Policy


class LateKeys(MemoryJournal):
    """A journal where another replica records the same key between our look and our create."""

    async def by_key(self, principal: str, key: str) -> OperationRecord | None:
        return None


@asynccontextmanager
async def request_path(
    policy: Policy, journal: type[MemoryJournal] = MemoryJournal
) -> AsyncIterator[Path]:
    shared, image_set = Shared(), ImageSet()
    async with replica(journal(shared, "a"), image_set) as one:
        scripted: Any = policy  # the OPA adapter's three questions, answered by the script
        backend: Any = image_set
        references = References(backend, one.stages.reference_reads, one.stages.polls)
        pipeline = Pipeline(
            scripted,
            one.runner,
            one.streams,
            Metrics(),
            DEFAULT_LIMITS,
            one.stages.decisions,
            references,
        )
        yield Path(pipeline, shared, image_set, policy)


async def streamed(events: AsyncIterator[Event]) -> list[Event]:
    async def collect() -> list[Event]:
        return [event async for event in events]

    return await asyncio.wait_for(collect(), WITHIN)


async def test_an_allowed_update_is_decided_recorded_submitted_and_followed_to_its_end() -> None:
    async with request_path(Policy()) as path:
        events = await streamed(await path.pipeline.update(CALLER, update_request(), 30.0))
    assert isinstance(events[0], Authorized) and events[0].decision.decision_id == "decision-1"
    assert isinstance(events[-1], Finished)
    (record,) = path.shared.records.values()
    assert record.principal == CALLER.principal and record.deadline is not None
    assert record.touched == ("study:00081030",)
    assert path.image_set.submits == 1


async def test_a_denied_update_records_nothing_and_submits_nothing() -> None:
    async with request_path(Policy(allow=False)) as path:
        with pytest.raises(PermissionDenied) as denied:
            await streamed(await path.pipeline.update(CALLER, update_request(), None))
    assert denied.value.decision_id == "decision-1"
    assert path.shared.writes == [] and path.image_set.submits == 0


async def test_a_caller_without_a_role_is_refused_before_the_decision() -> None:
    async with request_path(Policy(roles={})) as path:
        with pytest.raises(PermissionDenied):
            await streamed(await path.pipeline.update(CALLER, update_request(), None))
    assert path.policy.decided == 0 and path.shared.writes == []


async def test_the_same_idempotency_key_follows_the_first_operation_undecided() -> None:
    async with request_path(Policy()) as path:
        first = await streamed(await path.pipeline.update(CALLER, update_request("key-1"), None))
        again = await streamed(await path.pipeline.update(CALLER, update_request("key-1"), None))
        other = update_request("key-1", latest_version_id="2")  # a different request
        with pytest.raises(InvalidArgument):
            await streamed(await path.pipeline.update(CALLER, other, None))
    assert {event.operation_id for event in first + again} == {first[0].operation_id}
    assert isinstance(again[-1], Finished)
    assert path.policy.decided == 1 and path.image_set.submits == 1
    assert len(path.shared.records) == 1


async def test_a_key_won_by_a_concurrent_request_is_followed_not_launched_again() -> None:
    async with request_path(Policy(), LateKeys) as path:
        winner = MemoryJournal(path.shared, "b")
        twin = await winner.create(new_record(update_request("key-1"), "op-winner"))
        with pytest.raises(Unavailable, match="not running in this process"):
            await streamed(await path.pipeline.update(CALLER, update_request("key-1"), None))
    assert path.image_set.submits == 0
    assert path.shared.writes == [("b", twin.id, "queued")]  # ours was never recorded


async def test_only_the_owner_or_an_admin_may_watch_an_operation() -> None:
    stranger, admin = (
        replace(CALLER, principal="dev:mallory"),
        replace(CALLER, principal="dev:root"),
    )
    policy = Policy(roles={CALLER.principal: EDITOR, admin.principal: frozenset({ADMIN_ROLE})})
    async with request_path(policy) as path:
        events = await streamed(await path.pipeline.update(CALLER, update_request(), None))
        operation_id = events[0].operation_id
        with audit.capture() as audited:
            with pytest.raises(PermissionDenied) as refused:
                await streamed(await path.pipeline.watch(stranger, operation_id))
            watched = await streamed(await path.pipeline.watch(admin, operation_id))
            await streamed(await path.pipeline.watch(CALLER, operation_id))  # owner: no decision
    assert refused.value.decision_id == "ops-1"  # imaging.operations decided (scripted)
    assert [(r["principal"], r["outcome"], r["rpc"]) for r in audited] == [
        (stranger.principal, "denied", "WatchUpdate"),
        (admin.principal, "allowed", "WatchUpdate"),
    ]
    last, replayed = events[-1], watched[-1]
    assert isinstance(last, Finished) and isinstance(replayed, Finished)
    assert replayed.status == last.status
