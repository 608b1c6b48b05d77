"""Soak fixtures: its own OPA, emulator and proxy processes (a short watch timeout)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import grpc
import pytest
from aiobotocore.config import AioConfig

from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.cli import processes
from service.healthimaging import AWS_MODELS
from tests.e2e.faults.harness import (
    Emulator,
    Proxy,
    environ_seconds,
    seed_files,
    start_emulator,
    start_proxy,
)
from tests.soak.load import LoadSettings

SOAK_IMAGE_SETS = 16
WATCH_TIMEOUT_SECONDS = 3.0
"""Short, so stalled updates end their streams and the soak's clients re-attach with WatchUpdate."""


@pytest.fixture(scope="module")
def soak_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="module")
def soak_opa(soak_dir: Path) -> Iterator[str]:
    port, log_dir = processes.free_port(), soak_dir / "opa"
    log_dir.mkdir()
    child = processes.start_opa(log_dir, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture(scope="module")
def soak_emulator(soak_dir: Path) -> Iterator[Emulator]:
    log_dir = soak_dir / "emulator"
    log_dir.mkdir()
    seeds = seed_files(SOAK_IMAGE_SETS, soak_dir / "seed")
    running = start_emulator(log_dir, seeds, ["--no-quotas", "--update-delay", "0.3"])
    try:
        yield running
    finally:
        running.child.stop()


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return processes.free_port()


@pytest.fixture(scope="module")
def soak_proxy(
    soak_dir: Path, soak_opa: str, soak_emulator: Emulator, metrics_port: int
) -> Iterator[Proxy]:
    args = ["--watch-timeout", str(WATCH_TIMEOUT_SECONDS), "--metrics-port", str(metrics_port)]
    running = start_proxy(soak_dir / "proxy", soak_opa, soak_emulator, args)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
async def soak_stub(soak_proxy: Proxy) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    async with grpc.aio.insecure_channel(soak_proxy.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


@pytest.fixture(scope="module")
async def soak_healthimaging(soak_emulator: Emulator) -> AsyncIterator[Any]:
    session = aioboto3.Session(
        region_name="us-east-1", aws_access_key_id="emulator", aws_secret_access_key="emulator"
    )
    session._session.get_component("data_loader").search_paths.insert(0, str(AWS_MODELS))
    config = AioConfig(inject_host_prefix=False, retries={"mode": "standard", "max_attempts": 1})
    async with session.client(
        "medical-imaging", endpoint_url=soak_emulator.url, config=config
    ) as client:
        yield client


@pytest.fixture(scope="module")
def load_settings() -> LoadSettings:
    """`SOAK_SECONDS` long (60 in `make test`, 600 in `make soak`)."""
    return LoadSettings(duration=environ_seconds("SOAK_SECONDS", 60.0))
