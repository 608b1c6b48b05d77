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
    """Field violations, reported bounded: the first few (each shortened) and "and N more".

    gRPC refuses trailers over 8 KB (the caller would see RESOURCE_EXHAUSTED, "Stream removed");
    the BadRequest detail stays under DETAIL_BUDGET bytes before base64, and the message under
    MESSAGE_BUDGET characters, however many violations a document has.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], total: int = 0) -> None:
        self.violations = tuple(violations)
        self.total = max(total, len(self.violations))
        shown = _bounded(self.violations)
        if self.total > len(shown):
            shown += (FieldViolation("", f"and {self.total - len(shown)} more not shown"),)
        self.reported = shown  # what the caller receives
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations[:5])
        more = self.total - min(5, len(self.violations))
        message = summary + (f" (and {more} more)" if more > 0 else "")
        super().__init__(_shorten(message, MESSAGE_BUDGET))

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.reported
            ]
        )
        return [*super().details(), _pack(bad_request)]


MAX_REPORTED_VIOLATIONS = 20
MAX_FIELD_CHARS = 200
MAX_DESCRIPTION_CHARS = 300
DETAIL_BUDGET = 3072  # bytes of BadRequest; base64 in the trailer makes it 4 KB at most
MESSAGE_BUDGET = 768


def _bounded(violations: Sequence[FieldViolation]) -> tuple[FieldViolation, ...]:
    """The first violations that fit the byte budget, each shortened."""
    kept: list[FieldViolation] = []
    used = 64  # room for the "and N more" entry and the protobuf framing
    for violation in violations[:MAX_REPORTED_VIOLATIONS]:
        short = FieldViolation(
            _shorten(violation.field, MAX_FIELD_CHARS),
            _shorten(violation.description, MAX_DESCRIPTION_CHARS),
        )
        size = len(short.field.encode()) + len(short.description.encode()) + 8
        if used + size > DETAIL_BUDGET:
            break
        kept.append(short)
        used += size
    return tuple(kept)


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters; the middle gives way (a path's attribute is at its end)."""
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]


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
