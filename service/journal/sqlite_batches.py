"""SQLite journal's writer: one thread owns the connection; a batch is one round trip to it.

Every statement runs on one dedicated thread (sqlite3's `check_same_thread` enforces it). Jobs
queued while the database thread runs the previous batch form the next batch, and a batch is ONE
call into that thread: BEGIN IMMEDIATE, each job, COMMIT (or ROLLBACK), then each job's outcome
back. The event loop pays one wake-up per batch, not one per statement, and nobody hears of a
write before its COMMIT has returned (`synchronous = FULL`: durable). SQLite's errors reach
callers as `Unavailable` naming the operation (the writer's answer is the journal's edge); once
the writer has stopped, every waiting and later caller is told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import structlog

from service.core.errors import Unavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
"""A plain function of the connection, run on the database thread inside the batch."""
Outcome = tuple[Any, BaseException | None]


class _Pending(NamedTuple):
    """A job waiting for its batch, and its caller's answer."""

    job: Job
    done: asyncio.Future[Any]
    savepoint: bool
    """Whether it runs in a savepoint (see `Writer.run`)."""
    what: str
    """The journal operation it serves, named in its error."""


class Writer:
    """Runs jobs on the thread that owns the connection, group-committing those queued together."""

    def __init__(self, db: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._db = db
        self._thread = thread
        self._jobs: asyncio.Queue[_Pending] = asyncio.Queue()
        self._closed = False
        self._scrub = False
        """A document was dropped: truncate the write-ahead log after this commit."""
        self._on_commit: list[Callable[[], None]] = []
        """What this batch's jobs asked to happen once it commits (database thread only)."""

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
                writer._closed = True
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                # Queued behind any batch still on the thread: it closes once that one is done.
                await loop.run_in_executor(thread, db.close)

    async def run(
        self, job: Callable[[sqlite3.Connection], T], what: str, *, savepoint: bool = True
    ) -> T:
        """Run `job` in the next batch; its error is this caller's alone (SQLite's as
        `Unavailable` naming `what`). `savepoint=False` is for a job of one statement: SQLite
        undoes a failed statement alone (or the whole batch, which then fails for every caller)."""
        if self._closed:
            raise Unavailable(f"journal {what}: the journal is closed")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait(_Pending(job, done, savepoint, what))
        return await done

    def on_commit(self, action: Callable[[], None]) -> None:
        """Called by a job: run `action` on the database thread once its batch has committed
        (never if the job or its batch fails)."""
        self._on_commit.append(action)

    def scrub_after_commit(self) -> None:
        """Truncate the write-ahead log after this batch (called on commit: see `on_commit`)."""
        self._scrub = True

    async def _write_forever(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                batch = [await self._jobs.get()]
                while not self._jobs.empty():
                    batch.append(self._jobs.get_nowait())
                _answer(batch, await self._round_trip(batch))
                batch = []
                if self._scrub:  # callers need not wait for the checkpoint: the next batch
                    self._scrub = False  # queues behind it (it sets the flag again if busy)
                    self._thread.submit(self._truncate_log).add_done_callback(_checkpoint_done)
        except Exception as exc:  # every caller hears it below; nothing writes any more
            log.error("journal_writer_stopped", error=type(exc).__name__)
            raise
        finally:
            self._closed = True
            self._fail_all(batch)

    async def _round_trip(self, batch: Sequence[_Pending]) -> list[Outcome]:
        """The batch on the database thread. If closing cancels the wait, the thread commits it
        all the same: its callers still hear what happened, not a guess."""
        jobs = [(pending.job, pending.savepoint) for pending in batch]
        answer = asyncio.get_running_loop().run_in_executor(self._thread, self._commit, jobs)
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            _answer(batch, await answer)
            raise

    def _fail_all(self, batch: Sequence[_Pending]) -> None:
        """The writer has stopped: the unanswered callers of its last batch, and everyone queued."""
        waiting = list(batch)
        while not self._jobs.empty():
            waiting.append(self._jobs.get_nowait())
        for pending in waiting:
            if not pending.done.done():
                pending.done.set_exception(
                    Unavailable(f"journal {pending.what}: the journal writer has stopped")
                )

    def _commit(self, batch: Sequence[tuple[Job, bool]]) -> list[Outcome]:
        """On the database thread: run each job (in its own savepoint if asked), commit once."""
        self._on_commit.clear()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            outcomes = [self._attempt(job, savepoint) for job, savepoint in batch]
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:  # nothing of this batch is durable: every caller hears so
            log.error("journal_commit_failed", error=str(exc))
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            return [(None, exc)] * len(batch)
        for action in self._on_commit:
            action()
        return outcomes

    def _attempt(self, job: Job, savepoint: bool) -> Outcome:
        if savepoint:
            self._db.execute("SAVEPOINT job")
        promised = len(self._on_commit)
        try:
            result = job(self._db)
        except Exception as exc:  # handed to the one caller; the batch goes on
            del self._on_commit[promised:]  # what it asked for did not happen
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
            busy = 1
        if busy:  # a reader held it, or it failed: the next commit tries again
            self._scrub = True


def _answer(batch: Sequence[_Pending], outcomes: Sequence[Outcome]) -> None:
    """Each caller its own answer: SQLite's error as its own `Unavailable` (a batch's one
    error is shared by its jobs; an exception instance must not be raised in two tasks)."""
    for pending, (result, error) in zip(batch, outcomes, strict=True):
        if pending.done.done():  # its caller gave up waiting
            continue
        if isinstance(error, sqlite3.Error):
            message = f"journal {pending.what}: SQLite failed ({type(error).__name__})"
            unavailable = Unavailable(message)
            unavailable.__cause__ = error
            pending.done.set_exception(unavailable)
        elif error is not None:
            pending.done.set_exception(error)
        else:
            pending.done.set_result(result)


def _checkpoint_done(done: Future[None]) -> None:
    """A checkpoint nobody waits for: its failure is logged, not lost."""
    if not done.cancelled() and (error := done.exception()) is not None:
        log.error("journal_checkpoint_failed", error=type(error).__name__)


def _connect(path: str, script: str) -> sqlite3.Connection:
    """On the database thread, which alone may use the connection from now on."""
    db = sqlite3.connect(path, isolation_level=None)  # transactions are the writer's: explicit
    try:
        db.executescript(script)
    except BaseException:
        db.close()
        raise
    return db
