"""Quota budgets: token buckets per AWS account + region + operation, in-process or in Redis.

A bucket is GCRA state (one "theoretical arrival time"): reserving a call answers how long to
wait, so callers queue by sleeping and never by being refused. The same arithmetic runs here
and, for replicas, as one atomic Lua script in Redis (on Redis's clock), so N replicas share one
bucket instead of guessing their share. aiolimiter is not used: its rate is fixed at creation,
while ours shrinks and grows (AIMD after throttles), the admission queue must ask when the next
slot comes (estimated starts), and the shared bucket must be one Redis script; one small
algorithm serves all three.

On a ThrottlingException the call is retried, not failed: the bucket pauses (for every caller),
its rate is multiplied down, and each success adds a step back up to the configured rate.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
import structlog

from service.config import BackendSettings, BudgetSettings
from service.errors import DeadlineExceeded, ProxyError, ResourceExhausted
from service.metrics import Metrics
from service.redis import blocking_redis, translated

log = structlog.get_logger(__name__)

T = TypeVar("T")

UPDATE = "UpdateImageSetMetadata"
GET_IMAGE_SET = "GetImageSet"
GET_IMAGE_SET_METADATA = "GetImageSetMetadata"
THROTTLED = "BACKEND_THROTTLED"


@dataclass(frozen=True)
class Quota:
    """A token bucket's shape: calls per second and the burst allowed after idling."""

    rate: float
    burst: float

    @property
    def interval(self) -> float:
        return 1.0 / self.rate


@dataclass(frozen=True)
class Slot:
    """A bucket's answer: wait before the call, tokens left, rate factor in force."""

    wait: float
    tokens: float
    factor: float


# --- the arithmetic (pure; the Lua script below mirrors it line by line) ------------------------


def schedule(tat: float, now: float, quota: Quota) -> tuple[float, float]:
    """Reserve one call: (when it may start, the bucket's new theoretical arrival time)."""
    start = max(now, tat - (quota.burst - 1.0) * quota.interval)
    return start, max(start, tat) + quota.interval


def next_start(tat: float, now: float, quota: Quota) -> float:
    """When a call reserved now would start (nothing is reserved)."""
    return max(now, tat - (quota.burst - 1.0) * quota.interval)


def mark_sent(tat: float, sent: float, quota: Quota) -> float:
    """A call that left late pushes the next slot back, so real gaps never shrink below one."""
    return max(tat, sent + quota.interval)


def penalise(tat: float, now: float, quota: Quota, pause: float) -> float:
    """After a throttle: no call for `pause` seconds, then the bucket refills from empty."""
    return max(tat, now + pause + (quota.burst - 1.0) * quota.interval)


def tokens(tat: float, now: float, quota: Quota) -> float:
    """Calls that could start right now (0 while reserved slots lie ahead)."""
    return max(0.0, min(quota.burst, quota.burst - (tat - now) * quota.rate))


def scaled(quota: Quota, factor: float) -> Quota:
    return Quota(quota.rate * factor, quota.burst)


def decreased(factor: float, settings: BudgetSettings) -> float:
    return max(settings.min_fraction, factor * settings.decrease_factor)


def increased(factor: float, settings: BudgetSettings) -> float:
    return min(1.0, factor + settings.increase_step)


def backoff(attempt: int, settings: BudgetSettings) -> float:
    """Pause after the `attempt`-th throttle in a row (1, 2, …): doubling, capped."""
    return float(min(settings.max_backoff_seconds, settings.backoff_seconds * 2 ** (attempt - 1)))


# --- stores -------------------------------------------------------------------------------------


class BucketStore(Protocol):
    """Where buckets live; every method is one atomic step on one bucket."""

    async def reserve(self, key: str, quota: Quota) -> Slot: ...
    async def peek(self, key: str, quota: Quota) -> Slot: ...
    async def sent(self, key: str, quota: Quota) -> None: ...
    async def throttled(self, key: str, quota: Quota, pause: float) -> Slot: ...
    async def succeeded(self, key: str, quota: Quota) -> Slot: ...


@dataclass
class _Bucket:
    tat: float
    factor: float = 1.0


