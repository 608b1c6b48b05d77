"""Domain errors: one tree, each class naming the gRPC status it becomes (pure: no gRPC import).

    ProxyError                      (status)
    ├── InvalidArgument             INVALID_ARGUMENT  + BadRequest field violations
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED + ErrorInfo(reason, decision id, reasons)
    ├── NotFound                    NOT_FOUND
    ├── Aborted                     ABORTED           (stale version, locked image set)
    ├── ResourceExhausted           RESOURCE_EXHAUSTED + RetryInfo
    ├── Unavailable                 UNAVAILABLE       (OPA or HealthImaging cannot answer)
    │   ├── RedisUnavailable        (the shared journal or budget cannot answer)
    │   ├── OperationMoved          (this replica let go of it: re-attach with WatchUpdate)
    │   ├── JournalLost             (Redis lost the operation's record and nobody held it)
    │   ├── PolicyUnavailable       (no usable decision: fail closed)
    │   └── NoCredentials           (no AWS credentials: nothing can be sent to HealthImaging)
    ├── DeadlineExceeded            DEADLINE_EXCEEDED
    ├── BackendRejected             FAILED_PRECONDITION (HealthImaging refused the request)
    ├── NotCancellable              FAILED_PRECONDITION (the update is past its submit)
    ├── WrongState                  FAILED_PRECONDITION (not awaiting approval, not reviewable)
    └── Internal                    INTERNAL

Like h11's `error_status_hint`, a class carries its status as a name and its details as plain
fields (violations, decision id and reasons, retry delay, AWS error code, reason); the server's
one edge (service/transport/grpc_errors.py) builds the google.rpc Status from them. Foreign errors
are
translated at their edges (healthimaging.py, policy.py). Messages never carry attribute values:
they are patient data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

StatusName = Literal[
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
]  # fmt: skip
"""The names of gRPC's status codes but OK: what an error may become."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: a dotted path into the request and what is wrong with it."""

    field: str
    description: str


class ProxyError(Exception):
    """Base of every error the proxy reports to a caller."""

    status: StatusName = "INTERNAL"
    reason: str = "INTERNAL"
    """ErrorInfo.reason: what a client branches on."""
    aws_code: str = ""
    """HealthImaging's error code behind it, if any (sent as ErrorInfo metadata aws_error_code)."""

    def __init__(self, message: str, *, aws_code: str = "") -> None:
        super().__init__(message)
        self.message = message
        if aws_code:
            self.aws_code = aws_code


def status_named(name: str) -> StatusName:
    """A status name read back from a record or a pub/sub payload, checked."""
    if name not in get_args(StatusName):
        raise ValueError(f"not a gRPC status name: {name!r}")
    return cast(StatusName, name)


class InvalidArgument(ProxyError):
    """Field violations, reported bounded: the first few (each shortened) and "and N more".

    gRPC refuses trailers over 8 KB (the caller would see RESOURCE_EXHAUSTED, "Stream removed");
    the BadRequest detail stays under DETAIL_BUDGET bytes before base64, and the message under
    MESSAGE_BUDGET characters, however many violations a document has.
    """

    status = "INVALID_ARGUMENT"
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
        super().__init__(shorten(message, MESSAGE_BUDGET))


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
            shorten(violation.field, MAX_FIELD_CHARS),
            shorten(violation.description, MAX_DESCRIPTION_CHARS),
        )
        size = len(short.field.encode()) + len(short.description.encode()) + 8
        if used + size > DETAIL_BUDGET:
            break
        kept.append(short)
        used += size
    return tuple(kept)


def shorten(text: str, limit: int = MESSAGE_BUDGET) -> str:
    """At most `limit` characters; the middle gives way (a path's attribute is at its end)."""
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head) :]


ECHO_CHARS = 40
"""The most of one caller-sent string (an id, a key) that an error message repeats."""
_ECHOABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/#@+=-")


def echo(text: str, limit: int = ECHO_CHARS) -> str:
    """A caller-sent string as an error message may repeat it: quoted, its first `limit`
    characters with anything outside letters, digits and `._:/#@+=-` shown as `?`, and its
    length when cut. Every message that names caller input goes through here."""
    shown = "".join(c if c in _ECHOABLE else "?" for c in text[:limit])
    cut = f"... ({len(text)} characters)" if len(text) > limit else ""
    return f"'{shown}'{cut}"


