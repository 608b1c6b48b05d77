"""SQLite journal's writer stopping: nobody waits forever, nobody is told a guess."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from service.core.errors import Unavailable
from service.journal.sqlite_batches import Writer


@contextlib.asynccontextmanager
async def answered_in_time() -> AsyncIterator[None]:
    """A caller left waiting forever fails the test instead of hanging it."""
    async with asyncio.timeout(10):
        yield


def select_one(db: sqlite3.Connection) -> Any:
    return db.execute("SELECT 1").fetchone()[0]


async def test_use_after_close_fails_loudly() -> None:
    async with Writer.open(":memory:", "") as writer:
        assert await writer.run(select_one, "get") == 1
    async with answered_in_time():
        with pytest.raises(Unavailable, match=r"^journal get: the journal is closed$"):
            await writer.run(select_one, "get")


async def test_closing_answers_the_batch_in_flight_and_fails_those_queued_behind_it() -> None:
    running, release = threading.Event(), threading.Event()

    def slow(db: sqlite3.Connection) -> Any:
        running.set()
        release.wait(10)
        return select_one(db)

    async with contextlib.AsyncExitStack() as stack:
        writer = await stack.enter_async_context(Writer.open(":memory:", ""))
        in_flight = asyncio.ensure_future(writer.run(slow, "save"))
        await asyncio.to_thread(running.wait, 10)
        queued = asyncio.ensure_future(writer.run(select_one, "get"))
        closing = asyncio.ensure_future(stack.aclose())
        await asyncio.sleep(0.05)  # closing waits for the batch on the thread
        release.set()
        async with answered_in_time():
            await closing
            assert await in_flight == 1  # it committed: its caller hears so
            with pytest.raises(Unavailable, match=r"^journal get: the journal writer has stopped"):
                await queued


def shut_down(*_: Any) -> None:
    raise RuntimeError("cannot schedule new futures after shutdown")


async def test_a_writer_that_dies_fails_every_caller_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Writer.open(":memory:", "") as writer:
        monkeypatch.setattr(writer._thread, "submit", shut_down)
        async with answered_in_time():
            with pytest.raises(Unavailable, match=r"^journal save: the journal writer has stopped"):
                await writer.run(select_one, "save")
            with pytest.raises(Unavailable, match=r"^journal get: the journal is closed$"):
                await writer.run(select_one, "get")
        monkeypatch.undo()  # the close itself still needs the thread


async def test_a_checkpoint_nobody_waits_for_still_logs_its_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def breaks() -> None:
        raise MemoryError

    async with Writer.open(":memory:", "") as writer:
        monkeypatch.setattr(writer, "_truncate_log", breaks)
        writer.scrub_after_commit()
        with capture_logs() as captured:
            await writer.run(select_one, "save")  # the checkpoint follows this batch
            await writer.run(select_one, "get")  # queued behind it
    assert {"event": "journal_checkpoint_failed", "error": "MemoryError", "log_level": "error"} in [
        {key: entry[key] for key in ("event", "error", "log_level")} for entry in captured
    ]
