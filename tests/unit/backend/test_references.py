"""Referenced series and instances: named from the plan, checked against the metadata."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from service.backend import references
from service.backend.references import check, check_version, contents, missing, named
from service.core.errors import Aborted, InvalidArgument, NotFound, ProxyError, Unavailable
from service.core.model import ImageSetStatus, UpdatePlan, UpdateRequest
from service.normaliser.updates import normalise

SERIES, OTHER_SERIES, INSTANCE = "1.2.3", "1.2.4", "1.2.3.1"
METADATA = {
    "SchemaVersion": "1.1",
    "Patient": {"DICOM": {"PatientName": "X^Y"}},
    "Study": {
        "DICOM": {},
        "Series": {
            SERIES: {"DICOM": {}, "Instances": {INSTANCE: {"DICOM": {}}}},
            OTHER_SERIES: {"DICOM": {}, "Instances": {}},
        },
    },
}


def plan(updatable: object = None, removable: object = None, force: bool = False) -> UpdatePlan:
    def blob(document: object) -> bytes | None:
        if not isinstance(document, dict):
            return None
        return json.dumps({"SchemaVersion": 1.1, **document}).encode()

    return normalise(
        UpdateRequest(
            datastore_id="d" * 32,
            image_set_id="i" * 32,
            latest_version_id="1",
            force=force,
            include_study_image_sets=False,
            updatable_attributes=blob(updatable),
            removable_attributes=blob(removable),
            revert_to_version_id=None,
            kind="dicom_updates",
        )
    )


def series_update(series: str, instance: str = "") -> dict[str, object]:
    body: dict[str, object] = {"DICOM": {"SeriesDescription": "SECRET-1"}}
    if instance:
        body = {"Instances": {instance: {"DICOM": {"ImageComments": "SECRET-2"}}}}
    return {"Study": {"Series": {series: body}}}


def test_study_and_patient_changes_name_nothing() -> None:
    changes = plan({"Study": {"DICOM": {"StudyDescription": "x"}}})
    assert named(changes) == {}


def test_series_and_instances_are_named_with_their_fields() -> None:
    wanted = named(plan(series_update(SERIES, INSTANCE), {"Study": {"Series": {"9.9": {}}}}))
    prefix = "updates.dicom_updates"
    assert wanted == {
        (SERIES, ""): f'{prefix}.updatable_attributes.Study.Series["{SERIES}"]',
        (SERIES, INSTANCE): (
            f'{prefix}.updatable_attributes.Study.Series["{SERIES}"].Instances["{INSTANCE}"]'
        ),
        ("9.9", ""): f'{prefix}.removable_attributes.Study.Series["9.9"]',
    }


def test_the_metadata_blob_is_read_gzipped_or_not() -> None:
    raw = json.dumps(METADATA).encode()
    expected = {SERIES: frozenset({INSTANCE}), OTHER_SERIES: frozenset()}
    assert contents(gzip.compress(raw)) == expected == contents(raw)


def test_missing_series_and_instances_are_violations_naming_fields_not_values() -> None:
    present = contents(json.dumps(METADATA).encode())
    wanted = {
        **named(plan(series_update("7.7", "7.7.1"))),
        **named(plan(series_update(SERIES, "5.5"))),
    }
    violations = missing(wanted, present)
    series = "updates.dicom_updates.updatable_attributes.Study.Series"
    assert [(v.field, v.description) for v in violations] == [
        (f'{series}["7.7"]', "no such series in the image set"),  # its instance: not again
        (f'{series}["{SERIES}"].Instances["5.5"]', "no such instance in this series"),
    ]
    assert not any("SECRET" in v.field + v.description for v in violations)


async def test_check_reads_only_when_the_update_names_series() -> None:
    reads: list[bool] = []

    async def read() -> bytes:
        reads.append(True)
        return gzip.compress(json.dumps(METADATA).encode())

    await check(plan({"Patient": {"DICOM": {"PatientName": "A^B"}}}), read)
    assert reads == []
    await check(plan(series_update(SERIES, INSTANCE)), read)
    assert reads == [True]
    with pytest.raises(InvalidArgument) as refused:
        await check(plan(series_update("8.8")), read)
    assert refused.value.violations[0].description == "no such series in the image set"


# --- the version read before the queue (issue 21) ------------------------------------------------


Read = Callable[[str, str], Awaitable[ImageSetStatus]]


def at_version(version: str) -> Read:
    async def read(datastore_id: str, image_set_id: str) -> ImageSetStatus:
        return ImageSetStatus("d" * 32, "i" * 32, version, "ACTIVE", "UPDATED")

    return read


def failing(error: ProxyError) -> Read:
    async def read(datastore_id: str, image_set_id: str) -> ImageSetStatus:
        raise error

    return read


async def test_an_older_version_is_refused_a_newer_or_equal_one_queues() -> None:
    update = plan({"Study": {"DICOM": {"StudyDescription": "X"}}})  # names version "1"
    with pytest.raises(Aborted) as stale:
        await check_version(update, at_version("3"))
    assert (stale.value.reason, stale.value.aws_code) == ("STALE_VERSION", "ConflictException")
    assert "at version 3" in stale.value.message
    await check_version(update, at_version("1"))
    await check_version(replace(update, latest_version_id="2"), at_version("1"))  # queued behind


async def test_a_failed_read_is_no_verdict_but_a_missing_image_set_is() -> None:
    update = plan({"Study": {"DICOM": {"StudyDescription": "X"}}})
    await check_version(update, failing(Unavailable("throttled")))
    with pytest.raises(NotFound):
        await check_version(update, failing(NotFound("no such image set")))
    await check_version(replace(update, latest_version_id="v1"), failing(NotFound("unread")))


async def test_a_slow_read_is_no_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(references, "VERSION_READ_SECONDS", 0.01)

    async def slow(datastore_id: str, image_set_id: str) -> ImageSetStatus:
        await asyncio.sleep(1.0)
        raise AssertionError("not waited for")

    await check_version(plan({"Study": {"DICOM": {"StudyDescription": "X"}}}), slow)
