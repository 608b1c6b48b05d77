"""The gate before any work on an update: callers without a role go first, then bounded slots.

A request is refused before its document is even parsed when OPA says the caller holds no role on
the data store (answers reused for `role_cache_seconds`, one OPA query per caller and data store
however many requests arrive at once). The requests that pass take a slot while they are
normalised and decided: at most `max_pending_per_principal` per caller and `max_pending` in all;
beyond that the request is refused at once with RESOURCE_EXHAUSTED + RetryInfo, never queued,
so one caller's flood cannot hold the CPU or OPA that every other caller needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from service import audit
from service.config import LimitSettings
from service.errors import PermissionDenied, ResourceExhausted
from service.metrics import Metrics
from service.model import Caller, Decision, is_resource_id
from service.policy import RoleAnswer

NO_ROLE = "caller holds no role on this datastore"
"""The same reason the default policy gives, so a caller sees one wording either way."""
CACHE_CAPACITY = 10_000
"""Role answers kept at most (oldest dropped first): principals are authenticated, so few."""

RoleLookup = Callable[[Caller, str], Awaitable[RoleAnswer]]
_Key = tuple[str, tuple[str, ...], str]


class RoleCache:
    """OPA's role answers per (principal, token roles, data store), reused for `seconds`.

    Concurrent lookups of one key share one query; a failed query is not remembered.
    """

    def __init__(
        self,
        lookup: RoleLookup,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = CACHE_CAPACITY,
    ) -> None:
        self._lookup = lookup
        self._seconds = seconds
        self._clock = clock
        self._capacity = capacity
        self._entries: dict[_Key, tuple[float, asyncio.Future[RoleAnswer]]] = {}

    async def answer(self, caller: Caller, datastore_id: str) -> RoleAnswer:
        key = (caller.principal, caller.roles, datastore_id)
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            entry = self._query(key, caller, datastore_id)
        # shield: one waiter leaving (its call cancelled) must not cancel the others' answer
        return await asyncio.shield(entry[1])

    def _query(
        self, key: _Key, caller: Caller, datastore_id: str
    ) -> tuple[float, asyncio.Future[RoleAnswer]]:
        future = asyncio.ensure_future(self._lookup(caller, datastore_id))
        entry = (self._clock() + self._seconds, future)
        future.add_done_callback(lambda done: self._forget_failure(key, entry, done))
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > self._capacity:
            del self._entries[next(iter(self._entries))]
        return entry

    def _forget_failure(
        self,
        key: _Key,
        entry: tuple[float, asyncio.Future[RoleAnswer]],
        done: asyncio.Future[RoleAnswer],
    ) -> None:
        if (done.cancelled() or done.exception() is not None) and self._entries.get(key) is entry:
            del self._entries[key]


class Pending:
    """Requests being normalised and decided, per principal and in all. Pure: no clock, no I/O."""

    def __init__(self, per_principal: int, total: int, retry_after_seconds: float) -> None:
        self._per_principal = per_principal
        self._total = total
        self._retry_after = retry_after_seconds
        self._counts: dict[str, int] = {}
        self.in_flight = 0

    def count(self, principal: str) -> int:
        return self._counts.get(principal, 0)

    def acquire(self, principal: str) -> None:
        """Take one slot; ResourceExhausted at once when none is free (`release` gives it back)."""
        if self.count(principal) >= self._per_principal:
            raise ResourceExhausted(
                f"this caller already has {self._per_principal} requests being checked; "
                "retry after the delay",
                self._retry_after,
                reason="PRINCIPAL_BUSY",
            )
        if self.in_flight >= self._total:
            raise ResourceExhausted(
                "the proxy is checking as many requests as it allows; retry after the delay",
                self._retry_after,
                reason="PROXY_BUSY",
            )
        self._counts[principal] = self.count(principal) + 1
        self.in_flight += 1

    def release(self, principal: str) -> None:
        self.in_flight -= 1
        self._counts[principal] -= 1
        if not self._counts[principal]:
            del self._counts[principal]


class Gate:
    """What every update and evaluation passes before its document is read."""

    def __init__(self, lookup: RoleLookup, limits: LimitSettings, metrics: Metrics) -> None:
        self._roles = RoleCache(lookup, limits.role_cache_seconds)
        self._pending = Pending(
            limits.max_pending_per_principal, limits.max_pending, limits.retry_after_seconds
        )
        self._metrics = metrics
        self._entered: dict[object, float] = {}
        """When each request holding a slot entered (insertion order: the oldest first)."""
        metrics.oldest_waiting.labels("deciding").set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        oldest = next(iter(self._entered.values()), None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    @asynccontextmanager
    async def entry(
        self, caller: Caller, datastore_id: str, image_set_id: str, rpc: str = ""
    ) -> AsyncIterator[None]:
        """Refuse a caller without a role (audited as `rpc`'s), then hold a pending slot."""
        await self._require_a_role(caller, datastore_id, image_set_id, rpc)
        try:
            self._pending.acquire(caller.principal)
        except ResourceExhausted as refused:
            self._metrics.gate_refusals.labels(refused.reason.lower()).inc()
            raise
        self._metrics.pending.set(self._pending.in_flight)
        token = object()
        self._entered[token] = time.monotonic()
        try:
            yield
        finally:
            del self._entered[token]
            self._pending.release(caller.principal)
            self._metrics.pending.set(self._pending.in_flight)

    async def _require_a_role(
        self, caller: Caller, datastore_id: str, image_set_id: str, rpc: str
    ) -> None:
        if not is_resource_id(datastore_id):
            return
        answer = await self._roles.answer(caller, datastore_id)
        if answer.roles is None or answer.roles:  # undefined: the full decision judges
            return
        self._metrics.gate_refusals.labels("no_role").inc()
        self._metrics.decisions.labels("denied", "no_role").inc()
        refusal = Decision(False, (NO_ROLE,), answer.decision_id, answer.decision_id_source)
        audit.no_role(caller, datastore_id, image_set_id, refusal, rpc)
        message = f"policy denied this update: {NO_ROLE}"
        raise PermissionDenied(message, answer.decision_id, [NO_ROLE])