class LocalStore:
    """Buckets of this process. A new bucket starts empty: a restarted process cannot know how
    much of the quota its predecessor has just used."""

    def __init__(self, settings: BudgetSettings, clock: Callable[[], float] = time.monotonic):
        self._settings = settings
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _get(self, key: str, quota: Quota) -> tuple[_Bucket, float]:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tat=now + quota.interval)
        return bucket, now

    def _slot(self, bucket: _Bucket, now: float, quota: Quota, start: float) -> Slot:
        current = scaled(quota, bucket.factor)
        return Slot(start - now, tokens(bucket.tat, now, current), bucket.factor)

    async def reserve(self, key: str, quota: Quota) -> Slot:
        bucket, now = self._get(key, quota)
        start, bucket.tat = schedule(bucket.tat, now, scaled(quota, bucket.factor))
        return self._slot(bucket, now, quota, start)

    async def peek(self, key: str, quota: Quota) -> Slot:
        bucket, now = self._get(key, quota)
        return self._slot(
            bucket, now, quota, next_start(bucket.tat, now, scaled(quota, bucket.factor))
        )

    async def sent(self, key: str, quota: Quota) -> None:
        bucket, now = self._get(key, quota)
        bucket.tat = mark_sent(bucket.tat, now, scaled(quota, bucket.factor))

    async def throttled(self, key: str, quota: Quota, pause: float) -> Slot:
        bucket, now = self._get(key, quota)
        bucket.factor = decreased(bucket.factor, self._settings)
        bucket.tat = penalise(bucket.tat, now, scaled(quota, bucket.factor), pause)
        return await self.peek(key, quota)

    async def succeeded(self, key: str, quota: Quota) -> Slot:
        bucket, _ = self._get(key, quota)
        bucket.factor = increased(bucket.factor, self._settings)
        return await self.peek(key, quota)


# One script for every step, so the arithmetic exists once in Lua; times come from Redis's clock
# (ARGV[1] empty), so replicas agree, unless the store was given a clock (tests).
# Numbers travel as strings: Redis truncates Lua numbers to integers.
_BUCKET_LUA = """
local function fmt(x) return string.format('%.6f', x) end
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local rate, burst, step = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local state = redis.call('HMGET', KEYS[1], 'tat', 'factor')
local factor = tonumber(state[2]) or 1
local interval = 1 / (rate * factor)
local tat = tonumber(state[1]) or (now + interval)
local start = math.max(now, tat - (burst - 1) * interval)
if step == 'reserve' then
  tat = math.max(start, tat) + interval
elseif step == 'sent' then
  tat = math.max(tat, now + interval)
elseif step == 'throttled' then
  factor = math.max(tonumber(ARGV[7]), factor * tonumber(ARGV[6]))
  interval = 1 / (rate * factor)
  tat = math.max(tat, now + tonumber(ARGV[5]) + (burst - 1) * interval)
  start = math.max(now, tat - (burst - 1) * interval)
elseif step == 'succeeded' then
  factor = math.min(1, factor + tonumber(ARGV[5]))
end
if step ~= 'peek' then
  redis.call('HSET', KEYS[1], 'tat', fmt(tat), 'factor', fmt(factor))
  redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(tat - now, 0) + 3600) * 1000))
end
local left = math.max(0, math.min(burst, burst - (tat - now) * rate * factor))
return {fmt(start - now), fmt(left), fmt(factor)}
"""


