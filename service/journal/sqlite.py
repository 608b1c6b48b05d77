"""SQLite journal: one process's operations and idempotency keys, durable before acknowledged.

SQLite in a data directory serves one process: one writer group-commits on the thread that owns
the connection (`sqlite_batches.py`: a write is durable before its caller goes on; concurrent
writes share one commit and one round trip to that thread), a lock file keeps a second process
off the directory, and every unfinished operation found at start is this process's to resume.
Redis (`redis.py`) serves several replicas.

A record keeps its update's document (patient data) only until HealthImaging has acknowledged
the submit (`codec.at_rest`); records are sealed with AES-256-GCM when keys are configured.
SQLite overwrites deleted content (`secure_delete`) and truncates its write-ahead log once a
document is dropped, so no copy of it lingers in the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from service.core.config import JournalSettings
from service.core.errors import ProxyError
from service.core.model import CANCELLABLE, ImageSetKey, OperationRecord
from service.journal.codec import (
    RESUBMITTABLE,
    RecordEncoder,
    at_rest,
    decode,
    decode_readable,
    is_stale,
    key_digest,
)
from service.journal.sealing import Sealer
from service.journal.sqlite_batches import Writer

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

Row = tuple[str, str]
"""(operation id, stored body): decoded on the event loop, where records are sealed too."""


class SqliteJournal:
    """One process's journal; its writer runs every statement, in batches, on one thread.

    Jobs are plain functions run on that thread: they touch the connection, and `_holding` once
    their batch has committed (`Writer.on_commit`), nothing else (records are encoded and decoded
    on the event loop). A record whose write failed, or that lost its idempotency race, leaves
    the encoder's cache at once (`RecordEncoder.forget`): that entry may hold its document."""

    shared = False

    def __init__(self, writer: Writer, settings: JournalSettings, sealer: Sealer) -> None:
        self._writer = writer
        self._settings = settings
        self._sealer = sealer
        self._encoder = RecordEncoder(sealer)
        self._in_flight: dict[ImageSetKey, str] = {}
        self._taken_over = False
        self._holding: set[str] = set()
        """Operations whose committed record may still hold a document (database thread only)."""
        self._transitions = asyncio.Lock()
        """One transition (read, compare, save) at a time: this process is the only writer."""

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
            async with Writer.open(path, _SCHEMA) as writer:
                journal = cls(writer, settings, sealer)
                purge = asyncio.create_task(journal._purge_forever(), name="journal-purge")
                try:
                    yield journal
                finally:
                    purge.cancel()
                    await asyncio.gather(purge, return_exceptions=True)

    async def create(self, record: OperationRecord) -> OperationRecord:
        key = record.request.idempotency_key
        now = time.time()
        body = self._encoder.encode(record)

        def job(db: sqlite3.Connection) -> Row | None:
            if key:
                earlier = _select_key(db, record.principal, key, now)
                if earlier is not None:
                    return earlier
                db.execute(
                    "INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?)",
                    (
                        record.principal,
                        key_digest(key),
                        record.id,
                        now + self._settings.idempotency_ttl_seconds,
                    ),
                )
            db.execute("INSERT INTO operations VALUES (?, ?, ?, ?)", (record.id, 0, now, body))
            self._note_document(record)
            return None

        with self._encoder.forgotten_on_failure(record.id):
            earlier = await self._writer.run(job, "create")
        if earlier is None:
            return record
        self._encoder.forget(record.id)  # never stored: the earlier record stands for it
        return self._decoded(earlier)

    async def save(self, record: OperationRecord) -> bool:
        values = (int(record.finished), time.time(), self._encoder.encode(record), record.id)

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE operations SET finished = ?, updated_at = ?, body = ? WHERE id = ?", values
            )
            self._note_document(record)

        with self._encoder.forgotten_on_failure(record.id):  # one statement, on the hot path
            await self._writer.run(job, "save", savepoint=False)
        return True

    def _note_document(self, record: OperationRecord) -> None:
        """In a job: once it commits, track which stored records hold a document; dropping one
        schedules a scrub (a batch rolled back changes nothing, so a later save still scrubs)."""
        operation_id = record.id
        if record.state in RESUBMITTABLE:
            self._writer.on_commit(lambda: self._holding.add(operation_id))
        else:
            self._writer.on_commit(lambda: self._dropped(operation_id))

    def _dropped(self, operation_id: str) -> None:
        """On commit: the stored record no longer holds its document; its old copies go."""
        if operation_id in self._holding:
            self._holding.discard(operation_id)
            self._writer.scrub_after_commit()

    async def restore(self, record: OperationRecord) -> OperationRecord:
        """One process, one file: nothing to lose that a save would not write back."""
        await self.save(record)
        return record

    async def get(self, operation_id: str) -> OperationRecord | None:
        row = await self._writer.run(lambda db: _select_op(db, operation_id), "get")
        return self._decoded(row) if row else None

    async def by_key(self, principal: str, key: str) -> OperationRecord | None:
        now = time.time()
        row = await self._writer.run(lambda db: _select_key(db, principal, key, now), "by_key")
        return self._decoded(row) if row else None

    async def forget_key(self, principal: str, key: str, operation_id: str) -> None:
        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM idempotency_keys WHERE principal = ? AND key IN (?, ?) "
                "AND operation_id = ?",
                (principal, key_digest(key), key, operation_id),
            )

        await self._writer.run(job, "forget_key")

    async def take_over(self) -> list[OperationRecord]:
        """Everything unfinished, once: the lock file proves the previous process is gone."""
        if self._taken_over:
            return []
        self._taken_over = True

        def job(db: sqlite3.Connection) -> list[Row]:
            rows = db.execute("SELECT id, body FROM operations WHERE finished = 0").fetchall()
            # Any of them may hold a document: the first save that drops it scrubs the log.
            self._writer.on_commit(lambda: self._holding.update(taken for taken, _ in rows))
            return [(operation_id, body) for operation_id, body in rows]

        return decode_readable(await self._writer.run(job, "take_over"), self._sealer)

    async def records(self) -> list[OperationRecord]:
        def job(db: sqlite3.Connection) -> list[Row]:
            return [(op, body) for op, body in db.execute("SELECT id, body FROM operations")]

        return decode_readable(await self._writer.run(job, "records"), self._sealer)

    async def cancel_queued(self, cancelled: OperationRecord) -> str:
        """One process runs every operation of this journal: the runner cancels its own, so
        this serves only a record nobody runs (read, then saved, on the one event loop)."""
        async with self._transitions:
            record = await self.get(cancelled.id)
            if record is None or record.state not in CANCELLABLE:
                return record.state if record is not None else ""
            await self.save(cancelled)
            return record.state

    async def transition(
        self, record: OperationRecord, expected: OperationRecord
    ) -> OperationRecord | None:
        async with self._transitions:
            current = await self.get(record.id)
            if current is None or (current.state, current.seq) != (expected.state, expected.seq):
                return current
            await self.save(record)
            return at_rest(record)

    async def adopt(self, operation_id: str) -> OperationRecord | None:
        record = await self.get(operation_id)
        return record if record is not None and record.state == "unwatched" else None

    async def _purge_forever(self) -> None:
        """Forget finished operations past their retention, and expired keys (hourly)."""
        while True:
            try:
                await self._purge()
            except ProxyError as error:  # the next hour tries again; the journal goes on
                log.warning("journal_purge_failed", error=error.message)
            await asyncio.sleep(3600)

    async def _purge(self) -> None:
        now = time.time()

        def job(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM operations WHERE finished = 1 AND updated_at < ?",
                (now - self._settings.retention_seconds,),
            )
            db.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,))

        await self._writer.run(job, "purge")

    def _decoded(self, row: Row) -> OperationRecord:
        return decode(row[1], row[0], self._sealer)

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


def _select_op(db: sqlite3.Connection, operation_id: str) -> Row | None:
    row = db.execute("SELECT body FROM operations WHERE id = ?", (operation_id,)).fetchone()
    return (operation_id, row[0]) if row else None


def _select_key(db: sqlite3.Connection, principal: str, key: str, now: float) -> Row | None:
    row = db.execute(  # the key itself: rows written before keys were hashed
        "SELECT operation_id FROM idempotency_keys WHERE principal = ? AND key IN (?, ?) "
        "AND expires_at > ?",
        (principal, key_digest(key), key, now),
    ).fetchone()
    return _select_op(db, row[0]) if row else None


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
