"""SQLite journal: one process's operations and idempotency keys, durable before acknowledged.

SQLite (aiosqlite) in a data directory serves one process: one writer task group-commits (a write
is durable before its caller goes on; concurrent writes share one commit), a lock file keeps a
second process off the directory, and every unfinished operation found at start is this
process's to resume. Redis (`redis.py`) serves several replicas.

A record keeps its update's document (patient data) only until HealthImaging has acknowledged
the submit (`codec.at_rest`); records are sealed with AES-256-GCM when keys are configured.
SQLite overwrites deleted content (`secure_delete`) and truncates its write-ahead log once a
document is dropped, so no copy of it lingers in the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from service.config import JournalSettings
from service.journal.codec import (
    RESUBMITTABLE,
    decode,
    decode_readable,
    encode,
    is_stale,
    key_digest,
)
from service.journal.sealing import Sealer
from service.model import ImageSetKey, OperationRecord

log = structlog.get_logger(__name__)


_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA secure_delete = ON;
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY, finished INTEGER NOT NULL, updated_at REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_by_state ON operations (finished, updated_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal TEXT NOT NULL, key TEXT NOT NULL, operation_id TEXT NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (principal, key)
);
"""
"""`idempotency_keys.key` holds a SHA-256 of the caller's key (older rows: the key itself)."""

Job = Callable[[aiosqlite.Connection], Awaitable[Any]]


