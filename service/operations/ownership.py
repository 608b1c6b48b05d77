"""Ownership: a replica keeps its lease on the shared journal, and is seen to lose it.

Every third of a lease the lease is renewed, in one script with the journal's generation marker
(`RedisJournal.renew`). Three outcomes besides "held":

- **lapsed** (the renewal found the lease gone: a stop-the-world pause, a frozen VM), or no
  renewal has succeeded for a whole lease (Redis unreachable): another replica may own our
  operations now. This replica lets go of every one at once (its streams end with the re-attach
  error, nothing more is sent, saved or published) and takes a new identity, so the operations
  are taken over, under a newer fencing epoch, by whichever replica comes first, itself included.
- **lost** (the marker is gone: Redis restarted empty, or failed over to a replica without it):
  the operations held in memory, and those let go while Redis was unreachable, are written back
  (`journal_lost` counts it, logged as an error), so nothing disappears without a word.

A lone replica with SQLite has nothing to lose to anyone: no `Ownership` runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal, Protocol, runtime_checkable

import structlog

from service.core.errors import ProxyError
from service.core.model import OperationRecord
from service.observability.metrics import Metrics
from service.operations.runner import Runner

log = structlog.get_logger(__name__)


@runtime_checkable
class Leased(Protocol):
    """What the Redis journal offers for leases (see service/journal/redis.py)."""

    replica_id: str

    async def renew(self) -> Literal["held", "lapsed", "lost"]: ...
    def rejoin(self) -> None: ...
    async def ping(self) -> None: ...


class Ownership:
    """Keeps this replica's lease; lets go, or writes back, when it must."""

    def __init__(
        self, journal: Leased, runner: Runner, lease_seconds: float, metrics: Metrics
    ) -> None:
        self._journal = journal
        self._runner = runner
        self._lease = lease_seconds
        self._metrics = metrics
        self._renewed_at = time.monotonic()
        self._let_go: dict[str, OperationRecord] = {}
        """Operations let go while Redis was unreachable: written back if it returns empty."""
        self._owed = False
        """A write-back failed half-way: the next renewal tries it again."""

    async def keep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            await self.renew_once()

    async def renew_once(self) -> None:
        try:
            verdict = await self._journal.renew()
        except ProxyError as exc:
            log.warning("journal_lease_failed", error=exc.reason)
            if time.monotonic() - self._renewed_at >= self._lease:
                self._lapse("the lease could not be renewed: Redis unreachable")
            return
        self._renewed_at = time.monotonic()
        if verdict == "lapsed":  # the journal has already taken a new identity
            self._let_go_all("its lease lapsed")
            self._let_go.clear()  # Redis kept them: whoever comes first takes them over
        elif verdict == "lost" or self._owed:
            await self._write_back(counted=verdict == "lost")
        else:
            self._let_go.clear()

    def _lapse(self, why: str) -> None:
        if self._runner.running:
            self._let_go_all(why)
        self._journal.rejoin()  # the old identity's lease runs out; a new one starts clean
        self._renewed_at = time.monotonic()  # one lapse per lease while Redis stays away

    def _let_go_all(self, why: str) -> None:
        records = self._runner.let_go_all(why)
        if records:
            log.warning("operations_let_go", count=len(records), why=why)
        self._let_go.update((record.id, record) for record in records)

    async def _write_back(self, *, counted: bool) -> None:
        held, let_go = self._runner.held(), list(self._let_go.values())
        if counted:
            self._metrics.journal_lost.inc()
            log.error("journal_lost", held=len(held), let_go=len(let_go))
        self._owed = True
        try:
            await self._runner.restore(held, run=False)
            await self._runner.restore(let_go, run=True)
        except ProxyError as exc:  # Redis went away again: the next renewal tries again
            log.warning("journal_write_back_failed", error=exc.reason)
            return
        self._owed = False
        self._let_go.clear()
