"""Token buckets: GCRA arithmetic (pure) and the in-process bucket store.

A bucket is GCRA state (one "theoretical arrival time"): reserving a call answers how long to
wait. `budget_redis.py` runs the same arithmetic as one atomic Lua script for replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from service.core.config import BudgetSettings


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


# --- the arithmetic (pure; budget_redis.py's Lua script mirrors it line by line) ---------------


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
