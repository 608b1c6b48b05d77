"""Backend stage: one long-lived aioboto3 client; AWS errors become domain errors here."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import aioboto3
import aiohttp
import botocore.exceptions
import structlog
import wrapt  # type: ignore[import-untyped]  # aiobotocore's dependency
from aiobotocore.client import AioBaseClient
from aiobotocore.config import AioConfig
from botocore.utils import parse_timestamp

import medical_imaging_model
from service.backend.hot_calls import LeanOperation, Unsupported
from service.core.config import BackendSettings
from service.core.errors import (
    Aborted,
    BackendRejected,
    NoCredentials,
    NotFound,
    ProxyError,
    ResourceExhausted,
    StatusName,
    Unavailable,
)
from service.core.model import ImageSetStatus, UpdatePlan

# botocore data path holding a newer medical-imaging model (it adds includeStudyImageSets) than
# the botocore release aioboto3 pins; botocore prefers the first search path that has the model.

log = structlog.get_logger(__name__)
NO_CREDENTIALS = (
    "no AWS credentials: the proxy found none in its environment, profile or instance role "
    "(set them, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for an emulator, and restart)"
)


class HealthImaging:
    """The calls the proxy makes to HealthImaging."""

    def __init__(
        self, client: Any, has_credentials: bool = True, longest_call_seconds: float = 35.0
    ) -> None:
        self._client = client
        self.longest_call_seconds = longest_call_seconds
        """How long after it is sent one call may still reach HealthImaging (one attempt:
        botocore's connect timeout plus its read timeout)."""
        self.has_credentials = has_credentials
        """Whether botocore's credential chain found credentials at start-up."""
        # The two calls made per update and poll skip botocore's per-call machinery.
        self._lean = {name: _lean(client, name) for name in _LEAN_OPERATIONS}

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: BackendSettings) -> AsyncIterator[HealthImaging]:
        session = aioboto3.Session(region_name=settings.region)
        medical_imaging_model.install(session._session)
        parsers = session._session.get_component("response_parser_factory")
        parsers.set_parser_defaults(timestamp_parser=parse_epoch_first)
        config = AioConfig(
            # Writes are never retried blindly: a lost response plus a retry is a second update
            # or a ConflictException. Reads are retried by the poll loop itself.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=settings.max_pool_connections,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            # Image-set operations carry a `runtime-` host prefix that breaks custom endpoints.
            inject_host_prefix=not settings.endpoint_url,
        )
        endpoint = settings.endpoint_url or None
        has_credentials = await _find_credentials(session)
        async with session.client(
            "medical-imaging", endpoint_url=endpoint, config=config
        ) as client:
            longest = settings.connect_timeout_seconds + settings.read_timeout_seconds
            yield cls(client, has_credentials, longest)

    async def update(self, plan: UpdatePlan) -> ImageSetStatus:
        """Submit the update exactly as classified; returns the new (LOCKED) version."""
        params: dict[str, Any] = {
            "datastoreId": plan.datastore_id,
            "imageSetId": plan.image_set_id,
            "latestVersionId": plan.latest_version_id,
            "updateImageSetMetadataUpdates": _updates_member(plan),
        }
        if plan.force:
            params["force"] = True
        if plan.include_study_image_sets:
            params["includeStudyImageSets"] = True
        with _translate_errors():
            response = await self._call("UpdateImageSetMetadata", params)
        return _status(response, "latestVersionId")

    async def get_image_set(
        self, datastore_id: str, image_set_id: str, version_id: str = ""
    ) -> ImageSetStatus:
        params = {"datastoreId": datastore_id, "imageSetId": image_set_id}
        if version_id:
            params["versionId"] = version_id
        with _translate_errors():
            response = await self._call("GetImageSet", params)
        return _status(response, "versionId")

    async def _call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        lean = self._lean[operation]
        if lean is None or _traced():
            response: dict[str, Any] = await self._client._make_api_call(operation, dict(params))
            return response
        return await lean.call(params)

    async def image_set_metadata(
        self, datastore_id: str, image_set_id: str, version_id: str = ""
    ) -> bytes:
        """A version's metadata document (the latest by default), as sent (gzip-compressed JSON)."""
        params = {"datastoreId": datastore_id, "imageSetId": image_set_id}
        if version_id:
            params["versionId"] = version_id
        with _translate_errors():
            response = await self._client.get_image_set_metadata(**params)
            async with response["imageSetMetadataBlob"] as blob:
                raw: bytes = await blob.read()
        return raw


_LEAN_OPERATIONS = ("UpdateImageSetMetadata", "GetImageSet")
"""The calls made per update and per poll: they skip botocore's per-call machinery."""


def _lean(client: Any, operation: str) -> LeanOperation | None:
    try:
        return LeanOperation(client, operation)
    except Unsupported as exc:  # e.g. retries configured: every call takes botocore's path
        log.warning("lean_call_unsupported", operation=operation, reason=str(exc))
        return None


def _traced() -> bool:
    """Whether tracing's instrumentation wraps the client's `_make_api_call`: then every call
    goes through it, so each HealthImaging call keeps its botocore span."""
    return isinstance(inspect.getattr_static(AioBaseClient, "_make_api_call"), wrapt.ObjectProxy)


