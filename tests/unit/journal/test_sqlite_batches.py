"""SQLite journal batches: one round trip to the database thread; nothing durable unless told."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from service.config import JournalSettings
from service.journal import open_journal
from service.journal.sqlite import SqliteJournal
from tests.unit.journal.test_journal import record


def undone_by_sqlite(db: sqlite3.Connection) -> None:
    """A statement after which SQLite has rolled the whole transaction back (disk full, I/O)."""
    db.execute("ROLLBACK")
    raise sqlite3.OperationalError("database or disk is full")


def fails(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO operations VALUES (NULL, 0, 0, NULL)")  # NOT NULL body


async def test_a_batch_sqlite_rolled_back_stops_and_every_caller_hears_so(tmp_path: Path) -> None:
    async with open_journal(JournalSettings(data_dir=str(tmp_path))) as journal:
        assert isinstance(journal, SqliteJournal)
        created = await journal.create(record("op-1"))
        outcomes = await asyncio.gather(  # one batch: queued before the writer wakes
            journal._writer.run(undone_by_sqlite, savepoint=False),  # the writer's rule itself
            journal.save(replace(created, state="submitting", seq=2)),
            journal.create(record("op-2")),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, sqlite3.Error) for outcome in outcomes)
        assert await journal.get("op-1") == created  # told it failed: it did not happen
        assert await journal.get("op-2") is None


async def test_a_failed_save_alone_fails_and_the_batch_commits(tmp_path: Path) -> None:
    async with open_journal(JournalSettings(data_dir=str(tmp_path))) as journal:
        assert isinstance(journal, SqliteJournal)
        created = await journal.create(record("op-1"))
        submitting = replace(created, state="submitting", seq=2)
        outcomes = await asyncio.gather(  # one batch
            journal._writer.run(fails, savepoint=False),  # the writer's rule itself
            journal.save(submitting),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], sqlite3.IntegrityError) and outcomes[1] is True
        assert await journal.get("op-1") == submitting
        with pytest.raises(sqlite3.IntegrityError):
            await journal._writer.run(fails, savepoint=False)


async def test_a_batch_is_one_call_into_the_one_database_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_journal(JournalSettings(data_dir=str(tmp_path))) as journal:
        assert isinstance(journal, SqliteJournal)
        created = [await journal.create(record(f"op-{n}")) for n in range(5)]
        thread = journal._writer._thread
        calls: list[Callable[..., Any]] = []
        submit = thread.submit

        def counted(fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
            calls.append(fn)
            return submit(fn, *args)

        monkeypatch.setattr(thread, "submit", counted)
        saves = [journal.save(replace(made, state="submitting", seq=2)) for made in created]
        where = [journal._writer.run(lambda _db: threading.get_ident()) for _ in range(3)]
        *saved, first, second, third = await asyncio.gather(*saves, *where)
        assert saved == [True] * 5 and len(calls) == 1  # eight jobs, one round trip
        assert first == second == third != threading.get_ident()  # not the event loop's
        with pytest.raises(sqlite3.ProgrammingError):  # and only that thread may use it
            journal._writer._db.execute("SELECT 1")
