"""Requests and outcomes for the security tests: build updates, run them, read their refusals."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.secure_stack import (
    DATASTORE_ID,
    RPC_TIMEOUT,
    Proxy,
    SecureStack,
    eventually,
    open_mtls_channel,
    service_stub,
)

Metadata = tuple[tuple[str, str], ...]
Document = Mapping[str, Any]

# --- update documents ----------------------------------------------------------------------------


def patient(attributes: Document) -> dict[str, Any]:
    return {"SchemaVersion": 1.1, "Patient": {"DICOM": dict(attributes)}}


def study(attributes: Document) -> dict[str, Any]:
    return {"SchemaVersion": 1.1, "Study": {"DICOM": dict(attributes)}}


def series(series_uid: str, body: Document) -> dict[str, Any]:
    """`body` is the series object: {"DICOM": ...}, {"Instances": ...}, or {} (remove it)."""
    return {"SchemaVersion": 1.1, "Study": {"Series": {series_uid: dict(body)}}}


def instance(series_uid: str, sop_uid: str, body: Document) -> dict[str, Any]:
    """`body` is the instance object: {"DICOM": ..., "DICOMVRs": ...}, or {} (remove it)."""
    return series(series_uid, {"Instances": {sop_uid: dict(body)}})


def encode(document: Document | bytes) -> bytes:
    return document if isinstance(document, bytes) else json.dumps(document).encode()


def update(
    image_set_id: str,
    updatable: Document | bytes | None = None,
    removable: Document | bytes | None = None,
    *,
    force: bool = False,
    include_study: bool = False,
    version: str = "1",
    datastore_id: str = DATASTORE_ID,
) -> pb.UpdateImageSetMetadataRequest:
    dicom = pb.DICOMUpdates()
    if updatable is not None:
        dicom.updatable_attributes = encode(updatable)
    if removable is not None:
        dicom.removable_attributes = encode(removable)
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=datastore_id,
        image_set_id=image_set_id,
        latest_version_id=version,
        force=force,
        include_study_image_sets=include_study,
        dicom_updates=dicom,
    )


def revert(
    image_set_id: str, to_version: str, version: str, *, include_study: bool = False
) -> pb.UpdateImageSetMetadataRequest:
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=DATASTORE_ID,
        image_set_id=image_set_id,
        latest_version_id=version,
        include_study_image_sets=include_study,
        revert_to_version_id=to_version,
    )


# --- outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A failed call: its status code, message and rich details."""

    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo | None
    violations: tuple[str, ...]
    """BadRequest field paths (INVALID_ARGUMENT)."""

    @property
    def reasons(self) -> set[str]:
        """The policy's reasons (PERMISSION_DENIED)."""
        metadata = self.info.metadata if self.info else {}
        return {value for key, value in metadata.items() if key.startswith("reason_")}

    @property
    def decision_id(self) -> str:
        return self.info.metadata.get("decision_id", "") if self.info else ""


async def refusal(call: Any) -> Refusal:
    """Await a unary or streaming call that must fail; its status and details."""
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            events = [event async for event in call]
            raise AssertionError(f"call succeeded with {len(events)} events")
        await call
        raise AssertionError("call succeeded")
    except grpc.aio.AioRpcError as error:
        return await _refusal_from(call, error)


async def _refusal_from(call: Any, error: grpc.aio.AioRpcError) -> Refusal:
    status = await rpc_status.aio.from_call(call)
    info, violations = None, ()
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations = tuple(v.field for v in bad_request.field_violations)
    return Refusal(error.code(), error.details() or "", info, violations)


async def events_of(call: Any) -> list[pb.UpdateEvent]:
    """Every event of a successful update stream except heartbeats."""
    return [event async for event in call if event.WhichOneof("event") != "heartbeat"]


def assert_denied(refused: Refusal, reasons: Iterable[str] = ()) -> None:
    """PERMISSION_DENIED from the policy, with a decision id and (at least) these reasons."""
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED, refused
    assert refused.info is not None and refused.info.reason == "POLICY_DENIED", refused
    assert refused.info.domain == "imaging-proxy"
    assert refused.decision_id, "a denial names the OPA decision it came from"
    assert refused.reasons >= set(reasons), refused.reasons


def assert_updated(events: list[pb.UpdateEvent]) -> None:
    """An allowed update: authorized with a decision id first, UPDATED last."""
    assert events and events[0].WhichOneof("event") == "authorized", events
    assert events[0].authorized.decision_id
    assert events[-1].WhichOneof("event") == "finished", events[-1]
    assert events[-1].finished.state.image_set_workflow_status == "UPDATED", events[-1]


# --- stubs ---------------------------------------------------------------------------------------


class Stubs:
    """Channels to the mTLS proxy, one per client certificate, opened on first use."""

    def __init__(self, stack: SecureStack) -> None:
        self._stack = stack
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, client: str) -> grpc.aio.Channel:
        if client not in self._channels:
            self._channels[client] = open_mtls_channel(self._stack, client)
        return self._channels[client]

    def service(self, client: str) -> pb_grpc.MetadataUpdateServiceAsyncStub:
        return service_stub(self.channel(client))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


async def serving_status(channel: grpc.aio.Channel, service: str = "") -> int:
    """The proxy's grpc.health status for `service` ("": overall, which is liveness)."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
    return int(response.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --- extra proxies with development identity (plaintext, for OPA faults and OPA over TLS) -------

DEV_ADMIN = (("x-dev-principal", "demo-admin"),)


def probe_request(image_set_id: str = "a" * 32) -> pb.UpdateImageSetMetadataRequest:
    """A harmless study-level edit the demo admin may make."""
    return update(image_set_id, study({"StudyDescription": "PROBE"}))


async def dev_allows(proxy: Proxy) -> bool:
    """EvaluateUpdate of `probe_request` as the demo admin: the decision."""
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        evaluation = await service_stub(channel).EvaluateUpdate(
            probe_request(), metadata=DEV_ADMIN, timeout=RPC_TIMEOUT
        )
    return evaluation.decision.allow


async def dev_refusal(proxy: Proxy, image_set_id: str = "") -> Refusal:
    """EvaluateUpdate (or, given an image set, UpdateImageSetMetadata) that must fail."""
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        stub = service_stub(channel)
        if not image_set_id:
            return await refusal(
                stub.EvaluateUpdate(probe_request(), metadata=DEV_ADMIN, timeout=RPC_TIMEOUT)
            )
        request = probe_request(image_set_id)
        return await refusal(
            stub.UpdateImageSetMetadata(request, metadata=DEV_ADMIN, timeout=RPC_TIMEOUT)
        )


async def health_becomes(proxy: Proxy, status: int, service: str = "") -> None:
    async def reached() -> None:
        async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
            assert await serving_status(channel, service) == status

    await eventually(reached)


def assert_policy_unavailable(refused: Refusal) -> None:
    """Fail closed: UNAVAILABLE with reason POLICY_UNAVAILABLE."""
    assert refused.code == grpc.StatusCode.UNAVAILABLE, refused
    assert refused.info is not None and refused.info.reason == "POLICY_UNAVAILABLE", refused
