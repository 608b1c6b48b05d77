"""What reads before the queue can tell: a stale version, and series/instances an update names.

A `latest_version_id` older than the image set's latest version can only fail (HealthImaging's
ConflictException), after the update has waited its turn for a write: one GetImageSet refuses it
first (ABORTED, reason STALE_VERSION); when that read fails or is slow (retried through a
throttling storm), the update goes on unchecked and HealthImaging judges it at the submit. A
newer one is let through: updates queued ahead of it for the same image set may bring the image
set to it by its turn.

Referenced series and instances: an update may only name UIDs its image set holds.
HealthImaging cannot create series or instances: an update naming one the image set lacks fails
after it has taken a write (0.25/s by default). One GetImageSetMetadata read, made only when the
document names series or instances, refuses it first: INVALID_ARGUMENT, a field violation per
missing series or instance, its path naming the key (the UID the caller sent), never a value.
The latest version is read: a stale `latest_version_id` fails as a conflict anyway. The read
waits its caller's turn among everyone's reads (service/admission/stages.py), so one caller's flood
of
series updates does not hold another's read back.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable, Mapping

import structlog

from service.admission.stages import PacedCalls
from service.backend.healthimaging import HealthImaging
from service.core.errors import Aborted, FieldViolation, InvalidArgument, NotFound, ProxyError
from service.core.model import ImageSetStatus, UpdatePlan
from service.normaliser.jsondoc import field_path
from service.normaliser.updates import DICOM_UPDATES, MAX_VIOLATIONS

log = structlog.get_logger(__name__)

VERSION_READ_SECONDS = 2.0
"""The version read's bound (a GetImageSet takes ~0.1 s): past it, the update goes on unchecked."""

Named = Mapping[tuple[str, str], str]
"""(series UID, instance UID or "") → the field that first names it."""
Contents = Mapping[str, frozenset[str]]
"""Series UID → the UIDs of its instances."""


def named(plan: UpdatePlan) -> Named:
    """The series and instances an update names (a series also for each of its instances)."""
    found: dict[tuple[str, str], str] = {}
    for change in plan.changes:
        if not change.series_uid:
            continue
        blob = "updatable_attributes" if change.action == "update" else "removable_attributes"
        series = ("Study", "Series", change.series_uid)
        found.setdefault((change.series_uid, ""), field_path(f"{DICOM_UPDATES}.{blob}", series))
        if change.instance_uid:
            path = (*series, "Instances", change.instance_uid)
            found.setdefault(
                (change.series_uid, change.instance_uid),
                field_path(f"{DICOM_UPDATES}.{blob}", path),
            )
    return found


def contents(metadata: bytes) -> Contents:
    """The series and instances of a GetImageSetMetadata blob (gzip-compressed JSON, or JSON)."""
    document = json.loads(gzip.decompress(metadata) if metadata[:2] == b"\x1f\x8b" else metadata)
    series = document.get("Study", {}).get("Series", {})
    return {uid: frozenset(body.get("Instances", {})) for uid, body in series.items()}


def missing(wanted: Named, present: Contents) -> list[FieldViolation]:
    """A violation for each named series the image set lacks, and each instance its series lacks
    (instances of a missing series are not listed again)."""
    violations: list[FieldViolation] = []
    for (series, instance), path in wanted.items():
        if series not in present:
            if not instance:
                violations.append(FieldViolation(path, "no such series in the image set"))
        elif instance and instance not in present[series]:
            violations.append(FieldViolation(path, "no such instance in this series"))
    return violations


async def check(plan: UpdatePlan, read: Callable[[], Awaitable[bytes]]) -> None:
    """Raise InvalidArgument if the update names a series or instance its image set lacks;
    `read` (the image set's metadata) is called only when the update names any."""
    wanted = named(plan)
    if not wanted:
        return
    metadata = await read()
    present = await asyncio.to_thread(contents, metadata)  # up to 50 MB: off the loop
    violations = missing(wanted, present)
    if violations:
        raise InvalidArgument(violations[:MAX_VIOLATIONS], len(violations))


async def check_version(
    plan: UpdatePlan, latest: Callable[[str, str], Awaitable[ImageSetStatus]]
) -> None:
    """Raise Aborted if the image set is already past the version the update names. A read
    that fails (throttled, unreachable) is no verdict: the update goes on, and HealthImaging
    judges its version at the submit; an image set that is gone is NotFound now."""
    if not plan.latest_version_id.isdigit():
        return  # HealthImaging's versions are numbers: anything else it refuses itself
    try:
        async with asyncio.timeout(VERSION_READ_SECONDS):
            current = (await latest(plan.datastore_id, plan.image_set_id)).version_id
    except NotFound:
        raise
    except ProxyError as error:
        log.info("version_check_skipped", reason=error.reason)
        return
    except TimeoutError:  # a throttling storm: waiting out its retries would outlast the call
        log.info("version_check_skipped", reason="SLOW_READ")
        return
    if current.isdigit() and int(current) > int(plan.latest_version_id):
        raise Aborted(
            f"latestVersionId {plan.latest_version_id} is stale: the image set is at version "
            f"{current} (nothing was queued)",
            reason="STALE_VERSION",
            aws_code="ConflictException",
        )


class References:
    """The check of an update's named series and instances, its read waiting the caller's turn
    (the `reference_reads` stage, paced by the GetImageSetMetadata budget)."""

    def __init__(self, backend: HealthImaging, reads: PacedCalls, polls: PacedCalls) -> None:
        self._backend = backend
        self._reads = reads
        self._polls = polls
        """The GetImageSet stage (paced by its budget): the version read waits its turn there."""

    async def check(self, principal: str, plan: UpdatePlan, deadline: float | None) -> None:
        """A stale version first (one GetImageSet), then the named series and instances."""

        def latest(datastore_id: str, image_set_id: str) -> Awaitable[ImageSetStatus]:
            get = self._backend.get_image_set
            return self._polls.call(
                principal, lambda: get(datastore_id, image_set_id, ""), deadline
            )

        await check_version(plan, latest)

        def read() -> Awaitable[bytes]:
            return self._backend.image_set_metadata(plan.datastore_id, plan.image_set_id)

        await check(plan, lambda: self._reads.call(principal, read, deadline))
