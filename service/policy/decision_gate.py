"""The gate before any work on an update: callers without a role go first, then a fair turn.

A request is refused before its document is even parsed when OPA says the caller holds no role on
the data store (answers reused for `role_cache_seconds`, one OPA query per caller and data store
however many requests arrive at once). The requests that pass are normalised and decided in the
`decisions` stage (service/admission/stages.py): `max_deciding` at once, the others waiting their
caller's
turn, so one caller's flood slows that caller, not the others, and is refused only when its
queues are full or its deadline passes while it waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from service.admission.stages import FairStage
from service.core.config import LimitSettings
from service.core.errors import PermissionDenied
from service.core.model import Caller, Decision, is_resource_id
from service.observability import audit
from service.observability.metrics import Metrics
from service.policy.decisions import RoleAnswer

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


class Gate:
    """What every update and evaluation passes before its document is read."""

    def __init__(
        self, lookup: RoleLookup, limits: LimitSettings, decisions: FairStage, metrics: Metrics
    ) -> None:
        self._roles = RoleCache(lookup, limits.role_cache_seconds)
        self._decisions = decisions
        self._metrics = metrics
        self._entered: dict[object, float] = {}
        """When each request waiting or being decided entered (insertion order: oldest first)."""
        metrics.oldest_waiting.labels("deciding").set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        oldest = next(iter(self._entered.values()), None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    @asynccontextmanager
    async def entry(
        self,
        caller: Caller,
        datastore_id: str,
        image_set_id: str,
        rpc: str = "",
        deadline: float | None = None,
    ) -> AsyncIterator[None]:
        """Refuse a caller without a role (audited as `rpc`'s), then hold a turn of the decisions
        stage for the block (`deadline`: the call's, epoch seconds)."""
        await self._require_a_role(caller, datastore_id, image_set_id, rpc)
        token = object()
        self._entered[token] = time.monotonic()
        try:
            async with self._decisions.turn(caller.principal, deadline):
                yield
        finally:
            del self._entered[token]

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
