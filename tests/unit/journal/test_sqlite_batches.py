"""SQLite journal batches: one round trip to the database thread; nothing durable unless told;
SQLite's errors reach callers as Unavailable, each its own."""

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

from service.core.config import JournalSettings
from service.core.errors import Unavailable
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
            journal._writer.run(undone_by_sqlite, "test", savepoint=False),  # the writer's rule
            journal.save(replace(created, state="submitting", seq=2)),
            journal.create(record("op-2")),
            return_exceptions=True,
        )
        assert [str(outcome) for outcome in outcomes] == [
            f"journal {what}: SQLite failed (OperationalError)"
            for what in ("test", "save", "create")
        ]
        errors = [outcome for outcome in outcomes if isinstance(outcome, Unavailable)]
        assert len({id(error) for error in errors}) == 3  # each caller raises its own
        assert all(isinstance(error.__cause__, sqlite3.OperationalError) for error in errors)
        assert await journal.get("op-1") == created  # told it failed: it did not happen
        assert await journal.get("op-2") is None


async def test_a_failed_save_alone_fails_and_the_batch_commits(tmp_path: Path) -> None:
    async with open_journal(JournalSettings(data_dir=str(tmp_path))) as journal:
        assert isinstance(journal, SqliteJournal)
        created = await journal.create(record("op-1"))
        submitting = replace(created, state="submitting", seq=2)
        outcomes = await asyncio.gather(  # one batch
            journal._writer.run(fails, "test", savepoint=False),  # the writer's rule itself
            journal.save(submitting),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], Unavailable) and outcomes[1] is True
        assert isinstance(outcomes[0].__cause__, sqlite3.IntegrityError)
        assert await journal.get("op-1") == submitting
        with pytest.raises(Unavailable, match=r"^journal test: SQLite failed \(IntegrityError\)$"):
            await journal._writer.run(fails, "test", savepoint=False)


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
        where = [journal._writer.run(lambda _db: threading.get_ident(), "test") for _ in range(3)]
        *saved, first, second, third = await asyncio.gather(*saves, *where)
        assert saved == [True] * 5 and len(calls) == 1  # eight jobs, one round trip
        assert first == second == third != threading.get_ident()  # not the event loop's
        with pytest.raises(sqlite3.ProgrammingError):  # and only that thread may use it
            journal._writer._db.execute("SELECT 1")


async def test_a_rolled_back_batch_changes_nothing_the_journal_tracks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_journal(JournalSettings(data_dir=str(tmp_path))) as journal:
        assert isinstance(journal, SqliteJournal)
        created = await journal.create(record("op-1"))
        submitted = replace(created, state="submitted", seq=2)
        await asyncio.gather(  # one batch, rolled back by SQLite after both jobs ran
            journal.save(submitted),
            journal.create(record("op-2")),
            journal._writer.run(undone_by_sqlite, "test", savepoint=False),
            return_exceptions=True,
        )
        assert journal._holding == {"op-1"}  # its stored record still holds the document
        scrubs: list[None] = []
        truncate = journal._writer._truncate_log
        monkeypatch.setattr(journal._writer, "_truncate_log", lambda: scrubs.append(truncate()))
        assert await journal.save(submitted)
        await journal.get("op-1")  # queued behind the checkpoint
        assert scrubs == [None] and journal._holding == set()


async def test_a_record_never_stored_leaves_the_encoder_s_cache(tmp_path: Path) -> None:
    async with open_journal(JournalSettings(data_dir=str(tmp_path))) as journal:
        assert isinstance(journal, SqliteJournal)
        first = await journal.create(record("op-1", key="k"))
        assert (await journal.create(record("op-2", key="k"))).id == "op-1"  # lost the race
        outcomes = await asyncio.gather(  # one batch, rolled back by SQLite
            journal._writer.run(undone_by_sqlite, "test", savepoint=False),
            journal.save(replace(first, state="submitting", seq=2)),
            journal.create(record("op-3")),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, Unavailable) for outcome in outcomes)
        assert journal._encoder._heads == {}  # none of them holds a document any more
