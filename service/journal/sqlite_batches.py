"""SQLite journal's writer: one thread owns the connection; a batch is one round trip to it.

Every statement runs on one dedicated thread (sqlite3's `check_same_thread` enforces it). Jobs
queued while the event loop is busy form a batch, and the batch is ONE call into that thread:
BEGIN IMMEDIATE, each job, COMMIT (or ROLLBACK), then each job's outcome back. The event loop
pays one wake-up per batch, not one per statement, and nobody hears of a write before its COMMIT
has returned (`synchronous = FULL`: durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
"""A plain function of the connection, run on the database thread inside the batch."""
Queued = tuple[Job, asyncio.Future[Any], bool]
"""A job, its caller's answer, and whether it runs in a savepoint (see `Writer.run`)."""
Outcome = tuple[Any, BaseException | None]


class Writer:
    """Runs jobs on the thread that owns the connection, group-committing those queued together."""

    def __init__(self, db: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._db = db
        self._thread = thread
        self._jobs: asyncio.Queue[Queued] = asyncio.Queue()
        self._scrub = False
        """A document was dropped: truncate the write-ahead log after this commit."""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: str, script: str) -> AsyncIterator[Writer]:
        """Connect on a new thread, run `script` (schema, pragmas), and write until closed."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal") as thread:
            db = await loop.run_in_executor(thread, _connect, path, script)
            writer = cls(db, thread)
            task = asyncio.create_task(writer._write_forever(), name="journal")
            try:
                yield writer
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                # Queued behind any batch still on the thread: it closes once that one is done.
                await loop.run_in_executor(thread, db.close)

    async def run(self, job: Callable[[sqlite3.Connection], T], *, savepoint: bool = True) -> T:
        """Run `job` in the next batch; its error is this caller's alone. `savepoint=False` is
        for a job of one statement: SQLite undoes a failed statement alone (or the whole batch,
        which then fails for every caller)."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((job, done, savepoint))
        return await done

    def scrub_after_commit(self) -> None:
        """Truncate the write-ahead log after this batch commits (called by a job)."""
        self._scrub = True

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._jobs.get()]
            while not self._jobs.empty():
                batch.append(self._jobs.get_nowait())
            jobs = [(job, savepoint) for job, _, savepoint in batch]
            outcomes = await loop.run_in_executor(self._thread, self._commit, jobs)
            for (_, done, _), (result, error) in zip(batch, outcomes, strict=True):
                if done.done():  # its caller gave up waiting
                    continue
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(result)
            if self._scrub:  # callers need not wait for the checkpoint, nor hear of it: the
                self._thread.submit(self._truncate_log)  # next batch queues behind it

    def _commit(self, batch: Sequence[tuple[Job, bool]]) -> list[Outcome]:
        """On the database thread: run each job (in its own savepoint if asked), commit once."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            outcomes = [self._attempt(job, savepoint) for job, savepoint in batch]
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:  # nothing of this batch is durable: every caller hears so
            log.error("journal_commit_failed", error=str(exc))
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            return [(None, exc)] * len(batch)
        return outcomes

    def _attempt(self, job: Job, savepoint: bool) -> Outcome:
        if savepoint:
            self._db.execute("SAVEPOINT job")
        try:
            result = job(self._db)
        except Exception as exc:  # handed to the one caller; the batch goes on
            if savepoint:
                self._db.execute("ROLLBACK TO job")
                self._db.execute("RELEASE job")
            elif not self._db.in_transaction:  # SQLite undid the whole batch: stop it here
                raise sqlite3.OperationalError("the journal batch was rolled back") from exc
            return None, exc
        if savepoint:
            self._db.execute("RELEASE job")
        return result, None

    def _truncate_log(self) -> None:
        """Copy the log into the database and empty it: frames holding a dropped document go.
        (secure_delete has already zeroed the document's old cells and pages in the database.)"""
        try:
            busy = (self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() or (0,))[0]
        except sqlite3.Error as exc:
            log.warning("journal_checkpoint_failed", error=str(exc))
            return
        self._scrub = bool(busy)  # busy: a reader held it; the next commit tries again


def _connect(path: str, script: str) -> sqlite3.Connection:
    """On the database thread, which alone may use the connection from now on."""
    db = sqlite3.connect(path, isolation_level=None)  # transactions are the writer's: explicit
    try:
        db.executescript(script)
    except BaseException:
        db.close()
        raise
    return db
