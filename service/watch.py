"""Watching stage: one GetImageSet poll loop per image set, fanned out to every operation on it.

However many streams follow an image set, HealthImaging sees one poller for it. The loop polls the
latest version with an interval that grows while nothing changes (jittered so loops do not align),
delivers each change once to each subscriber, and ends when nobody is subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from service.config import WatchSettings
from service.errors import NotFound, ProxyError, Unavailable
from service.healthimaging import HealthImaging, ImageSetStatus

log = structlog.get_logger(__name__)

ImageSetKey = tuple[str, str]


@dataclass(eq=False)
class _Subscriber:
    version_id: str
    queue: asyncio.Queue[ImageSetStatus | ProxyError] = field(default_factory=asyncio.Queue)
    last: ImageSetStatus | None = None


class Watcher:
    """Shared poll loops, keyed by (datastore id, image set id)."""

    def __init__(self, backend: HealthImaging, settings: WatchSettings) -> None:
        self._backend = backend
        self._settings = settings
        self._subscribers: dict[ImageSetKey, set[_Subscriber]] = {}
        self._loops: dict[ImageSetKey, asyncio.Task[None]] = {}
        self.polls = 0

    @property
    def active_loops(self) -> int:
        return len(self._loops)

    async def follow(
        self, datastore_id: str, image_set_id: str, version_id: str
    ) -> AsyncIterator[ImageSetStatus]:
        """Each observed state of `version_id`, ending with its terminal one."""
        key = (datastore_id, image_set_id)
        subscriber = _Subscriber(version_id)
        self._subscribers.setdefault(key, set()).add(subscriber)
        if key not in self._loops:
            self._loops[key] = asyncio.create_task(self._poll(key), name=f"poll-{image_set_id}")
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

    def _unsubscribe(self, key: ImageSetKey, subscriber: _Subscriber) -> None:
        subscribers = self._subscribers.get(key, set())
        subscribers.discard(subscriber)
        if not subscribers:
            self._subscribers.pop(key, None)
            loop = self._loops.pop(key, None)
            if loop is not None and loop is not asyncio.current_task():
                loop.cancel()

    async def _poll(self, key: ImageSetKey) -> None:
        interval = self._settings.initial_interval_seconds
        while self._subscribers.get(key):
            changed = await self._poll_once(key)
            interval = (
                self._settings.initial_interval_seconds
                if changed
                else min(interval * 1.5, self._settings.max_interval_seconds)
            )
            await asyncio.sleep(interval * (1 + random.uniform(0, self._settings.jitter)))

    async def _poll_once(self, key: ImageSetKey) -> bool:
        """One GetImageSet for the latest version; returns whether any subscriber saw a change."""
        self.polls += 1
        try:
            latest = await self._backend.get_image_set(*key)
        except Unavailable as exc:
            log.warning("poll_failed", image_set_id=key[1], error=type(exc).__name__)
            return False
        except ProxyError as exc:
            self._fail_all(key, exc)
            return True
        changed = False
        for subscriber in list(self._subscribers.get(key, ())):
            status = await self._status_for(subscriber, latest)
            if status is not None and status != subscriber.last:
                subscriber.last = status
                subscriber.queue.put_nowait(status)
                changed = True
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
            return await self._backend.get_image_set(
                latest.datastore_id, latest.image_set_id, subscriber.version_id
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
