"""Watching stage: one GetImageSet poll loop per image set, fanned out to every operation on it.

However many streams follow an image set, HealthImaging sees one poller for it, and every poll
goes through the GetImageSet budget, each slot to the fairest principal
(service/admission/stages.py).
After a submit the first poll comes when updates typically finish (learned from HealthImaging's
own timestamps), so most updates cost one or two polls; after that the interval grows while
nothing changes (jittered so loops do not align). Each change is delivered once to each
subscriber, and a loop ends when nobody is subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from service.admission.stages import PacedCalls
from service.backend.healthimaging import HealthImaging
from service.core.config import WatchSettings
from service.core.errors import NotFound, ProxyError, Unavailable
from service.core.model import ImageSetKey, ImageSetStatus
from service.observability.metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass
class TypicalDuration:
    """Moving average of how long updates take, from HealthImaging's own timestamps."""

    seconds: float
    weight: float = 0.3

    def observe(self, submitted: ImageSetStatus, finished: ImageSetStatus) -> None:
        if submitted.updated_at is None or finished.updated_at is None:
            return
        took = finished.updated_at - submitted.updated_at
        if took > 0:
            self.seconds += self.weight * (took - self.seconds)


@dataclass(eq=False)
class _Subscriber:
    principal: str
    version_id: str
    submitted: ImageSetStatus | None
    queue: asyncio.Queue[ImageSetStatus | ProxyError] = field(default_factory=asyncio.Queue)
    last: ImageSetStatus | None = None
    since: float = field(default_factory=time.monotonic)


class Watcher:
    """Shared poll loops, keyed by (datastore id, image set id)."""

    def __init__(
        self, backend: HealthImaging, polls: PacedCalls, settings: WatchSettings, metrics: Metrics
    ) -> None:
        self._backend = backend
        self._polls = polls
        self._settings = settings
        # insertion-ordered (a dict of keys): the longest subscribed principal comes first
        self._subscribers: dict[ImageSetKey, dict[_Subscriber, None]] = {}
        self._loops: dict[ImageSetKey, asyncio.Task[None]] = {}
        self.typical = TypicalDuration(settings.first_poll_seconds)
        self.polls = 0
        metrics.poll_loops.set_function(lambda: len(self._loops))
        metrics.oldest_waiting.labels("watching").set_function(self._oldest_age)

    def _oldest_age(self) -> float:
        """How long the longest-followed update has waited for HealthImaging to finish it."""
        subscribers = (s for group in self._subscribers.values() for s in group)
        oldest = min((s.since for s in subscribers), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    @property
    def active_loops(self) -> int:
        return len(self._loops)

    async def follow(
        self,
        principal: str,
        datastore_id: str,
        image_set_id: str,
        version_id: str,
        submitted: ImageSetStatus | None = None,
    ) -> AsyncIterator[ImageSetStatus]:
        """Each observed state of `version_id`, ending with its terminal one.

        `submitted` is the submit's own answer (the first poll waits a typical update's
        duration); None means the update was submitted earlier (poll at once). `principal`: whose
        update it is (a loop's polls wait the turn of its longest subscribed principal).
        """
        key = ImageSetKey(datastore_id, image_set_id)
        subscriber = _Subscriber(principal, version_id, submitted)
        self._subscribers.setdefault(key, {})[subscriber] = None
        if key not in self._loops:
            first = self._first_delay() if submitted is not None else 0.0
            self._loops[key] = asyncio.create_task(
                self._poll(key, first), name=f"poll-{image_set_id}"
            )
        try:
            while True:
                item = await subscriber.queue.get()
                if isinstance(item, ProxyError):
                    raise item
                yield item
                if item.terminal:
                    return
        finally:
            self._unsubscribe(key, subscriber)

    def _first_delay(self) -> float:
        # Capped: one batch of slow updates must not delay the first look at everyone's next.
        first = min(self.typical.seconds, self._settings.max_interval_seconds)
        return first * (1 + random.uniform(0, self._settings.jitter))

    def _unsubscribe(self, key: ImageSetKey, subscriber: _Subscriber) -> None:
        subscribers = self._subscribers.get(key, {})
        subscribers.pop(subscriber, None)
        if not subscribers:
            self._subscribers.pop(key, None)
            loop = self._loops.pop(key, None)
            if loop is not None and loop is not asyncio.current_task():
                loop.cancel()

    async def _poll(self, key: ImageSetKey, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        interval = self._settings.initial_interval_seconds
        while self._subscribers.get(key):
            changed = await self._poll_once(key)
            interval = (
                self._settings.initial_interval_seconds
                if changed
                else min(interval * 1.5, self._settings.max_interval_seconds)
            )
            await asyncio.sleep(interval * (1 + random.uniform(0, self._settings.jitter)))

    async def _get(self, key: ImageSetKey, version_id: str = "") -> ImageSetStatus:
        """One GetImageSet, when its turn comes among every principal's polls: a caller
        watching many image sets waits behind its own polls, not before everyone's."""
        self.polls += 1
        subscribers = self._subscribers.get(key)
        principal = next(iter(subscribers)).principal if subscribers else ""
        return await self._polls.call(
            principal, lambda: self._backend.get_image_set(*key, version_id), refusable=False
        )

    async def _poll_once(self, key: ImageSetKey) -> bool:
        """One GetImageSet for the latest version; returns whether any subscriber saw a change."""
        try:
            latest = await self._get(key)
        except Unavailable as exc:
            log.warning("poll_failed", image_set_id=key.image_set_id, error=type(exc).__name__)
            return False
        except ProxyError as exc:
            self._fail_all(key, exc)
            return True
        except Exception as exc:  # noqa: BLE001 - an untranslated failure must not end the loop
            log.warning(
                "poll_failed_unexpectedly", image_set_id=key.image_set_id, error=type(exc).__name__
            )
            return False
        changed = False
        for subscriber in list(self._subscribers.get(key, ())):
            status = await self._status_for(subscriber, latest)
            if status is not None and status != subscriber.last:
                subscriber.last = status
                subscriber.queue.put_nowait(status)
                changed = True
                if status.terminal and subscriber.submitted is not None:
                    self.typical.observe(subscriber.submitted, status)
        return changed

    async def _status_for(
        self, subscriber: _Subscriber, latest: ImageSetStatus
    ) -> ImageSetStatus | None:
        """The subscriber's version: the latest one, or (once superseded) its own final state."""
        if latest.version_id == subscriber.version_id:
            return latest
        if int(latest.version_id) < int(subscriber.version_id):
            return None  # the new version is not visible yet
        try:
            return await self._get(
                ImageSetKey(latest.datastore_id, latest.image_set_id), subscriber.version_id
            )
        except (NotFound, Unavailable):
            return None

    def _fail_all(self, key: ImageSetKey, error: ProxyError) -> None:
        for subscriber in self._subscribers.get(key, ()):
            subscriber.queue.put_nowait(error)

    async def close(self) -> None:
        loops = list(self._loops.values())
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
