"""Quota budgets shared by replicas: the bucket arithmetic of `buckets.py` as one Redis script.

Imported only when a Redis URL is configured (a lone proxy keeps its buckets in process).
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from service.admission.buckets import Quota, Slot
from service.core.config import BudgetSettings
from service.journal.redis_client import translated

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
