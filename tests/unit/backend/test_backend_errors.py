"""The backend edge: AWS error codes → domain errors naming their status (no gRPC involved)."""

from __future__ import annotations

import botocore.exceptions
import pytest
from google.rpc.error_details_pb2 import ErrorInfo

from service.backend.healthimaging import (
    THROTTLE_RETRY_SECONDS,
    _from_client_error,
    _translate_errors,
)
from service.core.errors import NoCredentials, ProxyError, ResourceExhausted
from service.operations.events import error_from, record_error
from service.transport.grpc_errors import to_status


def client_error(code: str) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": "refused"}}
    return botocore.exceptions.ClientError(response, "UpdateImageSetMetadata")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("aws_code", "status", "reason"),
    [
        ("ConflictException", "ABORTED", "BACKEND_CONFLICT"),
        ("ResourceNotFoundException", "NOT_FOUND", "NOT_FOUND"),
        ("ValidationException", "INVALID_ARGUMENT", "BACKEND_REJECTED"),
        ("AccessDeniedException", "PERMISSION_DENIED", "BACKEND_REJECTED"),
        ("ThrottlingException", "RESOURCE_EXHAUSTED", "BACKEND_THROTTLED"),
        ("ServiceQuotaExceededException", "RESOURCE_EXHAUSTED", "BACKEND_THROTTLED"),
        ("InternalServerException", "UNAVAILABLE", "BACKEND_UNAVAILABLE"),
        ("SomethingNew", "UNAVAILABLE", "BACKEND_UNAVAILABLE"),
    ],
)
def test_an_aws_error_names_its_status(aws_code: str, status: str, reason: str) -> None:
    error: ProxyError = _from_client_error(client_error(aws_code))
    assert (error.status, error.reason) == (status, reason)
    assert error.message == f"HealthImaging {aws_code}: refused"
    assert error.aws_code == aws_code
    if isinstance(error, ResourceExhausted):
        assert error.retry_after_seconds == THROTTLE_RETRY_SECONDS


@pytest.mark.parametrize("aws_code", ["ConflictException", "ThrottlingException", "Other"])
def test_the_aws_code_reaches_the_status_details_also_when_replayed(aws_code: str) -> None:
    error = _from_client_error(client_error(aws_code))
    for told in (error, error_from(record_error(error))):  # live, then from the journal
        (packed,) = [d for d in to_status(told).details if d.type_url.endswith("ErrorInfo")]
        info = ErrorInfo()
        packed.Unpack(info)
        assert info.metadata["aws_error_code"] == aws_code


@pytest.mark.parametrize(
    "exc",
    [
        botocore.exceptions.NoCredentialsError(),
        botocore.exceptions.PartialCredentialsError(provider="env", cred_var="secret"),
    ],
)
def test_missing_credentials_are_unavailable_with_a_clear_message(exc: Exception) -> None:
    with pytest.raises(NoCredentials) as caught, _translate_errors():
        raise exc
    assert caught.value.status == "UNAVAILABLE"
    assert caught.value.message.startswith("no AWS credentials")
