"""The chaos campaign (issue 24): every failure clusters have, against real processes.

`make chaos` runs every scenario (CHAOS=full); `make test` runs the quick ones (split-brain, a
Redis restart, an orphaned stream), well under 90 s. Each prints its figures; any breach fails
it: an update applied twice, an outcome misreported, a stream never ended, an update lost
without a word, a takeover slower than the lease + 1 s.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import (
    LEASE_SECONDS,
    Campaign,
    Figures,
    campaign,
    freeze,
    readiness,
    thaw,
)
from tests.e2e.conftest import QuotaStack, quota_stack, write_quota

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

FULL = os.environ.get("CHAOS") == "full"
full_only = pytest.mark.skipif(not FULL, reason="the full campaign: make chaos")
IN_FLIGHT = 40 if FULL else 10
"""Updates in flight for the SIGKILL scenario (the others run half as many when full)."""
OTHERS = int(os.environ.get("CHAOS_UPDATES", 20 if FULL else 10))


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    work = tmp_path_factory.mktemp("chaos")
    with quota_stack(
        work, write_quota(50.0, 50.0), image_sets=260 if FULL else 40, update_delay=1.5
    ) as stack:
        yield stack


@pytest.fixture
def run(backend: QuotaStack, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Campaign]:
    backend.admin("PUT", "faults", {})
    with campaign(backend, tmp_path, request.node.name.removeprefix("test_")[:40]) as running:
        yield running
    backend.admin("PUT", "faults", {})


def judged(figures: Figures) -> None:
    figures.print()
    assert figures.breaches == [], figures.breaches
    assert figures.rows["updates accepted"] == len(figures.applied)


# --- the quick subset (make test) -----------------------------------------------------------------


async def test_split_brain_a_frozen_owner_past_its_lease(
    run: Campaign, backend: QuotaStack
) -> None:
    """SIGSTOP past the lease while its writes are in flight (applied, answers held), SIGCONT:
    the successor must not misreport, the thawed owner must send and tell nothing more."""
    backend.admin(
        "PUT", "faults", {"answer_delay_ms": 1500, "operations": ["UpdateImageSetMetadata"]}
    )

    async def fault() -> None:
        frozen = run.busiest()
        freeze(frozen)
        await asyncio.sleep(LEASE_SECONDS * 2.5)
        thaw(frozen)

    figures = await run.drive(OTHERS, fault, fault_after=0.8, takeover=True)
    figures.notes.append(f"resubmits after takeover: {run.log_count('resubmit_after_takeover')}")
    judged(figures)


async def test_redis_restarted_with_aof(run: Campaign) -> None:
    async def fault() -> None:
        await asyncio.to_thread(run.redis.restart, down=1.5)

    judged(await run.drive(OTHERS, fault))


async def test_an_orphaned_stream_ends_and_its_update_finishes_elsewhere(
    run: Campaign, backend: QuotaStack
) -> None:
    """Watches on a replica frozen past its lease end with the re-attach error once it thaws
    (within a heartbeat); the client re-attaches elsewhere and is told `finished`."""
    backend.admin("PUT", "faults", {"update_stall_rate": 1.0})

    async def fault() -> None:
        frozen = run.busiest()
        freeze(frozen)
        await asyncio.sleep(LEASE_SECONDS * 2)
        thaw(frozen)
        await asyncio.sleep(2.0)
        backend.admin("PUT", "faults", {})
        backend.admin("POST", "release-stalled", {})

    figures = await run.drive(OTHERS, fault, fault_after=1.5, takeover=True)
    let_go = run.log_count("operations_let_go")
    figures.notes.append(f"let-go events logged: {let_go}")
    judged(figures)


# --- the full campaign (make chaos) ---------------------------------------------------------------


@full_only
async def test_sigkill_with_40_in_flight(run: Campaign) -> None:
    async def fault() -> None:
        run.busiest().kill()

    judged(await run.drive(IN_FLIGHT, fault, fault_after=1.0, takeover=True))


@full_only
async def test_a_watch_on_a_third_replica_across_a_takeover(run: Campaign) -> None:
    """Every update is also watched on the third replica only, which stays up while the
    busiest of the other two is killed: the watches follow the takeover to `finished`."""

    async def fault() -> None:
        run.busiest(among=run.replicas[:2]).kill()

    judged(await run.drive(OTHERS, fault, takeover=True, watcher=run.replicas[2]))


@full_only
async def test_a_write_that_landed_then_its_replica_was_killed(
    run: Campaign, backend: QuotaStack
) -> None:
    backend.admin(
        "PUT", "faults", {"answer_delay_ms": 3000, "operations": ["UpdateImageSetMetadata"]}
    )

    async def fault() -> None:
        run.busiest().kill()

    judged(await run.drive(OTHERS, fault, fault_after=1.0, takeover=True))


@full_only
async def test_a_write_whose_answer_is_dropped(run: Campaign, backend: QuotaStack) -> None:
    backend.admin(
        "PUT", "faults", {"answer_drop_rate": 0.5, "operations": ["UpdateImageSetMetadata"]}
    )

    async def fault() -> None:
        return None

    judged(await run.drive(OTHERS, fault))


@full_only
async def test_redis_restarted_empty(run: Campaign) -> None:
    async def fault() -> None:
        await asyncio.to_thread(run.redis.restart, empty=True, down=0.2)

    figures = await run.drive(OTHERS, fault)
    figures.notes.append(f"journal_lost logged: {run.log_count('journal_lost')}")
    judged(figures)


@full_only
async def test_redis_stopped_for_10_s(run: Campaign) -> None:
    seen: list[bool | None] = []

    async def fault() -> None:
        run.redis.stop()
        for _ in range(20):
            await asyncio.sleep(0.5)
            seen.append(await readiness(run.replicas[0]))
        await asyncio.to_thread(run.redis.start)
        for _ in range(40):
            await asyncio.sleep(0.25)
            if await readiness(run.replicas[0]):
                seen.append(True)
                break

    figures = await run.drive(OTHERS, fault)
    figures.notes.append(
        f"readiness: NOT_SERVING seen {seen.count(False)} times, SERVING again: {seen[-1]}"
    )
    judged(figures)
    assert False in seen and seen[-1] is True


@full_only
async def test_backend_500s_throttles_and_dropped_connections(
    run: Campaign, backend: QuotaStack
) -> None:
    backend.admin(
        "PUT",
        "faults",
        {"error_rate": 0.15, "throttle_rate": 0.2, "drop_rate": 0.1},
    )

    async def fault() -> None:
        await asyncio.sleep(4.0)
        backend.admin("PUT", "faults", {})

    judged(await run.drive(OTHERS, fault, fault_after=0.0))
