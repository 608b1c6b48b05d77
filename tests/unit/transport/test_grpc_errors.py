"""The error edge: every domain error → its gRPC code and rich details, pinned (no server)."""

from __future__ import annotations

from typing import get_args

import grpc
import pytest
from google.protobuf import duration_pb2, message
from google.rpc import status_pb2
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from grpc_status import rpc_status

from service.admission.write_queue import Draining
from service.core import errors
from service.core.errors import FieldViolation, ProxyError, StatusName, status_named
from service.core.model import RecordedError
from service.journal import UnreadableRecord
from service.journal.redis_client import RedisUnavailable
from service.operations.events import RecordedFailure
from service.transport.grpc_errors import ERROR_DOMAIN, to_status


def info(reason: str, **metadata: str) -> ErrorInfo:
    return ErrorInfo(reason=reason, domain="imaging-proxy", metadata=metadata)


def retry(seconds: int, nanos: int = 0) -> RetryInfo:
    return RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))


def bad_request(*violations: tuple[str, str]) -> BadRequest:
    return BadRequest(
        field_violations=[BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    )


# (error, code, details): the wire format callers and the CLI parse.
WIRE: list[tuple[ProxyError, grpc.StatusCode, list[message.Message]]] = [
    (
        errors.invalid("latest_version_id", "must be a version number (digits)"),
        grpc.StatusCode.INVALID_ARGUMENT,
        [
            info("INVALID_ARGUMENT"),
            bad_request(("latest_version_id", "must be a version number (digits)")),
        ],
    ),
    (
        errors.InvalidArgument([FieldViolation("a", "x"), FieldViolation("b", "y")], total=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        [
            info("INVALID_ARGUMENT"),
            bad_request(("a", "x"), ("b", "y"), ("", "and 3 more not shown")),
        ],
    ),
    (
        errors.Unauthenticated("no identity"),
        grpc.StatusCode.UNAUTHENTICATED,
        [info("UNAUTHENTICATED")],
    ),
    (
        errors.PermissionDenied("denied", "dec-42", ["needs admin", "private tag"]),
        grpc.StatusCode.PERMISSION_DENIED,
        [
            info(
                "POLICY_DENIED",
                decision_id="dec-42",
                reason_0="needs admin",
                reason_1="private tag",
            )
        ],
    ),
    (
        errors.PermissionDenied("busy", reasons=["x"]),
        grpc.StatusCode.PERMISSION_DENIED,
        [info("POLICY_DENIED", decision_id="", reason_0="x")],
    ),
    (errors.NotFound("no such image set"), grpc.StatusCode.NOT_FOUND, [info("NOT_FOUND")]),
    (errors.Aborted("stale"), grpc.StatusCode.ABORTED, [info("CONFLICT")]),
    (
        errors.NotCancellable("op-1", "submitted"),
        grpc.StatusCode.FAILED_PRECONDITION,
        [info("NOT_CANCELLABLE", state="submitted")],
    ),
    (
        errors.WrongState("not awaiting", "NOT_AWAITING_APPROVAL", "queued"),
        grpc.StatusCode.FAILED_PRECONDITION,
        [info("NOT_AWAITING_APPROVAL", state="queued")],
    ),
    (
        errors.Aborted("locked", "BACKEND_CONFLICT"),
        grpc.StatusCode.ABORTED,
        [info("BACKEND_CONFLICT")],
    ),
    (
        errors.ResourceExhausted("Rate exceeded", 4.0),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        [info("RESOURCE_EXHAUSTED"), retry(4)],
    ),
    (
        errors.ResourceExhausted("busy", 1.5, reason="PRINCIPAL_BUSY"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        [info("PRINCIPAL_BUSY"), retry(1, 500_000_000)],
    ),
    (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE, [info("BACKEND_UNAVAILABLE")]),
    (errors.PolicyUnavailable("no"), grpc.StatusCode.UNAVAILABLE, [info("POLICY_UNAVAILABLE")]),
    (
        errors.NoCredentials("no AWS credentials"),
        grpc.StatusCode.UNAVAILABLE,
        [info("AWS_CREDENTIALS_MISSING")],
    ),
    (Draining("bye"), grpc.StatusCode.UNAVAILABLE, [info("PROXY_SHUTTING_DOWN")]),
    (
        RedisUnavailable("journal: Redis unavailable (ConnectionError)"),
        grpc.StatusCode.UNAVAILABLE,
        [info("REDIS_UNAVAILABLE")],
    ),
    (errors.JournalLost("op-1"), grpc.StatusCode.UNAVAILABLE, [info("JOURNAL_LOST")]),
    (
        errors.OperationMoved("re-attach with WatchUpdate('op-1')"),
        grpc.StatusCode.UNAVAILABLE,
        [info("OPERATION_MOVED")],
    ),
    (
        errors.DeadlineExceeded("late"),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        [info("DEADLINE_EXCEEDED")],
    ),
    (
        errors.BackendRejected("HealthImaging X", "SomeException"),
        grpc.StatusCode.FAILED_PRECONDITION,
        [info("BACKEND_REJECTED", aws_error_code="SomeException")],
    ),
    (
        errors.BackendRejected("HealthImaging V", "ValidationException", "INVALID_ARGUMENT"),
        grpc.StatusCode.INVALID_ARGUMENT,
        [info("BACKEND_REJECTED", aws_error_code="ValidationException")],
    ),
    (errors.Internal("internal error (KeyError)"), grpc.StatusCode.INTERNAL, [info("INTERNAL")]),
    (
        UnreadableRecord("cannot open"),
        grpc.StatusCode.INTERNAL,
        [info("JOURNAL_RECORD_UNREADABLE")],
    ),
    (
        RecordedFailure(RecordedError("PERMISSION_DENIED", "POLICY_DENIED", "denied")),
        grpc.StatusCode.PERMISSION_DENIED,
        [info("POLICY_DENIED")],  # told again from its record: code, reason, message
    ),
    (
        RecordedFailure(RecordedError("ABORTED", "BACKEND_CONFLICT", "stale", 0.0, "X")),
        grpc.StatusCode.ABORTED,
        [info("BACKEND_CONFLICT", aws_error_code="X")],  # and HealthImaging's code
    ),
]


@pytest.mark.parametrize(
    ("error", "code", "expected"), WIRE, ids=[f"{type(e).__name__}-{e.reason}" for e, _, _ in WIRE]
)
def test_a_domain_error_becomes_its_code_and_details(
    error: ProxyError, code: grpc.StatusCode, expected: list[message.Message]
) -> None:
    status = to_status(error)
    assert (status.code, status.message) == (code.value[0], error.message)
    assert len(status.details) == len(expected)
    for packed, detail in zip(status.details, expected, strict=True):
        unpacked = type(detail)()
        assert packed.Unpack(unpacked), f"{type(detail).__name__} expected"
        assert unpacked == detail


def test_the_status_goes_on_the_wire_as_grpcio_status_reads_it() -> None:
    denied = errors.PermissionDenied("denied", "dec-1", ["needs admin"])
    sent = rpc_status.to_status(to_status(denied))
    assert sent.code == grpc.StatusCode.PERMISSION_DENIED
    (key, value), *_ = sent.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert status_pb2.Status.FromString(value) == to_status(denied)


def _subclasses(cls: type[ProxyError]) -> set[type[ProxyError]]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def test_every_error_class_has_its_wire_format_pinned() -> None:
    pinned = {type(error) for error, _, _ in WIRE}
    assert _subclasses(ProxyError) - pinned == set()


def test_status_names_are_grpc_status_codes_but_ok() -> None:
    assert set(get_args(StatusName)) == {c.name for c in grpc.StatusCode} - {"OK"}
    assert ERROR_DOMAIN == "imaging-proxy"


def test_a_recorded_status_name_is_checked() -> None:
    assert status_named("ABORTED") == "ABORTED"
    with pytest.raises(ValueError, match="not a gRPC status name"):
        status_named("aborted")
    with pytest.raises(ValueError, match="not a gRPC status name"):
        status_named("OK")
