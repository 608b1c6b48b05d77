"""The whole product as processes: `imaging-proxy demo` (real OPA, the emulator, the proxy).

Registered as a pytest plugin by tests/conftest.py: the fixtures are shared by every suite.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import grpc
import pytest
from aiobotocore.config import AioConfig
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

import medical_imaging_model
from devstack.admin import EmulatorAdmin
from devstack.processes import spawn, wait_for_json
from devstack.servers import EMULATOR_AWS_ENV, start_redis

SEEDED_IMAGE_SETS = 96
EMULATOR_ENV = EMULATOR_AWS_ENV


@dataclass
class Stack:
    """A running demo: where everything is, and a supply of untouched image sets."""

    endpoint: str
    datastore_id: str
    image_set_ids: list[str]
    emulator_url: str
    opa_url: str
    pids: dict[str, int]
    log_dir: Path
    _unused: list[str] = field(default_factory=list)

    def take_image_set(self) -> str:
        """An image set no other test has used (latest version "1")."""
        if not self._unused:
            raise RuntimeError("the stack ran out of fresh image sets; seed more")
        return self._unused.pop(0)

    def requests(self) -> list[dict[str, Any]]:
        """The emulator's log of every API call it received."""
        return EmulatorAdmin(self.emulator_url, timeout=5).requests()

    def update_calls(self, image_set_id: str) -> list[dict[str, Any]]:
        return EmulatorAdmin(self.emulator_url, timeout=5).update_calls(image_set_id)


DEMO_OPTIONS = (
    *("--image-sets", str(SEEDED_IMAGE_SETS), "--update-delay", "0.2"),
    "--proxy-arg=--log-level=debug",
    # Quotas are exercised by the concurrency tests; here they would only slow things down.
    "--no-quotas",
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`imaging-proxy demo` itself, as a user runs it (the demo is a caller of devstack)."""
    work = tmp_path_factory.mktemp("stack")
    ready_file, log_dir = work / "ready.json", work / "logs"
    argv = [sys.executable, "-m", "imaging_proxy_client.cli.main", "demo", "--port", "0"]
    argv += ["--ready-file", str(ready_file), "--log-dir", str(log_dir), *DEMO_OPTIONS]
    demo = spawn("demo", argv, work)
    try:
        ready = wait_for_json(ready_file, demo, timeout=120)
        yield Stack(
            endpoint=ready["endpoint"],
            datastore_id=ready["datastoreId"],
            image_set_ids=ready["imageSetIds"],
            emulator_url=ready["emulatorUrl"],
            opa_url=ready["opaUrl"],
            pids=ready["pids"],
            log_dir=log_dir,
            _unused=list(ready["imageSetIds"]),
        )
    finally:
        demo.stop(timeout=30)


def require_redis_server() -> None:
    """Skip a test without redis-server, except under CI, where that is an error (`make test`
    installs it: a missing one means the Redis tests silently never ran)."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI must run the Redis tests)")
        pytest.skip("redis-server is not installed (`make redis` installs it)")


@contextlib.contextmanager
def redis_server(log_dir: Path) -> Iterator[str]:
    """A fresh redis-server child (no persistence); yields its URL.

    Skips when redis-server is missing, except under CI, where that is an error.
    """
    require_redis_server()
    child, url = start_redis(log_dir)
    try:
        yield url
    finally:
        child.stop()


@pytest.fixture(scope="session")
async def stub(stack: Stack) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    async with grpc.aio.insecure_channel(stack.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


@pytest.fixture(scope="session")
async def healthimaging(stack: Stack) -> AsyncIterator[Any]:
    """An aioboto3 client talking to the emulator directly (to check what the proxy did)."""
    async with emulator_client(stack.emulator_url, retries=True) as client:
        yield client


@contextlib.asynccontextmanager
async def emulator_client(url: str, retries: bool = False) -> AsyncIterator[Any]:
    """aioboto3 straight to the emulator at `url`, with botocore's retries or one attempt."""
    session = aioboto3.Session(
        region_name="us-east-1", aws_access_key_id="emulator", aws_secret_access_key="emulator"
    )
    medical_imaging_model.install(session._session)
    once = None if retries else {"mode": "standard", "max_attempts": 1}
    config = AioConfig(inject_host_prefix=False, retries=once)
    async with session.client("medical-imaging", endpoint_url=url, config=config) as client:
        yield client


async def image_set_metadata(client: Any, datastore_id: str, image_set_id: str) -> Any:
    response = await client.get_image_set_metadata(
        datastoreId=datastore_id, imageSetId=image_set_id
    )
    async with response["imageSetMetadataBlob"] as blob:
        raw = await blob.read()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def dev(principal: str) -> tuple[tuple[str, str], ...]:
    return (("x-dev-principal", principal),)


def patient_name_update(
    stack: Stack, image_set_id: str, name: str, version: str = "1"
) -> pb.UpdateImageSetMetadataRequest:
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=stack.datastore_id,
        image_set_id=image_set_id,
        latest_version_id=version,
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
    )


async def collect(call: Any) -> list[pb.UpdateEvent]:
    return [event async for event in call]