async def _find_credentials(session: aioboto3.Session) -> bool:
    """Walk botocore's credential chain once at start-up (an emulator needs them too: requests
    are signed before they are sent), so their absence shows in health, not as a first failure."""
    try:
        found = await session.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:  # e.g. a half-configured profile
        log.warning("aws_credentials_unusable", error=type(exc).__name__)
        return False
    if found is None:
        log.warning("aws_credentials_missing", hint=NO_CREDENTIALS)
    return found is not None


class CredentialsProbe:
    """Health name "aws-credentials": whether credentials were found at start-up."""

    def __init__(self, backend: HealthImaging) -> None:
        self._backend = backend

    async def answers(self) -> bool:
        return self._backend.has_credentials


class BackendProbe:
    """Whether HealthImaging's endpoint answers HTTP at all: no API call, so no quota is spent.

    Readiness information only (every replica shares HealthImaging, so its outage is reported,
    not acted on); any HTTP answer, even an error status, proves the endpoint reachable."""

    TIMEOUT_SECONDS = 2.0

    def __init__(self, session: aiohttp.ClientSession, settings: BackendSettings) -> None:
        self._session = session
        self._url = (
            settings.endpoint_url or f"https://medical-imaging.{settings.region}.amazonaws.com"
        )
        self._timeout = aiohttp.ClientTimeout(total=self.TIMEOUT_SECONDS)

    async def answers(self) -> bool:
        try:
            async with self._session.get(self._url, timeout=self._timeout):
                return True
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False


def _updates_member(plan: UpdatePlan) -> dict[str, Any]:
    if plan.kind == "revert":
        return {"revertToVersionId": plan.revert_to_version_id}
    blobs = {
        "updatableAttributes": plan.updatable_attributes,
        "removableAttributes": plan.removable_attributes,
    }
    return {"DICOMUpdates": {k: v for k, v in blobs.items() if v is not None}}


def _status(response: Mapping[str, Any], version_key: str) -> ImageSetStatus:
    return ImageSetStatus(
        datastore_id=response["datastoreId"],
        image_set_id=response["imageSetId"],
        version_id=response[version_key],
        state=response["imageSetState"],
        workflow_status=response.get("imageSetWorkflowStatus", ""),
        created_at=_epoch(response.get("createdAt")),
        updated_at=_epoch(response.get("updatedAt")),
        message=response.get("message", ""),
    )


def parse_epoch_first(value: Any) -> datetime:
    """botocore's timestamp parser, minus its new time-zone objects for every epoch number (the
    form HealthImaging's JSON answers carry, two per call): the same instant, in UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return parse_timestamp(value)


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


_CODE_TO_ERROR: Mapping[str, tuple[type[ProxyError], StatusName | None]] = {
    "ConflictException": (Aborted, None),
    "ResourceNotFoundException": (NotFound, None),
    "ValidationException": (BackendRejected, "INVALID_ARGUMENT"),
    "AccessDeniedException": (BackendRejected, "PERMISSION_DENIED"),
    "ThrottlingException": (ResourceExhausted, None),
    "ServiceQuotaExceededException": (ResourceExhausted, None),
    "InternalServerException": (Unavailable, None),
}

THROTTLE_RETRY_SECONDS = 4.0


@contextmanager
def _translate_errors() -> Iterator[None]:
    """The one place aioboto3/botocore errors become domain errors."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        raise _from_client_error(exc) from exc
    except (
        botocore.exceptions.NoCredentialsError,
        botocore.exceptions.PartialCredentialsError,
        botocore.exceptions.CredentialRetrievalError,
    ) as exc:
        # Raised before anything is sent: the update was not applied.
        raise NoCredentials(f"{NO_CREDENTIALS}; nothing was sent to HealthImaging") from exc
    except (botocore.exceptions.ReadTimeoutError, TimeoutError) as exc:
        raise Unavailable("HealthImaging did not answer in time") from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        # Refused, reset or closed mid-response: for a write, it may or may not have landed.
        raise Unavailable(f"HealthImaging unreachable: {type(exc).__name__}") from exc


def _from_client_error(exc: botocore.exceptions.ClientError) -> ProxyError:
    code = exc.response.get("Error", {}).get("Code", "Unknown")
    message = f"HealthImaging {code}: {exc.response.get('Error', {}).get('Message', '')}".strip()
    # The code travels on (aws_error_code): the CLI prints it as `aws` does.
    return _domain_error(code, message)


def _domain_error(code: str, message: str) -> ProxyError:
    error_class, status = _CODE_TO_ERROR.get(code, (Unavailable, None))
    if error_class is ResourceExhausted:
        return ResourceExhausted(
            message, THROTTLE_RETRY_SECONDS, reason="BACKEND_THROTTLED", aws_code=code
        )
    if error_class is BackendRejected:
        return BackendRejected(message, code, status)
    if error_class is Aborted:
        return Aborted(message, reason="BACKEND_CONFLICT", aws_code=code)
    return error_class(message, aws_code=code)
