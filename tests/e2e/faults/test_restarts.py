"""The proxy killed (SIGKILL) or stopped (SIGTERM) mid-update: the journal resumes the update and
WatchUpdate gets its end. SQLite in a data directory for one replica; Redis for several, where
the OTHER replica takes over.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from tests.e2e.faults.conftest import ProxyFactory
from tests.e2e.faults.harness import (
    RAISED_BUDGETS,
    STREAM_TIMEOUT,
    Config,
    Emulator,
    Proxy,
    connect,
    dev,
    drain,
    first_events,
    name_update,
    update,
    watch,
)

pytestmark = pytest.mark.e2e

# One write a second: the second of two updates is still queued when the proxy goes.
SLOW_WRITES = {"update_rate": 1.0, "update_burst": 1.0}
LEASE_SECONDS = 1.0
GRACE_SECONDS = 1.0


def _journal_in(data_dir: Path, budget: Config = RAISED_BUDGETS) -> Config:
    """Settings of a proxy whose SQLite journal lives in `data_dir`."""
    return {**budget, "journal": {"data_dir": str(data_dir)}}


async def _submitted_then_killed(proxy: Proxy, emulator: Emulator, image_set: str) -> str:
    """Start an update that stalls in UPDATING, wait for `submitted`, then SIGKILL the proxy."""
    emulator.set_faults({"update_stall_rate": 1.0})
    async with connect(proxy) as stub:
        call = stub.UpdateImageSetMetadata(
            name_update(emulator, image_set, "FAULTS^RESUMED"), metadata=dev()
        )
        events = await first_events(call, "submitted")
        proxy.kill()
    emulator.clear_faults()
    return events[0].operation_id


async def _final_state_through(proxy: Proxy, operation_id: str) -> tuple[str, str]:
    async with connect(proxy) as stub:
        outcome = await watch(stub, operation_id)
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    assert outcome.finished is not None
    return outcome.finished.image_set_workflow_status, outcome.finished.latest_version_id


async def test_submitted_update_resumes_after_sigkill_and_restart(
    emulator: Emulator, launch_proxy: ProxyFactory, tmp_path: Path
) -> None:
    image_set = emulator.take_image_set()
    journal = _journal_in(tmp_path / "journal")
    operation_id = await _submitted_then_killed(launch_proxy((), journal), emulator, image_set)

    restarted = launch_proxy((), journal)
    assert emulator.release_stalled() >= 1

    assert await _final_state_through(restarted, operation_id) == ("UPDATED", "2")
    assert len(emulator.calls("UpdateImageSetMetadata", image_set)) == 1


async def test_queued_update_stays_queued_across_sigkill_and_is_submitted_once(
    emulator: Emulator, launch_proxy: ProxyFactory, tmp_path: Path
) -> None:
    first_set, second_set = emulator.take_image_set(), emulator.take_image_set()
    journal = _journal_in(tmp_path / "journal", {"budget": SLOW_WRITES})
    proxy = launch_proxy((), journal)
    async with connect(proxy) as stub:
        first = stub.UpdateImageSetMetadata(
            name_update(emulator, first_set, "FAULTS^FIRST"), metadata=dev()
        )
        await first_events(first, "submitted")
        second = stub.UpdateImageSetMetadata(
            name_update(emulator, second_set, "FAULTS^QUEUED"), metadata=dev()
        )
        queued = await first_events(second, "queued")
        proxy.kill()
    assert emulator.calls("UpdateImageSetMetadata", second_set) == []

    restarted = launch_proxy((), journal)

    assert await _final_state_through(restarted, queued[0].operation_id) == ("UPDATED", "2")
    assert len(emulator.calls("UpdateImageSetMetadata", first_set)) == 1
    assert len(emulator.calls("UpdateImageSetMetadata", second_set)) == 1


@pytest.mark.redis
async def test_other_replica_finishes_the_update_of_a_killed_one(
    emulator: Emulator, launch_proxy: ProxyFactory, redis_url: str
) -> None:
    image_set = emulator.take_image_set()
    shared = {**RAISED_BUDGETS, "journal": {"url": redis_url, "lease_seconds": LEASE_SECONDS}}
    doomed, survivor = launch_proxy((), shared), launch_proxy((), shared)

    operation_id = await _submitted_then_killed(doomed, emulator, image_set)
    assert emulator.release_stalled() >= 1

    assert await _final_state_through(survivor, operation_id) == ("UPDATED", "2")
    assert len(emulator.calls("UpdateImageSetMetadata", image_set)) == 1


async def test_restart_replays_a_finished_operation(
    emulator: Emulator, launch_proxy: ProxyFactory, tmp_path: Path
) -> None:
    image_set = emulator.take_image_set()
    journal = _journal_in(tmp_path / "journal")
    proxy = launch_proxy((), journal)
    async with connect(proxy) as stub:
        done = await update(
            stub, name_update(emulator, image_set, "FAULTS^DONE"), deadline=STREAM_TIMEOUT
        )
    assert done.code == grpc.StatusCode.OK, done.details
    proxy.kill()

    restarted = launch_proxy((), journal)

    assert await _final_state_through(restarted, done.operation_id) == ("UPDATED", "2")


async def test_sigterm_drains_and_the_restarted_proxy_finishes_both_updates(
    emulator: Emulator, launch_proxy: ProxyFactory, tmp_path: Path
) -> None:
    submitted_set, queued_set = emulator.take_image_set(), emulator.take_image_set()
    settings = {**_journal_in(tmp_path / "journal", {"budget": SLOW_WRITES})}
    settings["server"] = {"grace_seconds": GRACE_SECONDS}
    proxy = launch_proxy((), settings)
    emulator.set_faults({"update_stall_rate": 1.0})
    async with connect(proxy) as stub:
        first = stub.UpdateImageSetMetadata(
            name_update(emulator, submitted_set, "FAULTS^DRAINED"), metadata=dev()
        )
        submitted = await first_events(first, "submitted")
        second = stub.UpdateImageSetMetadata(
            name_update(emulator, queued_set, "FAULTS^REQUEUED"), metadata=dev()
        )
        queued = await first_events(second, "queued")
        proxy.child.process.send_signal(signal.SIGTERM)
        ends = [await drain(first), await drain(second)]
    assert proxy.child.process.wait(30) == 0
    emulator.clear_faults()

    assert [end.code for end in ends] == [grpc.StatusCode.UNAVAILABLE] * 2, ends
    assert "WatchUpdate" in ends[1].details and queued[0].operation_id in ends[1].details
    assert {"shutting_down", "stopped"} <= {e.get("event") for e in proxy.log_events()}
    restarted = launch_proxy((), settings)
    assert emulator.release_stalled() == 1
    for events, image_set in ((submitted, submitted_set), (queued, queued_set)):
        assert await _final_state_through(restarted, events[0].operation_id) == ("UPDATED", "2")
        assert len(emulator.calls("UpdateImageSetMetadata", image_set)) == 1
