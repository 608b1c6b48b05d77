"""Did a submit land? The questions asked when a write's answer is missing or contradicts it.

Three moments ask: a submit without an answer (a lost connection), a submit interrupted by a
crash or a takeover (resumed in `submitting`), and a ConflictException. HealthImaging's
`latestVersionId` is a compare-and-set: of the writes naming version N, exactly one makes N+1.
So whether N+1 is this operation's change is decided by comparing N+1's metadata with what the
update sets and removes (`carries`), never by "the version moved" alone, and "version unchanged"
means "never sent" only once the previous owner's call can no longer land (`inflight_until`).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Mapping
from typing import Any

import structlog

from service.admission.budget import GET_IMAGE_SET, GET_IMAGE_SET_METADATA, Budget
from service.backend.healthimaging import HealthImaging
from service.core.errors import Aborted, NotFound, ProxyError
from service.core.model import ImageSetStatus, UpdatePlan
from service.observability.metrics import Metrics

log = structlog.get_logger(__name__)

SETTLE_SECONDS = 120.0
"""Longest wait for a version to finish before it is compared with an update."""


class Landing:
    """Reads HealthImaging through the budget to tell whether, and whose, a version is."""

    def __init__(self, backend: HealthImaging, budget: Budget, metrics: Metrics) -> None:
        self._backend = backend
        self._budget = budget
        self._metrics = metrics

    async def latest(self, datastore_id: str, image_set_id: str) -> ImageSetStatus:
        """The image set's latest version (the stale-version check before the queue)."""
        return await self._get(datastore_id, image_set_id, "")

    async def _get(self, datastore_id: str, image_set_id: str, version: str) -> ImageSetStatus:
        return await self._budget.call(
            GET_IMAGE_SET, lambda: self._backend.get_image_set(datastore_id, image_set_id, version)
        )

    async def _metadata(self, datastore_id: str, image_set_id: str, version: str) -> bytes:
        return await self._budget.call(
            GET_IMAGE_SET_METADATA,
            lambda: self._backend.image_set_metadata(datastore_id, image_set_id, version),
        )

    async def after_interruption(
        self, plan: UpdatePlan, inflight_until: float
    ) -> ImageSetStatus | None:
        """An interrupted submit: the version it made, or None when it never landed (and no
        longer can). Someone else's change in its place: `Aborted`, as a resubmit would get."""
        latest = await self._get(plan.datastore_id, plan.image_set_id, "")
        wait = inflight_until - time.time()
        if latest.untouched_since(plan.latest_version_id) and wait > 0:
            log.info("inflight_wait", image_set_id=plan.image_set_id, seconds=round(wait, 3))
            await asyncio.sleep(wait)  # the previous owner's call may still land
            latest = await self._get(plan.datastore_id, plan.image_set_id, "")
        if latest.untouched_since(plan.latest_version_id):
            return None
        status = await self.ours(plan)
        if status is None:
            raise Aborted(
                f"image set {plan.image_set_id} changed since version {plan.latest_version_id} "
                "by another update; read the latest version and resubmit",
                reason="BACKEND_CONFLICT",
            )
        return status

    async def after_no_answer(self, plan: UpdatePlan) -> tuple[ImageSetStatus | bool | None, str]:
        """After a submit without an answer: the version it made if it landed, False if it
        certainly did not, None if unknown; with what to tell the caller in the last two cases."""
        try:
            latest = await self._get(plan.datastore_id, plan.image_set_id, "")
            if latest.untouched_since(plan.latest_version_id):
                return False, "the update was not applied (the image set is unchanged): resubmit it"
            status = await self.ours(plan)
            if status is not None:
                return status, ""
            return None, "the image set was changed by another update: read it before retrying"
        except ProxyError:
            return (
                None,
                "the update may or may not have been applied: check the image set's version "
                "before retrying",
            )

    async def ours(self, plan: UpdatePlan) -> ImageSetStatus | None:
        """The version this update made (N+1) if it carries the update; None if it does not
        (someone else's write won the compare-and-set), does not exist, or cannot be judged.

        N+1's metadata shows its changes only once its update has finished, so a LOCKED N+1 is
        waited for first; one that ended otherwise than UPDATED holds nothing to compare."""
        version = str(int(plan.latest_version_id) + 1)
        try:
            status = await self._settled(plan, version)
            if status.state == "LOCKED" or status.workflow_status != "UPDATED":
                log.warning("outcome_undecided", image_set_id=plan.image_set_id)
                return None
            metadata = await self._metadata(plan.datastore_id, plan.image_set_id, version)
        except NotFound:
            return None
        verdict = _judge(plan, metadata)
        self._metrics.decided_by_comparison.labels("ours" if verdict else "theirs").inc()
        log.warning("outcome_by_comparison", image_set_id=plan.image_set_id, ours=verdict)
        return status if verdict else None

    async def _settled(self, plan: UpdatePlan, version: str) -> ImageSetStatus:
        """`version`'s status once no longer LOCKED (or as it is after `SETTLE_SECONDS`)."""
        until, pause = time.monotonic() + SETTLE_SECONDS, 0.2
        while True:
            status = await self._get(plan.datastore_id, plan.image_set_id, version)
            if status.state != "LOCKED" or time.monotonic() >= until:
                return status
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


def _judge(plan: UpdatePlan, metadata: bytes) -> bool:
    """Whether the metadata shows every attribute the update sets, and none it removes."""
    if plan.kind != "dicom_updates" or plan.updatable_attributes is None:
        return False  # a revert (or a record without its document) cannot be compared
    try:
        document = json.loads(gzip.decompress(metadata))
    except (OSError, ValueError) as exc:
        raise ProxyError(f"unreadable image set metadata ({type(exc).__name__})") from exc
    updates = json.loads(plan.updatable_attributes or b"{}")
    removals = json.loads(plan.removable_attributes or b"{}")
    return carries(document, updates, removals)


def carries(document: Mapping[str, Any], updates: Mapping[str, Any], removals: Any) -> bool:
    """Pure: `document` holds every leaf of `updates` with its value, and no leaf of
    `removals` (a removal naming an empty object removes that whole series or instance)."""
    return _holds(document, updates) and _lacks(document, removals or {})


def _holds(document: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    for name, value in expected.items():
        if name == "SchemaVersion":
            continue
        if isinstance(value, Mapping):
            inner = document.get(name)
            if not isinstance(inner, Mapping) or not _holds(inner, value):
                return False
        elif document.get(name) != value:
            return False
    return True


def _lacks(document: Mapping[str, Any], removed: Mapping[str, Any]) -> bool:
    for name, value in removed.items():
        if name == "SchemaVersion" or name not in document:
            continue
        inner = document[name]
        if not (isinstance(value, Mapping) and value and isinstance(inner, Mapping)):
            return False  # still there
        if not _lacks(inner, value):
            return False
    return True
