"""Domain errors: one tree, each class carrying the gRPC status it becomes.

    ProxyError                      (code)
    ├── InvalidArgument             INVALID_ARGUMENT  + BadRequest field violations
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED + ErrorInfo(reason, decision id, reasons)
    ├── NotFound                    NOT_FOUND
    ├── Aborted                     ABORTED           (stale version, locked image set)
    ├── ResourceExhausted           RESOURCE_EXHAUSTED + RetryInfo
    ├── Unavailable                 UNAVAILABLE       (OPA or HealthImaging cannot answer)
    │   └── PolicyUnavailable       (no usable decision: fail closed)
    ├── DeadlineExceeded            DEADLINE_EXCEEDED
    ├── BackendRejected             FAILED_PRECONDITION (HealthImaging refused the request)
    └── Internal                    INTERNAL

Foreign errors are translated at their edges (healthimaging.py, policy.py); exactly one
wrapper in server.py turns a ProxyError into a gRPC status. Messages never carry attribute
values: they are patient data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "imaging-proxy"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: a dotted path into the request and what is wrong with it."""

    field: str
    description: str


class ProxyError(Exception):
    """Base of every error the proxy reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        """Rich error details (google.rpc.*) sent with the status."""
        return [_pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN))]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=self.code.value[0], message=self.message, details=self.details()
        )


class InvalidArgument(ProxyError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        more = len(self.violations) - 5
        super().__init__(summary + (f" (and {more} more)" if more > 0 else ""))

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        return [*super().details(), _pack(bad_request)]


def invalid(field: str, description: str) -> InvalidArgument:
    """Shorthand for a single field violation."""
    return InvalidArgument([FieldViolation(field, description)])


class Unauthenticated(ProxyError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(ProxyError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "POLICY_DENIED"

    def __init__(self, message: str, decision_id: str = "", reasons: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.decision_id = decision_id
        self.reasons = tuple(reasons)

    def details(self) -> list[any_pb2.Any]:
        metadata = {"decision_id": self.decision_id}
        metadata.update({f"reason_{i}": r for i, r in enumerate(self.reasons)})
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata
        )
        return [_pack(info)]


class NotFound(ProxyError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class Aborted(ProxyError):
    code = grpc.StatusCode.ABORTED
    reason = "CONFLICT"

    def __init__(self, message: str, reason: str = "CONFLICT") -> None:
        super().__init__(message)
        self.reason = reason


class ResourceExhausted(ProxyError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_seconds: float, reason: str = "") -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        if reason:
            self.reason = reason

    def details(self) -> list[any_pb2.Any]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_seconds * 1e9))
        return [*super().details(), _pack(error_details_pb2.RetryInfo(retry_delay=delay))]


class Unavailable(ProxyError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "BACKEND_UNAVAILABLE"


class PolicyUnavailable(Unavailable):
    reason = "POLICY_UNAVAILABLE"


class DeadlineExceeded(ProxyError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class BackendRejected(ProxyError):
    """HealthImaging refused the request (validation, quota, state)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "BACKEND_REJECTED"

    def __init__(self, message: str, aws_code: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.aws_code = aws_code
        if code is not None:
            self.code = code

    def details(self) -> list[any_pb2.Any]:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata={"aws_error_code": self.aws_code}
        )
        return [_pack(info)]


class Internal(ProxyError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
