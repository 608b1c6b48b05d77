"""Fault knobs (admin endpoint), documented quotas, and the request log tests count calls with."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

import medical_imaging_model
from emulator.config import DEFAULT_TPS, Quotas, RateLimit, Settings, load_toml
from tests.emulator.conftest import (
    CREDENTIALS,
    DEMO_DATASTORE,
    Emulator,
    blob,
    boto3_client,
    emulator_thread,
    fast_settings,
    sample,
    settled,
)

DS = DEMO_DATASTORE
NAME = {
    "DICOMUpdates": {
        "updatableAttributes": blob(
            {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "Q^Q"}}}
        )
    }
}


def update(client: Any, image_set_id: str, version: str = "1") -> dict[str, Any]:
    result: dict[str, Any] = client.update_image_set_metadata(
        datastoreId=DS,
        imageSetId=image_set_id,
        latestVersionId=version,
        updateImageSetMetadataUpdates=NAME,
    )
    return result


@pytest.fixture
def faulty(emulator: Emulator) -> Iterator[Emulator]:
    yield emulator
    emulator.set_faults()


def test_throttle_rate(client: Any, faulty: Emulator, seeded: list[str]) -> None:
    faulty.set_faults(throttle_rate=1.0, operations=["GetImageSet"])
    with pytest.raises(client.exceptions.ThrottlingException) as raised:
        client.get_image_set(datastoreId=DS, imageSetId=seeded[0])
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    client.list_image_set_versions(
        datastoreId=DS, imageSetId=seeded[0]
    )  # other operations unaffected


def test_internal_error_rate(client: Any, faulty: Emulator, seeded: list[str]) -> None:
    faulty.set_faults(error_rate=1.0)
    with pytest.raises(client.exceptions.InternalServerException) as raised:
        client.get_image_set(datastoreId=DS, imageSetId=seeded[0])
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_dropped_connections_are_logged_without_status(
    client: Any, faulty: Emulator, seeded: list[str]
) -> None:
    faulty.admin("DELETE", "requests")
    faulty.set_faults(drop_rate=1.0)
    with pytest.raises(ConnectionClosedError):
        client.get_image_set(datastoreId=DS, imageSetId=seeded[0])
    statuses = [r["status"] for r in faulty.requests()]
    assert statuses and set(statuses) == {0}  # the HTTP stack may resend once on a dropped socket


def test_added_latency_is_at_least_the_fixed_part(
    client: Any, faulty: Emulator, seeded: list[str]
) -> None:
    faulty.set_faults(latency_ms=150, jitter_ms=10)
    started = time.monotonic()
    client.get_image_set(datastoreId=DS, imageSetId=seeded[0])
    assert time.monotonic() - started >= 0.15


def test_updates_that_fail(client: Any, faulty: Emulator, seeded: list[str]) -> None:
    faulty.set_faults(update_failure_rate=1.0)
    update(client, seeded[0])
    failed = settled(client, DS, seeded[0])
    assert (failed["imageSetWorkflowStatus"], failed["versionId"]) == ("UPDATE_FAILED", "2")
    assert failed["message"]
    faulty.set_faults()
    update(client, seeded[0], version="2")  # a failed version still counts
    assert settled(client, DS, seeded[0])["imageSetWorkflowStatus"] == "UPDATED"


def test_updates_that_stall_until_released(
    client: Any, faulty: Emulator, seeded: list[str]
) -> None:
    faulty.set_faults(update_stall_rate=1.0)
    update(client, seeded[0])
    faulty.set_faults()
    update(client, seeded[1])
    settled(client, DS, seeded[1])  # a later update has landed: the delay has passed
    assert (
        client.get_image_set(datastoreId=DS, imageSetId=seeded[0])["imageSetWorkflowStatus"]
        == "UPDATING"
    )
    assert faulty.admin("POST", "release-stalled") == {"released": 1}
    assert settled(client, DS, seeded[0])["imageSetWorkflowStatus"] == "UPDATED"


def test_faults_endpoint_round_trip(faulty: Emulator) -> None:
    faulty.set_faults(throttle_rate=0.5, operations=["UpdateImageSetMetadata"])
    got = faulty.admin("GET", "faults")
    assert (got["throttle_rate"], got["operations"], got["error_rate"]) == (
        0.5,
        ["UpdateImageSetMetadata"],
        0.0,
    )


def test_request_log_counts_exactly_what_arrived(
    client: Any, emulator: Emulator, seeded: list[str]
) -> None:
    emulator.admin("DELETE", "requests")
    client.get_image_set(datastoreId=DS, imageSetId=seeded[0])
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_image_set(datastoreId=DS, imageSetId="0" * 32)
    log = emulator.requests()
    assert [(r["operation"], r["imageSetId"], r["status"]) for r in log] == [
        ("GetImageSet", seeded[0], 200),
        ("GetImageSet", "0" * 32, 404),
    ]
    assert all(r["datastoreId"] == DS and isinstance(r["at"], float) for r in log)


# ---------------------------------------------------------------- quotas


def test_documented_tps_quota_throttles_the_second_update() -> None:
    with emulator_thread(fast_settings(quotas=Quotas())) as emulator:
        image_sets = emulator.reset_and_seed([sample("CT_small.dcm"), sample("MR_small.dcm")])
        client = boto3_client(emulator.url)
        update(client, image_sets[0])
        with pytest.raises(client.exceptions.ThrottlingException):
            update(client, image_sets[1])


def test_concurrent_update_quota_per_datastore() -> None:
    tps = {**DEFAULT_TPS, "UpdateImageSetMetadata": RateLimit(1000, 1000)}
    quotas = Quotas(tps=tps, concurrent_updates_per_datastore=1)
    with emulator_thread(fast_settings(quotas=quotas)) as emulator:
        image_sets = emulator.reset_and_seed([sample("CT_small.dcm"), sample("MR_small.dcm")])
        client = boto3_client(emulator.url)
        emulator.set_faults(update_stall_rate=1.0)
        update(client, image_sets[0])
        with pytest.raises(client.exceptions.ServiceQuotaExceededException) as raised:
            update(client, image_sets[1])
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402


def test_sync_content_checks_refuse_at_call_time() -> None:
    with emulator_thread(fast_settings(content_checks="sync")) as emulator:
        image_set = emulator.reset_and_seed([sample("CT_small.dcm")])[0]
        client = boto3_client(emulator.url)
        wrong = blob({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "other"}}})
        with pytest.raises(client.exceptions.ValidationException):
            client.update_image_set_metadata(
                datastoreId=DS,
                imageSetId=image_set,
                latestVersionId="1",
                updateImageSetMetadataUpdates={"DICOMUpdates": {"removableAttributes": wrong}},
            )
        assert client.get_image_set(datastoreId=DS, imageSetId=image_set)["versionId"] == "1"


def test_config_file_sets_faults_quotas_and_timing(tmp_path: Path) -> None:
    config = tmp_path / "emulator.toml"
    config.write_text(
        """
