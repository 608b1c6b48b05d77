"""Error edge: a domain error → the google.rpc Status the server sends (grpcio-status details).

Used only by server.py, the one place a ProxyError becomes a gRPC status. Every error carries an
ErrorInfo(reason, domain); some add a detail built from their plain fields.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import error_details_pb2, status_pb2

from service.core.errors import (
    InvalidArgument,
    NotCancellable,
    PermissionDenied,
    ProxyError,
    ResourceExhausted,
    WrongState,
    shorten,
)

ERROR_DOMAIN = "imaging-proxy"


def to_status(error: ProxyError) -> status_pb2.Status:
    """The google.rpc Status for `error`: its code, message and rich details."""
    code = grpc.StatusCode[error.status].value[0]
    # Bounded whatever built it: gRPC refuses trailers over 8 KB (the caller would see
    # RESOURCE_EXHAUSTED, a retryable code, instead of this one).
    message = shorten(error.message)
    return status_pb2.Status(code=code, message=message, details=details(error))


def details(error: ProxyError) -> list[any_pb2.Any]:
    """Rich error details (google.rpc.*) sent with the status."""
    match error:
        case InvalidArgument():
            return [_pack(_info(error)), _pack(_bad_request(error))]
        case PermissionDenied():
            metadata = {"decision_id": error.decision_id}
            metadata.update({f"reason_{i}": r for i, r in enumerate(error.reasons)})
            return [_pack(_info(error, metadata))]
        case NotCancellable() | WrongState():
            return [_pack(_info(error, {"state": error.state}))]
        case ResourceExhausted():
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
            return [_pack(_info(error)), _pack(error_details_pb2.RetryInfo(retry_delay=delay))]
        case _:
            return [_pack(_info(error))]


def _info(error: ProxyError, metadata: dict[str, str] | None = None) -> error_details_pb2.ErrorInfo:
    """ErrorInfo(reason, domain), with HealthImaging's error code whenever one is behind it."""
    metadata = dict(metadata or {})
    if error.aws_code:
        metadata["aws_error_code"] = error.aws_code
    return error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)


def _bad_request(error: InvalidArgument) -> error_details_pb2.BadRequest:
    """The violations as reported (bounded: see InvalidArgument), never all of them."""
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.reported
        ]
    )


def _pack(detail: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed
