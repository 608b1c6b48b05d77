"""The client library's errors: a gRPC status and its rich details as plain Python values.

    ClientError             anything the client gives up on
    ├── TransportError      the proxy unreachable, silent, or gone mid-stream (`kind` says which)
    ├── DeadlineExceeded    the caller's total time bound passed (`operation_id` to re-attach)
    └── RpcError            the proxy answered with a status (code, reason, HealthImaging code)
        └── PolicyDenied    the policy said no (`reasons`, `decision_id`)

Messages never carry attribute values: the proxy sends none, and none are added here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

POLICY_DENIED_REASON = "POLICY_DENIED"
TransportKind = Literal["unreachable", "connect-timeout", "read-timeout", "closed"]
_TRANSPORT_WORDS: dict[TransportKind, str] = {
    "unreachable": "could not connect to the proxy",
    "connect-timeout": "connect timeout",
    "read-timeout": "read timeout: the proxy went silent",
    "closed": "the proxy closed the stream before the update finished",
}


HandshakeFailure = Literal["unknown-ca", "server-name", "not-tls", "closed-at-connect", ""]
_HANDSHAKE_WORDS: tuple[tuple[str, HandshakeFailure], ...] = (
    ("CERTIFICATE_VERIFY_FAILED", "unknown-ca"),
    ("Hostname Verification Check failed", "server-name"),
    ("WRONG_VERSION_NUMBER", "not-tls"),
    ("Socket closed", "closed-at-connect"),
)
"""gRPC core's words for a failed connection (grpcio 1.8x), and what they mean. The server
closing the socket during the handshake is all a client sees of a missing or refused client
certificate, and of plaintext sent to a TLS port."""
DEFINITE_HANDSHAKE_FAILURES: frozenset[HandshakeFailure] = frozenset(
    {"unknown-ca", "server-name", "not-tls"}
)
"""Failures a retry cannot mend."""


def handshake_failure(detail: str) -> HandshakeFailure:
    """Which connection failure gRPC's `detail` describes ("" when none of these)."""
    if "failed to connect" not in detail:
        return ""
    return next((kind for words, kind in _HANDSHAKE_WORDS if words in detail), "")


@dataclass(frozen=True)
class FieldViolation:
    """One google.rpc.BadRequest field violation: where in the request, and what is wrong."""

    field: str
    description: str


class ClientError(Exception):
    """Base of the library's errors."""

    gave_up_after: float | None = None
    """Seconds spent retrying without progress when the retry bound ended the call, else None."""


class TransportError(ClientError):
    """The proxy could not be reached, went silent, or closed the stream early."""

    def __init__(
        self,
        kind: TransportKind,
        target: str,
        status: grpc.StatusCode | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(f"{_TRANSPORT_WORDS[kind]} ({target})")
        self.kind: TransportKind = kind
        self.target = target
        self.status = status
        """The gRPC status when the failure came as one (UNAVAILABLE without details)."""
        self.detail = detail
        """gRPC's own words (e.g. "Socket closed"), when it gave some."""
        self.handshake: HandshakeFailure = handshake_failure(detail)
        """How connecting failed, when gRPC's words say (TLS trouble, mostly)."""


class DeadlineExceeded(ClientError):
    """The call's total time bound passed; the update may still go on in the proxy."""

    def __init__(self, seconds: float, operation_id: str) -> None:
        where = f"; re-attach with watch({operation_id!r})" if operation_id else ""
        super().__init__(f"no result within {seconds:g}s{where}")
        self.operation_id = operation_id


class RpcError(ClientError):
    """The proxy (or HealthImaging behind it) answered with an error status."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        info: error_details_pb2.ErrorInfo | None = None,
        violations: tuple[FieldViolation, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        self.reason = info.reason if info is not None else ""
        """The proxy's ErrorInfo reason (e.g. POLICY_DENIED, CONFLICT)."""
        self.domain = info.domain if info is not None else ""
        metadata: dict[str, str] = dict(info.metadata) if info is not None else {}
        self.aws_error_code = metadata.get("aws_error_code", "")
        """HealthImaging's own error code (e.g. ConflictException) when one is behind the status."""
        self.decision_id = metadata.get("decision_id", "")
        self.reasons = _reasons(metadata)
        """The policy's reasons, in the policy's order."""
        self.violations = violations
        self.retry_after = retry_after


class UpdateCancelled(ClientError):
    """The update was cancelled (CancelUpdate) before it was submitted: nothing was written."""

    def __init__(self, operation_id: str, cancelled_by: str) -> None:
        super().__init__(f"operation {operation_id} was cancelled by {cancelled_by}")
        self.operation_id = operation_id
        self.cancelled_by = cancelled_by


class UpdateNotApproved(ClientError):
    """The update awaited approval and was rejected (`rejected_by`), or nobody approved it in
    time (`rejected_by` empty): nothing was written."""

    def __init__(self, operation_id: str, rejected_by: str) -> None:
        said = f"rejected by {rejected_by}" if rejected_by else "not approved in time"
        super().__init__(f"operation {operation_id} was {said}; nothing was written")
        self.operation_id = operation_id
        self.rejected_by = rejected_by


class PolicyDenied(RpcError):
    """The policy denied the update; `reasons` and `decision_id` say why and where to look."""


def from_rpc_error(err: grpc.aio.AioRpcError, target: str) -> ClientError:
    """A failed call as the library's error; a status without details is the transport's."""
    status = rich_status(err)
    code = err.code()
    if status is None and code is grpc.StatusCode.UNAVAILABLE:
        return TransportError("unreachable", target, code, err.details() or "")
    if status is None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransportError("read-timeout", target, code, err.details() or "")
    info, bad_request, retry = details(status)
    violations = tuple(
        FieldViolation(v.field, v.description)
        for v in (bad_request.field_violations if bad_request else ())
    )
    after = retry.retry_delay.ToTimedelta().total_seconds() if retry is not None else None
    kind = PolicyDenied if info is not None and info.reason == POLICY_DENIED_REASON else RpcError
    return kind(code, err.details() or "", info, violations, after)


def rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc Status in the trailers; None when the proxy sent no details."""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(err)
    except ValueError:
        return None
    return status


def details(
    status: status_pb2.Status | None,
) -> tuple[
    error_details_pb2.ErrorInfo | None,
    error_details_pb2.BadRequest | None,
    error_details_pb2.RetryInfo | None,
]:
    """The ErrorInfo, BadRequest and RetryInfo details that the proxy sends (each optional)."""
    info = bad_request = retry = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    return info, bad_request, retry


def _reasons(metadata: dict[str, str]) -> tuple[str, ...]:
    keyed = [(k.removeprefix("reason_"), v) for k, v in metadata.items() if k.startswith("reason_")]
    keyed.sort(key=lambda kv: (int(kv[0]) if kv[0].isdigit() else 1 << 30, kv[0]))
    return tuple(v for _, v in keyed)