class SqliteJournal:
    """One process's journal; a single writer task runs every statement, in batches."""

    shared = False

    def __init__(self, db: aiosqlite.Connection, settings: JournalSettings, sealer: Sealer) -> None:
        self._db = db
        self._settings = settings
        self._sealer = sealer
        self._jobs: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._in_flight: dict[ImageSetKey, str] = {}
        self._taken_over = False
        self._holding: set[str] = set()
        """Operations whose stored record still holds a document (written by this process)."""
        self._scrub = False
        """A document was dropped: truncate the write-ahead log after this commit."""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: JournalSettings, sealer: Sealer) -> AsyncIterator[SqliteJournal]:
        with contextlib.ExitStack() as locks:
            path = ":memory:"
            if settings.data_dir:
                folder = Path(settings.data_dir)
                locks.enter_context(_exclusive(folder / "journal.lock"))
                path = str(folder / "journal.sqlite3")
            else:
                log.warning("journal_in_memory", hint="set [journal] data_dir to survive restarts")
            async with aiosqlite.connect(path, isolation_level=None) as db:
                await db.executescript(_SCHEMA)
                journal = cls(db, settings, sealer)
                tasks = [
                    asyncio.create_task(journal._write_forever(), name="journal"),
                    asyncio.create_task(journal._purge_forever(), name="journal-purge"),
                ]
                try:
                    yield journal
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: Job) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((job, done))
        return await done

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._jobs.get()]
            while not self._jobs.empty():
                batch.append(self._jobs.get_nowait())
            await self._commit(batch)
            if self._scrub:
                await self._truncate_log()

    async def _truncate_log(self) -> None:
        """Copy the log into the database and empty it: frames holding a dropped document go.
        (secure_delete has already zeroed the document's old cells and pages in the database.)"""
        try:
            cursor = await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = (await cursor.fetchone() or (0,))[0]
        except aiosqlite.Error as exc:
            log.warning("journal_checkpoint_failed", error=str(exc))
            return
        self._scrub = bool(busy)  # busy: a reader held it; the next commit tries again

    async def _commit(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        """Run each job in its own savepoint, commit once, then answer every caller."""
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            for job, done in batch:
                outcomes.append((done, *await self._attempt(job)))
            await self._db.execute("COMMIT")
        except aiosqlite.Error as exc:  # nothing of this batch is durable: every caller hears so
            log.error("journal_commit_failed", error=str(exc))
            with contextlib.suppress(aiosqlite.Error):
                await self._db.execute("ROLLBACK")
            outcomes = [(done, None, exc) for _, done in batch]
        for done, result, error in outcomes:
            if done.done():
                continue
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

    async def _attempt(self, job: Job) -> tuple[Any, BaseException | None]:
        await self._db.execute("SAVEPOINT job")
        try:
            result = await job(self._db)
        except Exception as exc:  # noqa: BLE001 - handed to the one caller; the writer goes on
            await self._db.execute("ROLLBACK TO job")
            await self._db.execute("RELEASE job")
            return None, exc
        await self._db.execute("RELEASE job")
        return result, None

    async def create(self, record: OperationRecord) -> OperationRecord:
        key = record.request.idempotency_key
        now = time.time()

        async def job(db: aiosqlite.Connection) -> OperationRecord:
            if key:
                earlier = await self._select_key(db, record.principal, key, now)
                if earlier is not None:
                    return earlier
                await db.execute(
                    "INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?)",
                    (
                        record.principal,
                        key_digest(key),
                        record.id,
                        now + self._settings.idempotency_ttl_seconds,
                    ),
                )
            await db.execute(
                "INSERT INTO operations VALUES (?, ?, ?, ?)",
                (record.id, 0, now, encode(record, self._sealer)),
            )
            self._note_document(record)
            return record

        result: OperationRecord = await self._run(job)
        return result

    async def save(self, record: OperationRecord) -> bool:
        values = (int(record.finished), time.time(), encode(record, self._sealer), record.id)

        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE operations SET finished = ?, updated_at = ?, body = ? WHERE id = ?", values
            )
            self._note_document(record)

        await self._run(job)
        return True

    def _note_document(self, record: OperationRecord) -> None:
        """Track which stored records hold a document; dropping one schedules a scrub."""
        if record.state in RESUBMITTABLE:
            self._holding.add(record.id)
        elif record.id in self._holding:
            self._holding.discard(record.id)
            self._scrub = True

    async def get(self, operation_id: str) -> OperationRecord | None:
        result: OperationRecord | None = await self._run(
            lambda db: self._select_op(db, operation_id)
        )
        return result

    async def by_key(self, principal: str, key: str) -> OperationRecord | None:
        now = time.time()
        result: OperationRecord | None = await self._run(
            lambda db: self._select_key(db, principal, key, now)
        )
        return result

    async def forget_key(self, principal: str, key: str, operation_id: str) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "DELETE FROM idempotency_keys WHERE principal = ? AND key IN (?, ?) "
                "AND operation_id = ?",
                (principal, key_digest(key), key, operation_id),
            )

        await self._run(job)

    async def take_over(self) -> list[OperationRecord]:
        """Everything unfinished, once: the lock file proves the previous process is gone."""
        if self._taken_over:
            return []
        self._taken_over = True

        async def job(db: aiosqlite.Connection) -> list[tuple[str, str]]:
            cursor = await db.execute("SELECT id, body FROM operations WHERE finished = 0")
            return [(row[0], row[1]) for row in await cursor.fetchall()]

        records = decode_readable(await self._run(job), self._sealer)
        for record in records:
            self._note_document(record)
        return records

    async def adopt(self, operation_id: str) -> OperationRecord | None:
        record = await self.get(operation_id)
        return record if record is not None and record.state == "unwatched" else None

    async def _purge_forever(self) -> None:
        """Forget finished operations past their retention, and expired keys (hourly)."""
        while True:
            await self._purge()
            await asyncio.sleep(3600)

    async def _purge(self) -> None:
        now = time.time()

        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "DELETE FROM operations WHERE finished = 1 AND updated_at < ?",
                (now - self._settings.retention_seconds,),
            )
            await db.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,))

        await self._run(job)

    async def _select_op(
        self, db: aiosqlite.Connection, operation_id: str
    ) -> OperationRecord | None:
        cursor = await db.execute("SELECT body FROM operations WHERE id = ?", (operation_id,))
        row = await cursor.fetchone()
        return decode(row[0], operation_id, self._sealer) if row else None

    async def _select_key(
        self, db: aiosqlite.Connection, principal: str, key: str, now: float
    ) -> OperationRecord | None:
        cursor = await db.execute(  # the key itself: rows written before keys were hashed
            "SELECT operation_id FROM idempotency_keys WHERE principal = ? AND key IN (?, ?) "
            "AND expires_at > ?",
            (principal, key_digest(key), key, now),
        )
        row = await cursor.fetchone()
        return await self._select_op(db, row[0]) if row else None

    async def snapshot(self) -> Mapping[ImageSetKey, str]:
        return self._in_flight

    async def mark(self, key: ImageSetKey, operation_id: str) -> bool:
        return self._in_flight.setdefault(key, operation_id) == operation_id

    async def release(self, key: ImageSetKey, operation_id: str) -> None:
        if self._in_flight.get(key) == operation_id:
            del self._in_flight[key]

    async def stale(self, operation_id: str) -> bool:
        return is_stale(await self.get(operation_id))

    def publish(self, operation_id: str, event: Mapping[str, Any]) -> None:
        """Nobody else streams this process's operations."""

    def subscribe(
        self, operation_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]:
        raise RuntimeError("a SQLite journal has no other replicas to hear from")


@contextlib.contextmanager
def _exclusive(path: Path) -> Any:
    """Hold an exclusive lock on `path` (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"journal directory {path.parent} is in use by another imaging-proxy process"
            ) from None
        yield
