"""The lean path for UpdateImageSetMetadata and GetImageSet is botocore's path, on the wire.

For the same parameters, both paths must put the same signed HTTP request on the client's
HTTP session (captured there, time frozen for the signature), and against a real emulator
return the same parsed response or raise the same ClientError.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.exceptions
import pytest

from devstack.admin import EmulatorAdmin
from devstack.polling import eventually
from devstack.seeds import sample_path
from devstack.servers import EMULATOR_AWS_ENV, EmulatorProcess, start_emulator
from service.backend.healthimaging import HealthImaging
from service.backend.hot_calls import LeanOperation
from service.core.config import BackendSettings

FROZEN = datetime.datetime(2025, 3, 4, 5, 6, 7)
HEADERS = ("Authorization", "X-Amz-Date", "Content-Type", "Host", "X-Amz-Security-Token")
Call = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]


class Captured(Exception):
    """Raised instead of sending: the request was recorded."""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    seed = ["--seed", str(sample_path("CT_small.dcm")), "--seed", str(sample_path("MR_small.dcm"))]
    args = ["--no-quotas", "--non-primary", "--update-delay", "0.05", *seed]
    running = start_emulator(tmp_path_factory.mktemp("lean"), args)
    try:
        yield running
    finally:
        running.child.stop()


@pytest.fixture
async def backend(
    emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[HealthImaging]:
    for name, value in EMULATOR_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    admin = EmulatorAdmin(emulator.url)
    admin.clear_faults()
    for image_set_id in emulator.image_set_ids:
        with contextlib.suppress(Exception):  # already at version 1
            admin.admin("POST", "rewind", _ids(emulator, image_set_id))
    async with HealthImaging.open(BackendSettings(endpoint_url=emulator.url)) as opened:
        yield opened


def paths(backend: HealthImaging, operation: str) -> tuple[Call, Call]:
    """botocore's own path and the lean one, for one operation."""
    client = backend._client

    async def botocores(params: Mapping[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = await client._make_api_call(operation, dict(params))
        return response

    lean: LeanOperation | None = backend._lean[operation]
    assert lean is not None
    return botocores, lean.call


@contextlib.contextmanager
def captured(backend: HealthImaging) -> Iterator[list[Any]]:
    """Requests reaching the client's HTTP session (not sent), signed at a frozen time."""
    seen: list[Any] = []

    async def record(request: Any) -> None:
        seen.append(request)
        raise Captured

    session = backend._client._endpoint.http_session
    with (
        mock.patch.object(session, "send", record),
        mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN),
    ):
        yield seen


async def signed_requests(backend: HealthImaging, operation: str, params: Any) -> list[Any]:
    with captured(backend) as seen:
        for call in paths(backend, operation):
            with pytest.raises(Captured):
                await call(params)
    assert len(seen) == 2
    return seen


def wire(request: Any) -> dict[str, Any]:
    """What an AWS service reads from a request (the invocation id is random per call)."""
    headers = {k: v for k, v in request.headers.items() if k != "amz-sdk-invocation-id"}
    kept = {k: v for k, v in headers.items() if k in HEADERS or k.lower().startswith("x-amz")}
    return {
        "method": request.method,
        "url": request.url,
        "body": request.body,
        "headers": kept,
        "all_headers": headers,
        "invocation_id": "amz-sdk-invocation-id" in request.headers,
    }


def update_params(emulator: EmulatorProcess, image_set_id: str, **extra: Any) -> dict[str, Any]:
    attributes = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "LEAN^TEST"}}}
    updates = {"DICOMUpdates": {"updatableAttributes": json.dumps(attributes).encode()}}
    return {
        **_ids(emulator, image_set_id),
        "latestVersionId": "1",
        "updateImageSetMetadataUpdates": updates,
        **extra,
    }


def _ids(emulator: EmulatorProcess, image_set_id: str) -> dict[str, str]:
    return {"datastoreId": emulator.datastore_id, "imageSetId": image_set_id}


@pytest.mark.parametrize(
    "extra", [{}, {"force": True}, {"includeStudyImageSets": True}, {"force": False}]
)
async def test_update_is_signed_and_sent_as_botocore_does(
    backend: HealthImaging, emulator: EmulatorProcess, extra: dict[str, Any]
) -> None:
    params = update_params(emulator, emulator.image_set_ids[0], **extra)
    ours, lean = await signed_requests(backend, "UpdateImageSetMetadata", params)
    assert wire(lean) == wire(ours)
    assert "Signature=" in lean.headers["Authorization"].decode()


@pytest.mark.parametrize("extra", [{}, {"versionId": "1"}])
async def test_get_image_set_is_signed_and_sent_as_botocore_does(
    backend: HealthImaging, emulator: EmulatorProcess, extra: dict[str, Any]
) -> None:
    params = {**_ids(emulator, emulator.image_set_ids[1]), **extra}
    ours, lean = await signed_requests(backend, "GetImageSet", params)
    assert wire(lean) == wire(ours)


