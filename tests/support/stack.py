"""The whole product as processes: `imaging-proxy demo` (real OPA, the emulator, the proxy).

Registered as a pytest plugin by tests/conftest.py: the fixtures are shared by every suite.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import grpc
import pytest
from aiobotocore.config import AioConfig

from service._proto.imaging.metadata.v1 import metadata_pb2 as pb
from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.healthimaging import AWS_MODELS

SEEDED_IMAGE_SETS = 96
EMULATOR_ENV = {
    "AWS_ACCESS_KEY_ID": "emulator",
    "AWS_SECRET_ACCESS_KEY": "emulator",
    "AWS_DEFAULT_REGION": "us-east-1",
}


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
        with urllib.request.urlopen(f"{self.emulator_url}/_emulator/requests", timeout=5) as resp:
            return list(json.load(resp)["requests"])

    def update_calls(self, image_set_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests()
            if r["operation"] == "UpdateImageSetMetadata" and r["imageSetId"] == image_set_id
        ]


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"demo exited with {process.returncode}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.1)
    raise TimeoutError("demo not ready")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    ready_file, log_dir = work / "ready.json", work / "logs"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli.main",
            "demo",
            "--port",
            "0",
            "--ready-file",
            str(ready_file),
            "--log-dir",
            str(log_dir),
            "--image-sets",
            str(SEEDED_IMAGE_SETS),
            "--update-delay",
            "0.2",
            "--proxy-arg=--log-level=debug",
            # Quotas are exercised by the concurrency tests; here they would only slow things down.
            "--no-quotas",
        ],
        env={**os.environ, **EMULATOR_ENV},
    )
    try:
        ready = _wait_for(ready_file, process)
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
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
async def stub(stack: Stack) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    async with grpc.aio.insecure_channel(stack.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


@pytest.fixture(scope="session")
async def healthimaging(stack: Stack) -> AsyncIterator[Any]:
    """An aioboto3 client talking to the emulator directly (to check what the proxy did)."""
    session = aioboto3.Session(
        region_name="us-east-1", aws_access_key_id="emulator", aws_secret_access_key="emulator"
    )
    session._session.get_component("data_loader").search_paths.insert(0, str(AWS_MODELS))
    config = AioConfig(inject_host_prefix=False)
    async with session.client(
        "medical-imaging", endpoint_url=stack.emulator_url, config=config
    ) as client:
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