[emulator]
port = 9999
update_delay = 0
content_checks = "sync"
[emulator.faults]
throttle_rate = 0.25
[emulator.quotas]
concurrent_updates_per_datastore = 500
[emulator.quotas.tps.UpdateImageSetMetadata]
rate = 10
burst = 20
[emulator.progression.copy]
trigger = "polls"
value = 3
"""
    )
    settings = load_toml(config)
    assert isinstance(settings, Settings)
    assert (settings.port, settings.content_checks, settings.faults.throttle_rate) == (
        9999,
        "sync",
        0.25,
    )
    assert settings.quotas.concurrent_updates_per_datastore == 500
    assert settings.quotas.tps["UpdateImageSetMetadata"] == RateLimit(10, 20)
    assert settings.progressions.update.trigger == "immediate"
    assert (settings.progressions.copy.trigger, settings.progressions.copy.value) == ("polls", 3)
    assert json.dumps(settings.faults.operations) == "[]"


def one_attempt_client(url: str, read_timeout: float = 60.0) -> Any:
    """boto3 that never sends a call twice (its default resends once after a lost answer)."""
    session = boto3.Session(region_name="us-east-1", **CREDENTIALS)
    medical_imaging_model.install(session._session)
    config = Config(
        inject_host_prefix=False, read_timeout=read_timeout, retries={"total_max_attempts": 1}
    )
    return session.client("medical-imaging", endpoint_url=url, config=config)


def test_a_write_whose_client_left_during_the_latency_is_still_applied(
    faulty: Emulator, seeded: list[str]
) -> None:
    """A server holding the whole request applies it: split-brain tests rely on it."""
    impatient = one_attempt_client(faulty.url, read_timeout=0.2)  # gone before the answer
    faulty.set_faults(latency_ms=1500, operations=["UpdateImageSetMetadata"])
    with pytest.raises(ReadTimeoutError):
        update(impatient, seeded[0])
    faulty.set_faults()
    client = boto3_client(faulty.url)
    assert settled(client, DS, seeded[0])["versionId"] == "2"


def test_a_write_can_land_and_lose_its_answer(faulty: Emulator, seeded: list[str]) -> None:
    client = one_attempt_client(faulty.url)
    faulty.set_faults(answer_drop_rate=1.0, operations=["UpdateImageSetMetadata"])
    with pytest.raises(ConnectionClosedError):
        update(client, seeded[0])
    faulty.set_faults()
    assert settled(client, DS, seeded[0])["versionId"] == "2"


def test_reads_can_lag_a_write(faulty: Emulator, seeded: list[str]) -> None:
    client = boto3_client(faulty.url)
    faulty.set_faults(read_lag_ms=800, operations=["UpdateImageSetMetadata"])
    update(client, seeded[0])
    lagging = client.get_image_set(datastoreId=DS, imageSetId=seeded[0])
    exact = client.get_image_set(datastoreId=DS, imageSetId=seeded[0], versionId="2")
    assert (lagging["versionId"], exact["versionId"]) == ("1", "2")
    time.sleep(0.9)
    assert client.get_image_set(datastoreId=DS, imageSetId=seeded[0])["versionId"] == "2"