async def test_session_credentials_are_signed_in_as_botocore_does(
    backend: HealthImaging, emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = backend._client._request_signer._credentials
    monkeypatch.setattr(credentials, "token", "SESSION-TOKEN", raising=False)
    params = _ids(emulator, emulator.image_set_ids[1])
    ours, lean = await signed_requests(backend, "GetImageSet", params)
    assert lean.headers["X-Amz-Security-Token"] == b"SESSION-TOKEN"
    assert wire(lean) == wire(ours)


def steady(response: dict[str, Any]) -> dict[str, Any]:
    """A response without what changes from call to call (times, request ids, date, and the
    length, which follows the times' digits)."""
    volatile = {"lastAccessedAt", "createdAt", "updatedAt"}
    kept = {k: v for k, v in response.items() if k not in volatile}
    metadata = dict(kept.pop("ResponseMetadata"))
    changing = {"date", "content-length"}
    metadata["HTTPHeaders"] = {
        k: v for k, v in metadata["HTTPHeaders"].items() if k not in changing
    }
    metadata.pop("RequestId", None)
    return {**kept, "ResponseMetadata": metadata, "times": sorted(volatile & response.keys())}


async def test_get_image_set_parses_as_botocore_does(
    backend: HealthImaging, emulator: EmulatorProcess
) -> None:
    ours, lean = paths(backend, "GetImageSet")
    params = _ids(emulator, emulator.image_set_ids[1])
    assert steady(await lean(params)) == steady(await ours(params))


async def test_update_parses_as_botocore_does(
    backend: HealthImaging, emulator: EmulatorProcess
) -> None:
    admin = EmulatorAdmin(emulator.url)
    image_set_id = emulator.image_set_ids[0]
    answers = []
    for call in paths(backend, "UpdateImageSetMetadata"):
        answers.append(steady(await call(update_params(emulator, image_set_id))))
        await eventually(lambda: _rewind(admin, emulator, image_set_id))
    assert answers[0] == answers[1]
    assert answers[0]["imageSetState"] == "LOCKED"


async def _rewind(admin: EmulatorAdmin, emulator: EmulatorProcess, image_set_id: str) -> None:
    try:
        admin.admin("POST", "rewind", _ids(emulator, image_set_id))
    except OSError as exc:  # 409 while the update is still LOCKED
        raise AssertionError("still LOCKED") from exc


async def client_errors(
    backend: HealthImaging, operation: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The ClientError each path raises, as `_translate_errors` sees it."""
    raised = []
    for call in paths(backend, operation):
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            await call(params)
        raised.append(caught.value)
    assert type(raised[0]) is type(raised[1])
    assert raised[0].operation_name == raised[1].operation_name
    return [steady_error(error.response) for error in raised]


def steady_error(response: Mapping[str, Any]) -> dict[str, Any]:
    metadata = dict(response["ResponseMetadata"])
    metadata["HTTPHeaders"] = {k: v for k, v in metadata["HTTPHeaders"].items() if k != "date"}
    metadata.pop("RequestId", None)
    return {**response, "ResponseMetadata": metadata}


@pytest.mark.parametrize(
    ("operation", "change", "code"),
    [
        ("GetImageSet", {"imageSetId": "0" * 32}, "ResourceNotFoundException"),
        ("UpdateImageSetMetadata", {"latestVersionId": "7"}, "ConflictException"),
        ("GetImageSet", {"versionId": "not-a-version"}, "ValidationException"),
    ],
)
async def test_errors_are_the_same_client_error(
    backend: HealthImaging,
    emulator: EmulatorProcess,
    operation: str,
    change: dict[str, str],
    code: str,
) -> None:
    params = {**update_params(emulator, emulator.image_set_ids[0]), **change}
    if operation == "GetImageSet":
        params = {k: v for k, v in params.items() if k in {"datastoreId", "imageSetId", *change}}
    ours, lean = await client_errors(backend, operation, params)
    assert lean == ours
    assert lean["Error"]["Code"] == code


@pytest.mark.parametrize("operation", ["GetImageSet", "UpdateImageSetMetadata"])
async def test_a_throttled_call_is_the_same_client_error(
    backend: HealthImaging, emulator: EmulatorProcess, operation: str
) -> None:
    EmulatorAdmin(emulator.url).set_faults({"throttle_rate": 1.0})
    params = update_params(emulator, emulator.image_set_ids[0])
    if operation == "GetImageSet":
        params = _ids(emulator, emulator.image_set_ids[0])
    ours, lean = await client_errors(backend, operation, params)
    assert lean == ours
    assert lean["Error"]["Code"] == "ThrottlingException"
    assert lean["ResponseMetadata"]["HTTPStatusCode"] == 429


async def test_connection_failures_are_the_same_botocore_errors(
    backend: HealthImaging, emulator: EmulatorProcess
) -> None:
    EmulatorAdmin(emulator.url).set_faults({"drop_rate": 1.0})
    raised = []
    for call in paths(backend, "GetImageSet"):
        with pytest.raises(botocore.exceptions.BotoCoreError) as caught:
            await call(_ids(emulator, emulator.image_set_ids[1]))
        raised.append(caught.value)
    assert type(raised[0]) is type(raised[1])
    assert isinstance(
        raised[1], botocore.exceptions.HTTPClientError | botocore.exceptions.ConnectionError
    )


async def test_an_unreachable_endpoint_is_the_same_botocore_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in EMULATOR_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = BackendSettings(endpoint_url="http://127.0.0.1:9", connect_timeout_seconds=1)
    async with HealthImaging.open(settings) as backend:
        raised = []
        for call in paths(backend, "GetImageSet"):
            with pytest.raises(botocore.exceptions.EndpointConnectionError) as caught:
                await call({"datastoreId": "a" * 32, "imageSetId": "b" * 32})
            raised.append(str(caught.value))
    assert raised[0] == raised[1]


async def test_on_aws_itself_the_runtime_host_prefix_is_signed_as_botocore_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in EMULATOR_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    async with HealthImaging.open(BackendSettings(region="eu-west-1")) as backend:
        params = {"datastoreId": "a" * 32, "imageSetId": "b" * 32}
        ours, lean = await signed_requests(backend, "GetImageSet", params)
    assert wire(lean) == wire(ours)
    assert lean.url.startswith("https://runtime-medical-imaging.eu-west-1.amazonaws.com/")
