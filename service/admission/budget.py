"""Quota budgets: token buckets per AWS account + region + operation, in-process or in Redis.

A bucket is GCRA state (one "theoretical arrival time"): reserving a call answers how long to wait,
so callers queue by sleeping and never by being refused. The arithmetic is in `buckets.py` and, for
replicas, one atomic Lua script in Redis (`budget_redis.py`, on Redis's clock), so N replicas share
one bucket instead of guessing their share. aiolimiter is not used: its rate is fixed at creation,
while ours shrinks and grows (AIMD after throttles), the admission queue must ask when the next
slot comes (estimated starts), and the shared bucket must be one Redis script; one small algorithm
serves all three.

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
from typing import TypeVar

import structlog

from service.admission.buckets import BucketStore, LocalStore, Quota, Slot, backoff
from service.core.config import BackendSettings, BudgetSettings
from service.core.errors import DeadlineExceeded, ProxyError, ResourceExhausted
from service.observability.metrics import Metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")

UPDATE = "UpdateImageSetMetadata"
GET_IMAGE_SET = "GetImageSet"
GET_IMAGE_SET_METADATA = "GetImageSetMetadata"
THROTTLED = "BACKEND_THROTTLED"


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
            # Imported here: redis-py costs start-up time and memory a lone proxy never needs.
            from service.admission.budget_redis import RedisStore
            from service.journal.redis_client import blocking_redis

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

    @property
    def enabled(self) -> bool:
        """False without budgets: no quota is shared, calls go at once."""
        return self._store is not None

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
