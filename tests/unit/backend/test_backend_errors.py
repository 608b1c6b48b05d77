"""The backend edge: AWS error codes → domain errors naming their status (no gRPC involved)."""

from __future__ import annotations

import botocore.exceptions
import pytest

from service.errors import BackendRejected, ProxyError, ResourceExhausted
from service.healthimaging import THROTTLE_RETRY_SECONDS, _from_client_error


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
    if isinstance(error, BackendRejected):
        assert error.aws_code == aws_code
    if isinstance(error, ResourceExhausted):
        assert error.retry_after_seconds == THROTTLE_RETRY_SECONDS