class RedisStore:
    """Buckets shared by every replica through one atomic Lua script."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: BudgetSettings,
        prefix: str,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._script = client.register_script(_BUCKET_LUA)
        self._settings = settings
        self._prefix = prefix
        self._clock = clock  # None: Redis's own clock, shared by every replica

    @translated("budget")
    async def _run(self, key: str, quota: Quota, step: str, *extra: float) -> Slot:
        now = repr(self._clock()) if self._clock else ""
        args = [now, repr(quota.rate), repr(quota.burst), step, *(repr(x) for x in extra)]
        wait, left, factor = await self._script(keys=[f"{self._prefix}:budget:{key}"], args=args)
        return Slot(float(wait), float(left), float(factor))

    async def reserve(self, key: str, quota: Quota) -> Slot:
        return await self._run(key, quota, "reserve")

    async def peek(self, key: str, quota: Quota) -> Slot:
        return await self._run(key, quota, "peek")

    async def sent(self, key: str, quota: Quota) -> None:
        await self._run(key, quota, "sent")

    async def throttled(self, key: str, quota: Quota, pause: float) -> Slot:
        settings = self._settings
        return await self._run(
            key, quota, "throttled", pause, settings.decrease_factor, settings.min_fraction
        )

    async def succeeded(self, key: str, quota: Quota) -> Slot:
        return await self._run(key, quota, "succeeded", self._settings.increase_step)


def _with_headroom(rate: float, burst: float, headroom: float) -> Quota:
    """Stay under the account's quota: a bucket that is still full after a pause would
    otherwise allow a whole burst on top of the calls HealthImaging has not forgotten yet."""
    return Quota(rate * headroom, max(1.0, math.floor(burst * headroom)))


# --- the budget the rest of the proxy uses ------------------------------------------------------


class Budget:
    """Gate for every HealthImaging call: wait for a slot, call, absorb throttles by waiting."""

    def __init__(
        self, settings: BudgetSettings, scope: str, store: BucketStore | None, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._scope = scope
        self._store = store
        self._metrics = metrics
        self._quotas = {
            UPDATE: _with_headroom(settings.update_rate, settings.update_burst, settings.headroom),
            GET_IMAGE_SET: _with_headroom(
                settings.get_image_set_rate, settings.get_image_set_burst, settings.headroom
            ),
            # A bucket of its own, sized like GetImageSet's (its documented quota is twice that).
            GET_IMAGE_SET_METADATA: _with_headroom(
                settings.get_image_set_rate, settings.get_image_set_burst, settings.headroom
            ),
        }
        self._last: dict[str, Slot] = {}
        for operation, quota in self._quotas.items():
            self._last[operation] = Slot(0.0, quota.burst, 1.0)
            metrics.budget_tokens.labels(operation).set_function(self._reader(operation, "tokens"))
            metrics.budget_factor.labels(operation).set_function(self._reader(operation, "factor"))

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: BudgetSettings,
        backend: BackendSettings,
        redis_url: str,
        prefix: str,
        metrics: Metrics,
    ) -> AsyncIterator[Budget]:
        """`redis_url` (settings.url, else the journal's Redis, else empty) shares the buckets."""
        scope = f"{backend.account_id or 'default'}:{backend.region}"
        if not settings.enabled:
            yield cls(settings, scope, None, metrics)
        elif redis_url:
            client = blocking_redis(redis_url)
            try:
                yield cls(settings, scope, RedisStore(client, settings, prefix), metrics)
            finally:
                await client.aclose()
        else:
            yield cls(settings, scope, LocalStore(settings), metrics)

    def _reader(self, operation: str, field: str) -> Callable[[], float]:
        return lambda: float(getattr(self._last[operation], field))

    def _key(self, operation: str) -> str:
        return f"{self._scope}:{operation}"

    def interval(self, operation: str) -> float:
        """Seconds between calls at the rate in force (0 without budgets)."""
        if self._store is None:
            return 0.0
        return self._quotas[operation].interval / self._last[operation].factor

    async def reserve(self, operation: str) -> float:
        """Reserve the next slot; returns the seconds to wait before using it."""
        if self._store is None:
            return 0.0
        slot = self._last[operation] = await self._store.reserve(
            self._key(operation), self._quotas[operation]
        )
        return max(0.0, slot.wait)

    async def next_start(self, operation: str) -> float:
        """Seconds until a slot reserved now would start."""
        if self._store is None:
            return 0.0
        slot = self._last[operation] = await self._store.peek(
            self._key(operation), self._quotas[operation]
        )
        return max(0.0, slot.wait)

    async def acquire(self, operation: str) -> None:
        """Wait for a slot, reserving it only once it is due: a waiter cancelled meanwhile (a
        stream gone, a watch timed out) must not leave a reservation that delays everyone."""
        while (wait := await self.next_start(operation)) > 0:  # noqa: ASYNC110 - a timed wait
            await asyncio.sleep(wait)
        await asyncio.sleep(await self.reserve(operation))

    async def call(
        self,
        operation: str,
        request: Callable[[], Awaitable[T]],
        *,
        acquired: bool = False,
        deadline: float | None = None,
    ) -> T:
        """`request()` inside the budget; throttles become waits (until `deadline`, epoch)."""
        if not acquired:
            await self.acquire(operation)
        attempt = 0
        while True:
            try:
                result = await self._send(operation, request)
            except ResourceExhausted as exc:
                if exc.reason != THROTTLED:
                    raise
                attempt += 1
                await self._after_throttle(operation, attempt, deadline)
                continue
            await self._recovered(operation)
            return result

    async def _recovered(self, operation: str) -> None:
        """After a success, give back some of the rate a throttle took. Bookkeeping only: the
        call has happened, so a store failure here must not turn it into a failed call (a
        submit that HealthImaging accepted would be reported as not applied)."""
        if self._store is None or self._last[operation].factor >= 1.0:
            return
        try:
            self._last[operation] = await self._store.succeeded(
                self._key(operation), self._quotas[operation]
            )
        except ProxyError as exc:
            log.warning("budget_bookkeeping_failed", operation=operation, error=type(exc).__name__)

    async def _send(self, operation: str, request: Callable[[], Awaitable[T]]) -> T:
        quota = self._quotas[operation]
        if self._store is not None and quota.burst <= 1.0:
            await self._store.sent(self._key(operation), quota)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await request()
            outcome = "ok"
            return result
        except ResourceExhausted as exc:
            outcome = "throttled" if exc.reason == THROTTLED else "error"
            raise
        finally:
            self._metrics.backend_seconds.labels(operation).observe(time.perf_counter() - started)
            self._metrics.backend_calls.labels(operation, outcome).inc()

    async def _after_throttle(self, operation: str, attempt: int, deadline: float | None) -> None:
        """Back off (the whole bucket pauses and slows down), then wait for a new slot."""
        self._metrics.throttles.labels(operation).inc()
        pause = backoff(attempt, self._settings)
        log.warning("backend_throttled", operation=operation, attempt=attempt, pause=pause)
        if deadline is not None and time.time() + pause > deadline:
            raise DeadlineExceeded(
                f"HealthImaging kept throttling {operation}; the caller's deadline would pass"
            )
        if self._store is not None:
            self._last[operation] = await self._store.throttled(
                self._key(operation), self._quotas[operation], pause
            )
        # Jitter spreads the retries of callers throttled together across the pause.
        await asyncio.sleep(pause * random.uniform(0.5, 1.0))
        await self.acquire(operation)
