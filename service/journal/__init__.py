"""Journal: every operation and idempotency key, recorded durably before it is acknowledged.

`open_journal` picks the room from the URL: SQLite (`sqlite.py`, the default) for one process,
Redis (`redis.py`) for replicas. Both store records as `codec.py` makes them, sealed with
AES-256-GCM by `sealing.py` when keys are configured. The codec sits below both journals (and
this module above them), so nothing here imports in a circle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from service.core.config import JournalSettings
from service.core.errors import ProxyError
from service.core.model import ImageSetKey, OperationRecord
from service.journal.codec import (
    RESUBMITTABLE,
    at_rest,
    fingerprint,
    followed,
    is_stale,
    key_digest,
)
from service.journal.sealing import Sealer, UnreadableRecord
from service.journal.sqlite import SqliteJournal

NUDGES = "nudges"
"""The pub/sub channel on which a replica that changed another's operation (an approval, a
rejection) tells its owner to read the record again."""
CANCELS = "cancels"
"""The pub/sub channel (in the operations' namespace: ids are UUIDs) on which a replica that
cancelled another's queued operation tells its owner, which lets go of it at once."""

__all__ = [
    "CANCELS",
    "NUDGES",
    "RESUBMITTABLE",
    "Journal",
    "SqliteJournal",
    "UnreadableRecord",
    "at_rest",
    "fingerprint",
    "followed",
    "hear_forever",
    "is_stale",
    "key_digest",
    "open_journal",
]

log = structlog.get_logger(__name__)


class Journal(Protocol):
    """What operations need from a journal (SQLite or Redis).

    A Redis journal raises domain errors only (`service.journal.redis_client.translated`): callers
    catch
    `ProxyError`, never a driver's exception.
    """

    shared: bool
    """True when other replicas use the same journal (events go through pub/sub)."""

    async def create(self, record: OperationRecord) -> OperationRecord:
        """Record a new operation; returns the earlier one if its idempotency key is live."""
        ...

    async def save(self, record: OperationRecord) -> bool:
        """Record progress; False when another replica has taken the operation over."""
        ...

    async def get(self, operation_id: str) -> OperationRecord | None: ...
    async def by_key(self, principal: str, key: str) -> OperationRecord | None: ...

    async def forget_key(self, principal: str, key: str, operation_id: str) -> None:
        """Free a key still naming `operation_id` (its update certainly never happened)."""
        ...

    async def take_over(self) -> list[OperationRecord]:
        """Unfinished operations nobody runs any more, now this process's (oldest first)."""
        ...

    async def adopt(self, operation_id: str) -> OperationRecord | None:
        """An `unwatched` operation, now this process's to watch (None: not unwatched)."""
        ...

    async def records(self) -> list[OperationRecord]:
        """Every operation the journal holds (unfinished, and finished within retention),
        oldest first; one that cannot be opened is left out (and logged)."""
        ...

    async def cancel_queued(self, cancelled: OperationRecord) -> str:
        """Store `cancelled` (state `cancelled`) if the journal still holds its operation as
        `queued`, atomically; returns the state it held ("" when there is no such operation).
        Its owner, if any, loses it: its next save answers False, so it never submits."""
        ...

    async def transition(
        self, record: OperationRecord, expected: OperationRecord
    ) -> OperationRecord | None:
        """Store `record` if the journal still holds `expected` (same state and seq), atomically
        against every other transition, whoever owns the operation; returns what the journal
        holds afterwards (None: no such operation). Approvals, rejections, expiries and reviews
        are transitions."""
        ...

    async def restore(self, record: OperationRecord) -> OperationRecord:
        """Write back a record this process holds, after the journal lost it (Redis emptied)."""
        ...

    async def snapshot(self) -> Mapping[ImageSetKey, str]: ...
    async def mark(self, key: ImageSetKey, operation_id: str) -> bool: ...
    async def release(self, key: ImageSetKey, operation_id: str) -> None: ...
    async def stale(self, operation_id: str) -> bool: ...
    def publish(self, operation_id: str, event: Mapping[str, Any]) -> None: ...
    def subscribe(
        self, operation_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]: ...


async def hear_forever(
    journal: Journal,
    channel: str,
    on_word: Callable[[dict[str, Any]], Awaitable[None]],
    failed: str,
) -> None:
    """Hand each word said on `channel` to `on_word` for as long as the replica runs. A failed
    subscription is logged as `failed` and made again a second later: what was said meanwhile
    is lost, and the owners learn it from the durable record instead."""
    while True:
        try:
            async with journal.subscribe(channel) as heard:
                while True:
                    await on_word(await heard.get())
        except ProxyError as error:
            log.warning(failed, error=error.message)
            await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def open_journal(settings: JournalSettings) -> AsyncIterator[Journal]:
    """The journal `settings.url` names: empty → SQLite, redis/rediss/unix → Redis."""
    sealer = Sealer.from_settings(settings.encryption_keys)  # bad keys stop the start, here
    if not sealer.enabled:
        log.warning("journal_in_clear", hint="set [journal] encryption_keys to seal records")
    scheme = urlsplit(settings.url).scheme
    if scheme in ("redis", "rediss", "unix"):
        # Imported here: redis-py costs start-up time and memory a lone proxy never needs.
        from service.journal.redis import RedisJournal

        async with RedisJournal.open(settings, sealer) as redis_journal:
            yield redis_journal
    elif settings.url:  # the URL itself may hold a password: name its scheme only
        raise ValueError(f"journal: unsupported url scheme {scheme!r} (empty, redis or rediss)")
    else:
        async with SqliteJournal.open(settings, sealer) as sqlite_journal:
            yield sqlite_journal
