"""The library's pure parts: statuses the server sends → typed errors; proto events → values."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from imaging_proxy_client import (
    Authorized,
    Credentials,
    FieldViolation,
    Finished,
    PolicyDenied,
    Queued,
    RpcError,
    TransportError,
)
from imaging_proxy_client.errors import from_rpc_error
from imaging_proxy_client.events import from_proto
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.tracing import with_trace_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from service.core import errors
from service.transport.grpc_errors import to_status


def _sent(error: errors.ProxyError) -> grpc.aio.AioRpcError:
    """`error` as the proxy's status edge sends it."""
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", to_status(error).SerializeToString()))
    code = grpc.StatusCode[error.status]
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, error.message)


def test_a_denial_carries_its_reasons_in_order_and_its_decision_id() -> None:
    reasons = [f"reason {i}" for i in range(12)]
    denied = from_rpc_error(_sent(errors.PermissionDenied("denied", "dec-42", reasons)), "t")

    assert isinstance(denied, PolicyDenied)
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert (denied.decision_id, denied.reasons) == ("dec-42", tuple(reasons))
    assert (denied.reason, denied.domain) == ("POLICY_DENIED", "imaging-proxy")


def test_healthimagings_code_and_the_field_violations_are_kept() -> None:
    conflict = from_rpc_error(
        _sent(errors.BackendRejected("stale", "ConflictException", "ABORTED")), "t"
    )
    assert isinstance(conflict, RpcError) and not isinstance(conflict, PolicyDenied)
    assert conflict.aws_error_code == "ConflictException"
    invalid = errors.InvalidArgument([errors.FieldViolation("image_set_id", "not an id")])
    violations = from_rpc_error(_sent(invalid), "t")
    assert isinstance(violations, RpcError)
    assert violations.violations == (FieldViolation("image_set_id", "not an id"),)


def test_a_throttle_says_when_to_come_back() -> None:
    throttled = from_rpc_error(_sent(errors.ResourceExhausted("slow down", 4.0)), "t")
    assert isinstance(throttled, RpcError) and throttled.retry_after == 4.0


def test_a_status_without_details_is_the_transport() -> None:
    lost = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "Socket closed"
    )
    error = from_rpc_error(lost, "127.0.0.1:1")
    assert isinstance(error, TransportError)
    assert (error.kind, error.detail) == ("unreachable", "Socket closed")


def test_events_become_values() -> None:
    authorized = pb.UpdateEvent(
        operation_id="op", authorized=pb.Authorized(decision_id="d", reasons=["r"])
    )
    assert from_proto(authorized) == Authorized("op", "d", ("r",))
    queued = from_proto(pb.UpdateEvent(operation_id="op", queued=pb.Queued(position=2)))
    assert queued == Queued("op", 2, None)
    state = pb.ImageSetState(image_set_id="i", image_set_workflow_status="UPDATED")
    finished = from_proto(pb.UpdateEvent(operation_id="op", finished=pb.Finished(state=state)))
    assert isinstance(finished, Finished)
    assert (finished.state.image_set_id, finished.state.workflow_status) == ("i", "UPDATED")
    assert from_proto(pb.UpdateEvent(operation_id="op")) is None


def test_credentials_send_the_identity_headers_and_hide_the_token() -> None:
    credentials = Credentials.tls(token="secret-token")
    assert credentials.metadata() == (("authorization", "Bearer secret-token"),)
    assert "secret-token" not in repr(credentials)
    assert Credentials.insecure("demo-admin").metadata() == (("x-dev-principal", "demo-admin"),)
    with pytest.raises(ValueError, match="together"):
        Credentials.tls(client_cert=b"pem")


def test_the_current_trace_context_goes_with_the_call() -> None:
    tracer = TracerProvider().get_tracer("test")
    assert with_trace_context((("a", "b"),)) == (("a", "b"),)
    with tracer.start_as_current_span("caller") as span:
        sent = dict(with_trace_context((("a", "b"),)))
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert sent["a"] == "b"
    assert trace_id in sent["traceparent"]
    assert trace.get_current_span() is trace.INVALID_SPAN