def invalid(field: str, description: str) -> InvalidArgument:
    """Shorthand for a single field violation."""
    return InvalidArgument([FieldViolation(field, description)])


class Unauthenticated(ProxyError):
    status = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(ProxyError):
    status = "PERMISSION_DENIED"
    reason = "POLICY_DENIED"

    def __init__(self, message: str, decision_id: str = "", reasons: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.decision_id = decision_id
        self.reasons = tuple(reasons)


class NotFound(ProxyError):
    status = "NOT_FOUND"
    reason = "NOT_FOUND"


class Aborted(ProxyError):
    status = "ABORTED"
    reason = "CONFLICT"

    def __init__(self, message: str, reason: str = "CONFLICT", *, aws_code: str = "") -> None:
        super().__init__(message, aws_code=aws_code)
        self.reason = reason


class ResourceExhausted(ProxyError):
    status = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self, message: str, retry_after_seconds: float, reason: str = "", *, aws_code: str = ""
    ) -> None:
        super().__init__(message, aws_code=aws_code)
        self.retry_after_seconds = retry_after_seconds
        if reason:
            self.reason = reason


class Unavailable(ProxyError):
    status = "UNAVAILABLE"
    reason = "BACKEND_UNAVAILABLE"


class RedisUnavailable(Unavailable):
    """Redis (the shared journal or budgets) did not answer in time, or refused the connection."""

    reason = "REDIS_UNAVAILABLE"


class OperationMoved(Unavailable):
    """This replica no longer runs the operation (its lease lapsed, it was fenced, or Redis lost
    it): the operation continues elsewhere, and `WatchUpdate(operation id)` re-attaches to it."""

    reason = "OPERATION_MOVED"


class JournalLost(Unavailable):
    """The shared journal no longer has the operation (Redis lost its data, and no replica
    wrote it back): said, never left hanging."""

    reason = "JOURNAL_LOST"

    def __init__(self, operation_id: str) -> None:
        super().__init__(
            f"the journal lost operation {operation_id} (Redis restarted without its data) and "
            "no replica holds it: check the image set's version before resubmitting"
        )


PolicyCause = Literal["unreachable", "timeout", "http_error", "undefined", "malformed"]
"""Why OPA gave no usable decision: a bounded word for metrics and the audit trail."""


class PolicyUnavailable(Unavailable):
    reason = "POLICY_UNAVAILABLE"

    def __init__(self, message: str, cause: PolicyCause = "malformed") -> None:
        super().__init__(message)
        self.cause = cause


class NoCredentials(Unavailable):
    """No AWS credentials were found: an operator's fix (and a restart), not a caller's."""

    reason = "AWS_CREDENTIALS_MISSING"


class StartupError(Exception):
    """The process cannot start (a port in use): told in one line, never as a traceback.

    Not a ProxyError: no caller is there to be told."""


class DeadlineExceeded(ProxyError):
    status = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class BackendRejected(ProxyError):
    """HealthImaging refused the request (validation, quota, state)."""

    status: StatusName = "FAILED_PRECONDITION"  # or what the AWS error code maps to
    reason = "BACKEND_REJECTED"

    def __init__(self, message: str, aws_code: str, status: StatusName | None = None) -> None:
        super().__init__(message, aws_code=aws_code)
        if status is not None:
            self.status = status


class NotCancellable(ProxyError):
    """CancelUpdate on an operation whose write may already be on its way (or is over)."""

    status = "FAILED_PRECONDITION"
    reason = "NOT_CANCELLABLE"

    def __init__(self, operation_id: str, state: str) -> None:
        super().__init__(
            f"operation {operation_id} is {state}: only a queued update can be cancelled"
        )
        self.state = state


class WrongState(ProxyError):
    """An approval, rejection or review of an operation not in a state that takes one."""

    status = "FAILED_PRECONDITION"

    def __init__(self, message: str, reason: str, state: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.state = state


class Internal(ProxyError):
    status = "INTERNAL"
    reason = "INTERNAL"
