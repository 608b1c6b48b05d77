"""The CLI's side of the client library: its connection settings, errors and progress notes.

The engine (channels, retries, re-attach) is `imaging_proxy_client`'s; this module turns the CLI's
options into its settings, its events into the progress line, and its errors into the AWS CLI's
error lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc
import grpc.aio

from imaging_proxy_client import engine
from imaging_proxy_client.cli.errors import CliError, EndpointError, ServiceError
from imaging_proxy_client.errors import (
    ClientError,
    RpcError,
    TransportError,
    TransportKind,
    from_rpc_error,
)
from imaging_proxy_client.events import Retrying
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

Tracker = engine.Tracker
retry_plan = engine.retry_plan
POLICY_DENIED_NAME = "PolicyDeniedException"
_ENDPOINT_WORDS: dict[TransportKind, str] = {
    "unreachable": "Could not connect to the endpoint URL: ",
    "connect-timeout": "Connect timeout on endpoint URL: ",
    "read-timeout": "Read timeout on endpoint URL: ",
}


class Observer(Protocol):
    """Told what happens while an update is followed; the CLI's progress line is one."""

    def event(self, event: metadata_pb2.UpdateEvent) -> None:
        """An event read from the stream."""

    def note(self, text: str) -> None:
        """A retry about to happen, in words."""


@dataclass(frozen=True)
class Connection:
    """Where the proxy is, as the user named it, and the library's settings for reaching it."""

    endpoint_url: str
    """The address as the user gave it (for messages)."""
    settings: engine.Settings
    """Target, TLS, identity headers, timeouts and attempts: what the library's engine needs."""
    client_cert: bool = False
    """A client certificate is presented (mutual TLS): names a refused handshake."""

    def error(self, error: ClientError, operation: str) -> CliError:
        """The library's error as the AWS CLI's line, a failed handshake named for this
        connection (TLS or not, with a client certificate or not)."""
        tls = self.settings.credentials is not None
        return cli_error(error, operation, self.endpoint_url, tls, self.client_cert)


async def follow_update(
    conn: Connection,
    request: metadata_pb2.UpdateImageSetMetadataRequest | None,
    tracker: Tracker,
    observer: Observer,
    until_submitted: bool,
) -> metadata_pb2.ImageSetState:
    """Submit (or re-attach to) an update; return the finished state, or the submitted one."""
    operation = "UpdateImageSetMetadata" if request is not None else "WatchUpdate"
    try:
        async for item in engine.stream_update(conn.settings, request, tracker, until_submitted):
            if isinstance(item, Retrying):
                observer.note(_retry_note(item, conn.endpoint_url))
                continue
            observer.event(item)
            kind = item.WhichOneof("event")
            if kind == "finished":
                return item.finished.state
            if kind == "cancelled":
                raise ServiceError(
                    "UpdateCancelled",
                    operation,
                    f"operation {item.operation_id} was cancelled by "
                    f"{item.cancelled.cancelled_by} before it was submitted; nothing was written",
                )
            if kind in ("rejected", "expired"):
                raise _not_approved(item, operation)
            if kind == "submitted" and until_submitted:
                return item.submitted.state
    except ClientError as error:
        raise conn.error(error, operation) from None
    raise EndpointError("The proxy closed the stream before the update finished")


def _not_approved(item: metadata_pb2.UpdateEvent, operation: str) -> ServiceError:
    if item.WhichOneof("event") == "rejected":
        by = item.rejected.rejected_by
        return ServiceError(
            "UpdateRejected",
            operation,
            f"operation {item.operation_id} was rejected by {by}; nothing was written",
        )
    return ServiceError(
        "ApprovalExpired",
        operation,
        f"operation {item.operation_id} was not approved in time; nothing was written",
    )


async def evaluate(
    conn: Connection, request: metadata_pb2.UpdateImageSetMetadataRequest
) -> metadata_pb2.Evaluation:
    """The dry run; retried like a submit while the proxy is unreachable."""
    try:
        return await engine.evaluate(conn.settings, request)
    except ClientError as error:
        raise conn.error(error, "EvaluateUpdate") from None


