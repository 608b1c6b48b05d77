"""Quota budgets: the bucket arithmetic, the in-process and Redis stores, throttles as waits."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from service.admission.buckets import (
    LocalStore,
    Quota,
    Slot,
    backoff,
    decreased,
    increased,
    mark_sent,
    penalise,
    schedule,
    tokens,
)
from service.admission.budget import UPDATE, Budget
from service.admission.budget_redis import RedisStore
from service.core.config import BackendSettings, BudgetSettings
from service.core.errors import DeadlineExceeded, ResourceExhausted
from service.journal.redis_client import RedisUnavailable
from service.observability.metrics import Metrics
from tests.e2e.conftest import redis_server

WRITES = Quota(rate=0.25, burst=1.0)
READS = Quota(rate=25.0, burst=50.0)


def starts(quota: Quota, arrivals: list[float], tat: float = 0.0) -> list[float]:
    """When each call reserved at these times may start."""
    result = []
    for now in arrivals:
        start, tat = schedule(tat, now, quota)
        result.append(start)
    return result


def test_burst_one_spaces_calls_by_the_interval() -> None:
    assert starts(WRITES, [100.0, 100.0, 100.0]) == [100.0, 104.0, 108.0]


def test_burst_allows_that_many_at_once_then_the_rate() -> None:
    quota = Quota(rate=1.0, burst=3.0)
    assert starts(quota, [100.0] * 5) == [100.0, 100.0, 100.0, 101.0, 102.0]


def test_an_idle_bucket_refills_to_its_burst_and_no_further() -> None:
    quota = Quota(rate=1.0, burst=3.0)
    _, tat = schedule(0.0, 100.0, quota)
    assert tokens(tat, 100.0, quota) == pytest.approx(2.0)
    assert tokens(tat, 1000.0, quota) == 3.0
    assert starts(quota, [1000.0] * 4, tat) == [1000.0, 1000.0, 1000.0, 1001.0]


def test_reservations_ahead_leave_no_tokens() -> None:
    tat = 0.0
    for _ in range(3):
        _, tat = schedule(tat, 100.0, WRITES)
    assert tokens(tat, 100.0, WRITES) == 0.0


def test_a_late_call_pushes_the_next_slot_back() -> None:
    _, tat = schedule(0.0, 100.0, WRITES)  # slot at 100, next at 104
    tat = mark_sent(tat, 101.5, WRITES)  # but the call left at 101.5
    assert starts(WRITES, [101.5], tat) == [105.5]


def test_a_throttle_pauses_the_bucket_and_then_it_refills_from_empty() -> None:
    quota = Quota(rate=10.0, burst=50.0)
    tat = penalise(0.0, 100.0, quota, pause=2.0)
    assert starts(quota, [100.0, 100.0], tat) == pytest.approx([102.0, 102.1])


def test_aimd_halves_to_a_floor_and_climbs_back_by_steps() -> None:
    settings = BudgetSettings(decrease_factor=0.5, min_fraction=0.2, increase_step=0.25)
    factor = 1.0
    factor = decreased(factor, settings)
    assert factor == 0.5
    factor = decreased(decreased(factor, settings), settings)
    assert factor == 0.2
    for _ in range(10):
        factor = increased(factor, settings)
    assert factor == 1.0


def test_backoff_doubles_up_to_its_cap() -> None:
    settings = BudgetSettings(backoff_seconds=1.0, max_backoff_seconds=5.0)
    assert [backoff(n, settings) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_local_store_starts_empty_and_waits_by_reservation() -> None:
    clock = [1000.0]
    store = LocalStore(BudgetSettings(), clock=lambda: clock[0])
    first = await store.reserve("k", WRITES)
    second = await store.reserve("k", WRITES)
    assert (first.wait, second.wait) == (4.0, 8.0)  # a restarted process assumes a call just went
    clock[0] += 20.0
    assert (await store.peek("k", WRITES)).wait == 0.0


async def test_local_store_throttle_slows_the_rate_and_successes_restore_it() -> None:
    clock = [1000.0]
    settings = BudgetSettings(decrease_factor=0.5, increase_step=0.5, min_fraction=0.1)
    store = LocalStore(settings, clock=lambda: clock[0])
    quota = Quota(rate=1.0, burst=1.0)
    slowed = await store.throttled("k", quota, pause=3.0)
    assert slowed.factor == 0.5
    assert (await store.reserve("k", quota)).wait == pytest.approx(3.0)
    assert (await store.reserve("k", quota)).wait == pytest.approx(5.0)  # 2 s apart now
    assert (await store.succeeded("k", quota)).factor == 1.0


# --- the budget: throttles become waits -----------------------------------------------------------


def fast_budget(store: bool = True) -> Budget:
    settings = BudgetSettings(
        update_rate=100.0, update_burst=100.0, backoff_seconds=0.01, max_backoff_seconds=0.02
    )
    local = LocalStore(settings) if store else None
    return Budget(settings, "default:us-east-1", local, Metrics())


def throttled_then(answer: str, throttles: int) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls = [0]

    async def request() -> str:
        calls[0] += 1
        if calls[0] <= throttles:
            raise ResourceExhausted("Rate exceeded", 4.0, reason="BACKEND_THROTTLED")
        return answer

    return calls, request


async def test_a_throttled_call_is_retried_until_it_succeeds() -> None:
    budget = fast_budget()
    calls, request = throttled_then("done", throttles=3)

    result = await budget.call(UPDATE, request)

    assert result == "done"
    assert calls[0] == 4
    assert budget._last[UPDATE].factor < 1.0  # shrunk by the throttles, one success added back


class StoreDownAfterTheCall(LocalStore):
    """The shared store stops answering once the call has been made (Redis went away)."""

    async def succeeded(self, key: str, quota: Quota) -> Slot:
        raise RedisUnavailable("budget: redis unavailable (ConnectionError)")


async def test_a_store_failure_after_the_call_does_not_fail_the_call() -> None:
    settings = BudgetSettings(
        update_rate=100.0, update_burst=100.0, backoff_seconds=0.01, max_backoff_seconds=0.02
    )
    budget = Budget(settings, "default:us-east-1", StoreDownAfterTheCall(settings), Metrics())
    calls, request = throttled_then("applied", throttles=1)

    assert await budget.call(UPDATE, request) == "applied"  # HealthImaging took it: say so
    assert calls[0] == 2


async def test_other_errors_are_not_retried() -> None:
    budget = fast_budget()
    calls = [0]

    async def request() -> str:
        calls[0] += 1
        raise ResourceExhausted("too many concurrent updates", 4.0, reason="QUEUE_FULL")

    with pytest.raises(ResourceExhausted):
        await budget.call(UPDATE, request)
    assert calls[0] == 1


async def test_throttles_past_the_deadline_end_as_deadline_exceeded() -> None:
    budget = fast_budget()
    _, request = throttled_then("never", throttles=100)

    with pytest.raises(DeadlineExceeded):
        await budget.call(UPDATE, request, deadline=0.0)


async def test_without_budgets_calls_go_at_once() -> None:
    budget = fast_budget(store=False)
    assert await budget.reserve(UPDATE) == 0.0
    assert budget.interval(UPDATE) == 0.0


async def test_metrics_count_calls_and_throttles_by_operation() -> None:
    budget = fast_budget()
    _, request = throttled_then("done", throttles=2)
    await budget.call(UPDATE, request)
    registry = budget._metrics.registry
    sample = registry.get_sample_value
    assert sample("imaging_proxy_backend_throttles_total", {"operation": UPDATE}) == 2.0
    ok = {"operation": UPDATE, "outcome": "ok"}
    assert sample("imaging_proxy_backend_calls_total", ok) == 1.0


# --- Redis: one bucket for every replica ----------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-budget")) as url:
        yield url


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[aioredis.Redis]]:
    opened = [aioredis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    await opened[0].flushdb()
    yield opened
    for client in opened:
        await client.aclose()


@pytest.mark.redis
async def test_two_replicas_share_one_bucket(clients: list[aioredis.Redis]) -> None:
    settings = BudgetSettings()
    stores = [RedisStore(client, settings, "test", clock=lambda: 1000.0) for client in clients]
    quota = Quota(rate=2.0, burst=1.0)

    slots = await asyncio.gather(*(stores[i % 2].reserve("acct:eu", quota) for i in range(8)))

    waits = sorted(slot.wait for slot in slots)
    gaps = [later - earlier for earlier, later in itertools.pairwise(waits)]
    assert gaps == pytest.approx([0.5] * 7, abs=1e-6)  # never two in one slot
    assert waits[0] == pytest.approx(0.5, abs=1e-6)  # a new bucket starts empty


@pytest.mark.redis
async def test_redis_bucket_matches_the_local_arithmetic(clients: list[aioredis.Redis]) -> None:
    settings = BudgetSettings(decrease_factor=0.5, increase_step=0.5, min_fraction=0.1)
    store = RedisStore(clients[0], settings, "test")
    quota = Quota(rate=10.0, burst=5.0)

    for _ in range(5):
        await store.reserve("acct:eu", quota)
    assert (await store.peek("acct:eu", quota)).tokens == pytest.approx(0.0, abs=0.1)
    slowed = await store.throttled("acct:eu", quota, pause=1.0)
    assert slowed.factor == 0.5
    assert slowed.wait == pytest.approx(1.0, abs=0.05)
    assert (await store.succeeded("acct:eu", quota)).factor == 1.0


@pytest.mark.redis
async def test_a_budget_opened_on_redis_waits_for_the_shared_slot(redis_url: str) -> None:
    settings = BudgetSettings(update_rate=2.0, update_burst=1.0, headroom=1.0)
    backend = BackendSettings(region="eu-west-1")
    async with (
        Budget.open(settings, backend, redis_url, "shared", Metrics()) as first,
        Budget.open(settings, backend, redis_url, "shared", Metrics()) as second,
    ):
        waits = [await first.reserve(UPDATE) for _ in range(3)]
        waits.append(await second.reserve(UPDATE))
    # Redis's clock moves between the calls: only the order is exact. The arithmetic is pinned
    # with a fixed clock in test_two_replicas_share_one_bucket.
    assert waits[3] > waits[2] > waits[1] > waits[0]


def test_each_server_has_its_own_metrics() -> None:
    first, second = Metrics(), Metrics()
    first.throttles.labels(UPDATE).inc()
    name, labels = "imaging_proxy_backend_throttles_total", {"operation": UPDATE}
    assert first.registry.get_sample_value(name, labels) == 1.0
    assert second.registry.get_sample_value(name, labels) is None
