"""Polls are shared fairly: one principal watching many image sets cannot crowd the GetImageSet
budget for another's (issue 18). A real budget paces the polls; the order of the backend's calls
is the oracle."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from service.admission.buckets import LocalStore
from service.admission.budget import Budget
from service.admission.stages import shared_stages
from service.backend.healthimaging import HealthImaging
from service.core.config import AdmissionSettings, BudgetSettings, WatchSettings
from service.core.model import ImageSetStatus
from service.normaliser.updates import DEFAULT_LIMITS
from service.observability.metrics import Metrics
from service.operations.image_set_polls import Watcher

QUICK = WatchSettings(initial_interval_seconds=0.001, max_interval_seconds=0.001, jitter=0.0)
BUSY_SETS = 20


class Backend:
    """Every image set stays UPDATING except the victim's, which is UPDATED; calls are logged."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def get_image_set(
        self, datastore_id: str, image_set_id: str, version_id: str = ""
    ) -> Any:
        self.calls.append(image_set_id)
        workflow = "UPDATED" if image_set_id == "victim" else "UPDATING"
        state = "ACTIVE" if image_set_id == "victim" else "LOCKED"
        return ImageSetStatus(datastore_id, image_set_id, "2", state, workflow)


async def test_a_single_watch_is_polled_before_a_busy_principals_queued_polls() -> None:
    settings = BudgetSettings(get_image_set_rate=200.0, get_image_set_burst=1.0, headroom=1.0)
    metrics = Metrics()
    budget = Budget(settings, "test", LocalStore(settings), metrics)
    polls = shared_stages(AdmissionSettings(), DEFAULT_LIMITS, budget, metrics).polls
    backend = Backend()
    watcher = Watcher(cast(HealthImaging, backend), polls, QUICK, metrics)

    async def follow(principal: str, image_set: str) -> None:
        async for _ in watcher.follow(principal, "ds", image_set, "2"):
            pass

    busy = [asyncio.create_task(follow("dev:busy", f"set-{n}")) for n in range(BUSY_SETS)]
    try:
        for _ in range(1000):  # until the busy principal's polls are under way (bounded)
            if len(backend.calls) >= 2:
                break
            await asyncio.sleep(0.001)
        made = len(backend.calls)
        await asyncio.wait_for(follow("dev:victim", "victim"), 5)
    finally:
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        await watcher.close()
    # behind the poll holding the stage and one of the busy principal's, not behind all twenty
    assert backend.calls.index("victim") <= made + 2 < BUSY_SETS, backend.calls