def _retry_note(retry: Retrying, endpoint_url: str) -> str:
    error = retry.error
    if isinstance(error, RpcError):
        reason = f"{error.code.name}: {error.message or 'connection lost'}"
    elif isinstance(error, TransportError) and error.status is not None:
        reason = f"{error.status.name}: {error.detail or 'connection lost'}"
    else:
        reason = str(cli_error(error, "", endpoint_url))
    how = (
        f"re-attaching to operation {retry.operation_id}"
        if retry.operation_id
        else "re-submitting with the same idempotency key"
    )
    return f"{reason}; {how} in {retry.delay:.1f}s"


# --- errors ---------------------------------------------------------------------------------


def translate(err: grpc.aio.AioRpcError, operation: str, endpoint_url: str) -> CliError:
    """A gRPC status -> the AWS CLI's error line; transport failures are not service errors."""
    return cli_error(from_rpc_error(err, endpoint_url), operation, endpoint_url)


def cli_error(
    error: ClientError,
    operation: str,
    endpoint_url: str,
    conn_tls: bool = False,
    client_cert: bool = False,
) -> CliError:
    """The library's error as the AWS CLI's error line (and return code)."""
    note = ""
    if error.gave_up_after is not None:
        note = f" (gave up after retrying for {error.gave_up_after:.0f}s; see --cli-retry-timeout)"
    if isinstance(error, RpcError):
        name = error_name(error)
        told = (error.message or error.code.name).removeprefix(f"HealthImaging {name}: ")
        return ServiceError(name, operation, told + _extras(error) + note)
    if isinstance(error, TransportError) and error.handshake:
        return EndpointError(_handshake_words(error, endpoint_url, conn_tls, client_cert) + note)
    if isinstance(error, TransportError) and error.kind in _ENDPOINT_WORDS:
        return EndpointError(f'{_ENDPOINT_WORDS[error.kind]}"{endpoint_url}"{note}')
    if isinstance(error, TransportError):
        return EndpointError(f"The proxy closed the stream before the update finished{note}")
    return EndpointError(f"{error}{note}")


def _handshake_words(error: TransportError, endpoint_url: str, tls: bool, client_cert: bool) -> str:
    """A failed connection named as the AWS CLI names its SSL failures, with what to change."""
    where = f'"{endpoint_url}"'
    match error.handshake:
        case "unknown-ca":
            return (
                f"SSL validation failed for {where}: the proxy's certificate is not signed by a "
                "CA you trust (unknown CA): give the CA that issued it with --ca-bundle"
            )
        case "server-name":
            return (
                f"SSL validation failed for {where}: the proxy's certificate does not name this "
                "host (wrong server name): connect by a name the certificate holds"
            )
        case "not-tls":
            return (
                f"SSL handshake failed for {where}: the proxy does not speak TLS on this port: "
                "use http:// (without --ca-bundle, --client-cert)"
            )
    if not tls:
        return (
            f"The proxy at {where} closed the connection at once: it probably requires TLS "
            "(plaintext sent to a TLS port): use https:// and --ca-bundle"
        )
    if not client_cert:
        return (
            f"The proxy at {where} refused the TLS handshake: it requires a client certificate "
            "(client certificate required): give --client-cert and --client-key"
        )
    return (
        f"The proxy at {where} refused the TLS handshake: it did not accept the client "
        "certificate (issued by a CA it does not trust?)"
    )


def error_name(error: RpcError) -> str:
    """The name in "An error occurred (<name>)": HealthImaging's own error code when the proxy
    passes one on, PolicyDeniedException for a policy denial, else the status in the AWS style."""
    if error.aws_error_code:
        return error.aws_error_code
    if error.reason == "POLICY_DENIED":
        return POLICY_DENIED_NAME
    return "".join(part.capitalize() for part in error.code.name.split("_"))


def _extras(error: RpcError) -> str:
    parts: list[str] = []
    if error.reason:
        parts.append(f"reason: {error.reason}")
        if error.decision_id:
            parts.append(f"decision id: {error.decision_id}")
        if error.reasons and not all(r in error.message for r in error.reasons):
            parts.append("policy reasons: " + "; ".join(error.reasons))
    if error.retry_after is not None:
        parts.append(f"retry after {error.retry_after:g}s")
    extra = f" ({', '.join(parts)})" if parts else ""
    missing = [v for v in error.violations if f"{v.field}: {v.description}" not in error.message]
    return extra + "".join(f"\n  {v.field}: {v.description}" for v in missing)
