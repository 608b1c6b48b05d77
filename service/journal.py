"""Journal: every operation and idempotency key, recorded durably before it is acknowledged.

SQLite (aiosqlite) in a data directory serves one process: one writer task group-commits (a write
is durable before its caller goes on; concurrent writes share one commit), a lock file keeps a
second process off the directory, and every unfinished operation found at start is this
process's to resume. Redis (`journal_redis.py`) serves several replicas.

The journal keeps each update's documents (a restart must be able to resubmit them): it holds
patient data and must be protected like the data store itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiosqlite
import structlog

from service.config import JournalSettings
from service.healthimaging import ImageSetStatus
from service.policy import Decision
from service.updates import UpdateRequest

log = structlog.get_logger(__name__)

T = TypeVar("T")
ImageSetKey = tuple[str, str]
State = Literal["queued", "submitting", "submitted", "unwatched", "finished", "failed"]
"""`unwatched`: submitted, but nobody follows it any more (the watch timed out); the next
WatchUpdate adopts it and watches again."""
FINISHED: frozenset[str] = frozenset({"finished", "failed"})


@dataclass(frozen=True)
class RecordedError:
    """How an operation failed, as the caller was (and will again be) told."""

    code: str  # grpc.StatusCode name
    reason: str
    message: str
    retry_after_seconds: float = 0.0


@dataclass(frozen=True)
class OperationRecord:
    """Everything needed to re-stream an operation, or to resume it after a restart."""

    id: str
    principal: str
    auth_method: str
    roles: tuple[str, ...]
    request: UpdateRequest
    decision: Decision
    fingerprint: str
    created_at: float
    deadline: float | None
    """Epoch seconds by which the submit must have started (the call's deadline)."""
    state: State = "queued"
    seq: int = 0
    """Number of the last event journaled: replayed events and live ones meet here."""
    submitted: ImageSetStatus | None = None
    last_status: ImageSetStatus | None = None
    error: RecordedError | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def fingerprint(request: UpdateRequest) -> str:
    """What makes two requests "the same" for an idempotency key (the key itself aside)."""
    fields = asdict(replace(request, idempotency_key=""))
    for name, value in fields.items():
        if isinstance(value, bytes):
            fields[name] = hashlib.sha256(value).hexdigest()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def encode(record: OperationRecord) -> str:
    document = asdict(record)
    for name in ("updatable_attributes", "removable_attributes"):
        blob = document["request"][name]
        document["request"][name] = base64.b64encode(blob).decode() if blob is not None else None
    return json.dumps(document, separators=(",", ":"))


def decode(text: str) -> OperationRecord:
    document = json.loads(text)
    request = document["request"]
    for name in ("updatable_attributes", "removable_attributes"):
        if request[name] is not None:
            request[name] = base64.b64decode(request[name])
    decision = document["decision"]
    return OperationRecord(
        **{
            **document,
            "roles": tuple(document["roles"]),
            "request": UpdateRequest(**request),
            "decision": Decision(
                decision["allow"], tuple(decision["reasons"]), decision["decision_id"]
            ),
            "submitted": _status(document["submitted"]),
            "last_status": _status(document["last_status"]),
            "error": RecordedError(**document["error"]) if document["error"] else None,
        }
    )


def _status(document: Mapping[str, Any] | None) -> ImageSetStatus | None:
    return ImageSetStatus(**document) if document else None


class Journal(Protocol):
    """What operations need from a journal (SQLite or Redis)."""

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

    async def snapshot(self) -> Mapping[ImageSetKey, str]: ...
    async def mark(self, key: ImageSetKey, operation_id: str) -> bool: ...
    async def release(self, key: ImageSetKey, operation_id: str) -> None: ...
    async def stale(self, operation_id: str) -> bool: ...
    def publish(self, operation_id: str, event: Mapping[str, Any]) -> None: ...
    def subscribe(
        self, operation_id: str
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[dict[str, Any]]]: ...


def is_stale(holder: OperationRecord | None) -> bool:
    """A hold whose operation is over, unwatched or gone no longer guards its image set."""
    return holder is None or holder.finished or holder.state == "unwatched"


@contextlib.asynccontextmanager
async def open_journal(settings: JournalSettings) -> AsyncIterator[Journal]:
    if settings.url.startswith(("redis://", "rediss://", "unix://")):
        from service.journal_redis import RedisJournal

        async with RedisJournal.open(settings) as redis_journal:
            yield redis_journal
    elif settings.url:
        raise ValueError(f"journal: unsupported url {settings.url!r} (empty or redis://…)")
    else:
        async with SqliteJournal.open(settings) as sqlite_journal:
            yield sqlite_journal


# --- SQLite -------------------------------------------------------------------------------------

_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY, finished INTEGER NOT NULL, updated_at REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_by_state ON operations (finished, updated_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal TEXT NOT NULL, key TEXT NOT NULL, operation_id TEXT NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (principal, key)
);
"""

Job = Callable[[aiosqlite.Connection], Awaitable[Any]]


class SqliteJournal:
    """One process's journal; a single writer task runs every statement, in batches."""

    shared = False

    def __init__(self, db: aiosqlite.Connection, settings: JournalSettings) -> None:
        self._db = db
        self._settings = settings
        self._jobs: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._in_flight: dict[ImageSetKey, str] = {}
        self._taken_over = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: JournalSettings) -> AsyncIterator[SqliteJournal]:
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
                journal = cls(db, settings)
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
                earlier = await _select_key(db, record.principal, key, now)
                if earlier is not None:
                    return earlier
                await db.execute(
                    "INSERT OR REPLACE INTO idempotency_keys VALUES (?, ?, ?, ?)",
                    (
                        record.principal,
                        key,
                        record.id,
                        now + self._settings.idempotency_ttl_seconds,
                    ),
                )
            await db.execute(
                "INSERT INTO operations VALUES (?, ?, ?, ?)", (record.id, 0, now, encode(record))
            )
            return record

        result: OperationRecord = await self._run(job)
        return result

    async def save(self, record: OperationRecord) -> bool:
        values = (int(record.finished), time.time(), encode(record), record.id)

        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "UPDATE operations SET finished = ?, updated_at = ?, body = ? WHERE id = ?", values
            )

        await self._run(job)
        return True

    async def get(self, operation_id: str) -> OperationRecord | None:
        result: OperationRecord | None = await self._run(lambda db: _select_op(db, operation_id))
        return result

    async def by_key(self, principal: str, key: str) -> OperationRecord | None:
        now = time.time()
        result: OperationRecord | None = await self._run(
            lambda db: _select_key(db, principal, key, now)
        )
        return result

    async def forget_key(self, principal: str, key: str, operation_id: str) -> None:
        async def job(db: aiosqlite.Connection) -> None:
            await db.execute(
                "DELETE FROM idempotency_keys WHERE principal = ? AND key = ? AND operation_id = ?",
                (principal, key, operation_id),
            )

        await self._run(job)

    async def take_over(self) -> list[OperationRecord]:
        """Everything unfinished, once: the lock file proves the previous process is gone."""
        if self._taken_over:
            return []
        self._taken_over = True

        async def job(db: aiosqlite.Connection) -> list[OperationRecord]:
            cursor = await db.execute("SELECT body FROM operations WHERE finished = 0")
            return [decode(row[0]) for row in await cursor.fetchall()]

        records: list[OperationRecord] = await self._run(job)
        return sorted(records, key=lambda r: r.created_at)

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


async def _select_op(db: aiosqlite.Connection, operation_id: str) -> OperationRecord | None:
    cursor = await db.execute("SELECT body FROM operations WHERE id = ?", (operation_id,))
    row = await cursor.fetchone()
    return decode(row[0]) if row else None


async def _select_key(
    db: aiosqlite.Connection, principal: str, key: str, now: float
) -> OperationRecord | None:
    cursor = await db.execute(
        "SELECT operation_id FROM idempotency_keys WHERE principal = ? AND key = ? "
        "AND expires_at > ?",
        (principal, key, now),
    )
    row = await cursor.fetchone()
    return await _select_op(db, row[0]) if row else None


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
