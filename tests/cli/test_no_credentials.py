"""`serve` without AWS credentials: found at start-up, shown in health, told as UNAVAILABLE.

A real proxy, OPA and emulator; the proxy's environment has no AWS_* variable and a HOME
without ~/.aws, so botocore's credential chain finds nothing (an emulator needs them too).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from pydicom.data import get_testdata_file

from devstack.examples import DEMO_DATASTORE_ID  # the one policies/data.json grants on
from devstack.processes import free_port, spawn, stop_all, wait_for_json
from devstack.servers import start_emulator, start_opa

pytestmark = pytest.mark.e2e
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status_of(channel: grpc.aio.Channel, name: str) -> int:
    request = health_pb2.HealthCheckRequest(service=name)
    response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
    return int(response.status)


async def once_probed(channel: grpc.aio.Channel) -> None:
    """Until the first probe ran (OPA answered), so readiness reflects every dependency."""
    for _ in range(300):
        if await status_of(channel, "opa") == SERVING:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("OPA never became reachable")


def update_request(datastore_id: str, image_set_id: str) -> pb.UpdateImageSetMetadataRequest:
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "NO^CREDENTIALS"}}}
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=datastore_id,
        image_set_id=image_set_id,
        latest_version_id="1",
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
        idempotency_key="no-credentials-1",
    )


async def test_missing_credentials_show_in_health_and_refuse_updates_as_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opa_port = free_port()
    opa = start_opa(tmp_path, opa_port)
    seed = get_testdata_file("CT_small.dcm")
    emulator = start_emulator(
        tmp_path, ["--no-quotas", f"--seed={seed}", "--datastore-id", DEMO_DATASTORE_ID]
    )
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials or config
    ready = tmp_path / "proxy-ready.json"
    argv = [
        sys.executable,
        "-m",
        "imaging_proxy_client.cli.main",
        "serve",
        "--ready-file",
        str(ready),
    ]
    argv += ["--insecure-dev-identity", "--port", "0", "--no-budget"]
    argv += ["--endpoint-url", emulator.url, "--opa-url", f"http://127.0.0.1:{opa_port}"]
    argv += ["--data-dir", str(tmp_path / "journal")]
    proxy = spawn("proxy", argv, tmp_path)
    try:
        port = int(wait_for_json(ready, proxy)["port"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await once_probed(channel)
            assert await status_of(channel, "liveness") == SERVING
            assert await status_of(channel, "aws-credentials") == NOT_SERVING
            assert await status_of(channel, "readiness") == NOT_SERVING
            stub = pb_grpc.MetadataUpdateServiceStub(channel)
            call = stub.UpdateImageSetMetadata(
                update_request(emulator.datastore_id, emulator.image_set_ids[0]),
                metadata=(("x-dev-principal", "demo-admin"),),
                timeout=30,
            )
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async for _ in call:
                    pass
    finally:
        stop_all([proxy, emulator.child, opa])
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (failed.value.details() or "").startswith("no AWS credentials")
    status = rpc_status.from_call(failed.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "AWS_CREDENTIALS_MISSING"
    assert "operation_crashed" not in proxy.log_path.read_text()
    assert "aws_credentials_missing" in proxy.log_path.read_text()
