"""Unit tests of the gate before any work: role cache, a fair turn, readiness debounce."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from service.admission.fairness import Flows
from service.admission.stages import FairStage
from service.core.config import LimitSettings
from service.core.errors import PermissionDenied
from service.core.model import Caller
from service.observability.metrics import Metrics
from service.policy.decision_gate import NO_ROLE, Gate, RoleCache
from service.policy.decisions import RoleAnswer
from service.transport.health import Reachability

DATASTORE = "1" * 32
IMAGE_SET = "a" * 32
EDITOR = Caller("dev:demo-editor", "dev")
NOBODY = Caller("dev:nobody-at-all", "dev")


class Opa:
    """Stands in for OPA's role answers: counts queries, can hold them back or fail them."""

    def __init__(self, roles: dict[str, frozenset[str] | None]) -> None:
        self.roles = roles
        self.queries: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False

    async def lookup(self, caller: Caller, datastore_id: str) -> RoleAnswer:
        self.queries.append((caller.principal, datastore_id))
        await self.release.wait()
        if self.fail:
            raise PermissionError("OPA is down")
        return RoleAnswer(self.roles.get(caller.principal, frozenset()), f"d{len(self.queries)}")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def opa() -> Opa:
    return Opa({EDITOR.principal: frozenset({"metadata-editor"})})


# --- the role cache ----------------------------------------------------------------------------


async def test_answers_are_reused_until_they_expire(opa: Opa) -> None:
    clock = Clock()
    cache = RoleCache(opa.lookup, 5.0, clock)
    first = await cache.answer(EDITOR, DATASTORE)
    clock.now += 4.9
    assert await cache.answer(EDITOR, DATASTORE) == first
    clock.now += 0.2
    assert (await cache.answer(EDITOR, DATASTORE)).decision_id == "d2"
    assert len(opa.queries) == 2


async def test_concurrent_requests_of_one_caller_share_one_query(opa: Opa) -> None:
    cache = RoleCache(opa.lookup, 5.0)
    opa.release.clear()
    waiting = [asyncio.create_task(cache.answer(NOBODY, DATASTORE)) for _ in range(50)]
    await asyncio.sleep(0)
    opa.release.set()
    answers = await asyncio.gather(*waiting)
    assert {answer.roles for answer in answers} == {frozenset()}
    assert opa.queries == [(NOBODY.principal, DATASTORE)]


async def test_a_leaving_caller_does_not_cancel_the_answer_others_wait_for(opa: Opa) -> None:
    cache = RoleCache(opa.lookup, 5.0)
    opa.release.clear()
    leaving = asyncio.create_task(cache.answer(EDITOR, DATASTORE))
    staying = asyncio.create_task(cache.answer(EDITOR, DATASTORE))
    await asyncio.sleep(0)
    leaving.cancel()
    opa.release.set()
    assert (await staying).roles == frozenset({"metadata-editor"})
    assert len(opa.queries) == 1


async def test_a_failed_query_is_not_remembered(opa: Opa) -> None:
    cache = RoleCache(opa.lookup, 5.0)
    opa.fail = True
    with pytest.raises(PermissionError):
        await cache.answer(EDITOR, DATASTORE)
    opa.fail = False
    assert (await cache.answer(EDITOR, DATASTORE)).roles == frozenset({"metadata-editor"})
    assert len(opa.queries) == 2


@pytest.mark.parametrize(
    "other",
    [
        (Caller("dev:demo-editor", "dev", ("metadata-admin",)), DATASTORE),  # token roles differ
        (Caller("dev:demo-editor2", "dev"), DATASTORE),
        (EDITOR, "2" * 32),
    ],
    ids=["roles", "principal", "datastore"],
)
async def test_the_key_is_principal_token_roles_and_datastore(
    opa: Opa, other: tuple[Caller, str]
) -> None:
    cache = RoleCache(opa.lookup, 5.0)
    await cache.answer(EDITOR, DATASTORE)
    await cache.answer(*other)
    assert len(opa.queries) == 2


async def test_the_cache_is_bounded(opa: Opa) -> None:
    cache = RoleCache(opa.lookup, 5.0, capacity=3)
    for n in range(5):
        await cache.answer(Caller(f"dev:svc-{n}", "dev"), DATASTORE)
    await cache.answer(Caller("dev:svc-4", "dev"), DATASTORE)  # still kept
    await cache.answer(Caller("dev:svc-0", "dev"), DATASTORE)  # dropped: asked again
    assert len(opa.queries) == 6


# --- the gate ------------------------------------------------------------------------------------


def gate_of(opa: Opa, deciding: int = 64) -> Gate:
    metrics = Metrics()
    decisions = FairStage("decisions", deciding, Flows(100), metrics)
    return Gate(opa.lookup, LimitSettings(role_cache_seconds=5.0), decisions, metrics)


@pytest.fixture
def gate(opa: Opa) -> Iterator[Gate]:
    yield gate_of(opa, deciding=1)


async def test_a_caller_without_a_role_is_refused_with_opas_decision(gate: Gate) -> None:
    with pytest.raises(PermissionDenied) as refused:
        async with gate.entry(NOBODY, DATASTORE, IMAGE_SET):
            raise AssertionError("the work ran")
    assert refused.value.reasons == (NO_ROLE,)
    assert refused.value.decision_id == "d1"


async def test_an_undefined_roles_rule_leaves_the_judgement_to_the_decision(opa: Opa) -> None:
    opa.roles[NOBODY.principal] = None
    gate = gate_of(opa)
    async with gate.entry(NOBODY, DATASTORE, IMAGE_SET):
        pass


async def test_a_malformed_datastore_id_is_left_to_the_normaliser(opa: Opa, gate: Gate) -> None:
    async with gate.entry(NOBODY, "not a datastore id", IMAGE_SET):
        pass
    assert opa.queries == []


async def test_a_turn_is_held_for_the_block_and_the_next_caller_waits_for_it(gate: Gate) -> None:
    """One place (`max_deciding` = 1): a second request waits, it is not refused."""
    entered = asyncio.Event()

    async def second() -> None:
        async with gate.entry(EDITOR, DATASTORE, IMAGE_SET):
            entered.set()

    async with gate.entry(EDITOR, DATASTORE, IMAGE_SET):
        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.01)
        assert not entered.is_set()
    await asyncio.wait_for(waiting, 1)
    with pytest.raises(ValueError, match="the work failed"):
        async with gate.entry(EDITOR, DATASTORE, IMAGE_SET):
            raise ValueError("the work failed")
    async with gate.entry(EDITOR, DATASTORE, IMAGE_SET):
        pass


# --- readiness debounce ------------------------------------------------------------------------


def test_reachability_needs_one_answer_to_come_up_and_n_failures_to_go_down() -> None:
    opa = Reachability(failures=2)
    assert [opa.observe(ok) for ok in (False, True, False, True, False, False, True)] == [
        False,
        True,
        True,
        True,
        True,
        False,
        True,
    ]
