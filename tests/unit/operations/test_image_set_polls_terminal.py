"""The watch's terminal rule: a follow ends at the first finished state, UPDATE_FAILED included."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from service.admission.budget import Budget
from service.admission.stages import shared_stages
from service.backend.healthimaging import HealthImaging
from service.core.config import AdmissionSettings, BackendSettings, BudgetSettings, WatchSettings
from service.core.model import ImageSetStatus
from service.normaliser.updates import DEFAULT_LIMITS
from service.observability.metrics import Metrics
from service.operations.image_set_polls import Watcher

FAST = WatchSettings(
    first_poll_seconds=0.0, initial_interval_seconds=0.01, max_interval_seconds=0.02, jitter=0.0
)


def status(state: str, workflow: str, version: str = "2") -> ImageSetStatus:
    return ImageSetStatus("ds", "set", version, state, workflow)


class Scripted:
    """GetImageSet answers, in order; the last one repeats (what a stuck update would show)."""

    def __init__(self, *answers: ImageSetStatus) -> None:
        self._answers = list(answers)
        self.calls = 0

    async def get_image_set(
        self, datastore_id: str, image_set_id: str, version_id: str = ""
    ) -> Any:
        self.calls += 1
        return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]


async def followed(backend: Scripted) -> list[tuple[str, str]]:
    budget_settings = BudgetSettings(enabled=False)
    budget = Budget.open(budget_settings, BackendSettings(), "", "test", Metrics())
    async with budget as open_budget:
        metrics = Metrics()
        polls = shared_stages(AdmissionSettings(), DEFAULT_LIMITS, open_budget, metrics).polls
        watcher = Watcher(cast(HealthImaging, backend), polls, FAST, metrics)
        seen: list[tuple[str, str]] = []

        async def follow() -> None:
            async for item in watcher.follow("dev:a", "ds", "set", "2"):
                seen.append((item.state, item.workflow_status))

        try:
            await asyncio.wait_for(follow(), 2.0)
        finally:
            await watcher.close()
        assert watcher.active_loops == 0
    return seen


@pytest.mark.parametrize("workflow", ["UPDATED", "UPDATE_FAILED", "DELETED"])
async def test_a_follow_ends_at_a_finished_state(workflow: str) -> None:
    backend = Scripted(
        status("LOCKED", "UPDATING"),
        status("ACTIVE", workflow),
        status("ACTIVE", "UPDATING"),  # never read: the follow has ended
    )
    assert await followed(backend) == [("LOCKED", "UPDATING"), ("ACTIVE", workflow)]


async def test_a_locked_image_set_is_not_finished_whatever_its_workflow_status() -> None:
    assert not status("LOCKED", "UPDATED").terminal
    assert not status("ACTIVE", "UPDATING").terminal
    backend = Scripted(status("LOCKED", "UPDATED"), status("ACTIVE", "UPDATED"))
    assert await followed(backend) == [("LOCKED", "UPDATED"), ("ACTIVE", "UPDATED")]


async def test_the_oldest_followed_update_has_an_age_until_it_finishes() -> None:
    backend = Scripted(status("LOCKED", "UPDATING"), status("ACTIVE", "UPDATED"))
    metrics = Metrics()
    budget = Budget.open(BudgetSettings(enabled=False), BackendSettings(), "", "test", metrics)

    def age() -> float | None:
        labels = {"stage": "watching"}
        return metrics.registry.get_sample_value("imaging_proxy_oldest_waiting_seconds", labels)

    async with budget as open_budget:
        slow = WatchSettings(first_poll_seconds=0.1, max_interval_seconds=0.1, jitter=0.0)
        polls = shared_stages(AdmissionSettings(), DEFAULT_LIMITS, open_budget, metrics).polls
        watcher = Watcher(cast(HealthImaging, backend), polls, slow, metrics)
        assert age() == 0.0
        follow = watcher.follow("dev:a", "ds", "set", "2", status("LOCKED", "UPDATING"))
        first = asyncio.ensure_future(anext(follow))
        await asyncio.sleep(0.05)
        waited = age()
        assert waited is not None and waited > 0
        await asyncio.wait_for(first, 2.0)
        assert [s async for s in follow][-1].workflow_status == "UPDATED"
        await watcher.close()
    assert age() == 0.0
