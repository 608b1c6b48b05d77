"""Fault-test fixtures: real OPA, emulator and proxy processes; no fault outlives its test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aioboto3
import grpc
import pytest
from aiobotocore.config import AioConfig

from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.cli import processes
from service.healthimaging import AWS_MODELS
from tests.e2e.faults.harness import Emulator, Proxy, seed_files, start_emulator, start_proxy

SEEDED_IMAGE_SETS = 48
UPDATE_DELAY_SECONDS = 0.3

ProxyFactory = Callable[[Sequence[str]], Proxy]


@pytest.fixture(scope="session")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def opa_url(fault_dir: Path) -> Iterator[str]:
    port, log_dir = processes.free_port(), fault_dir / "opa"
    log_dir.mkdir()
    child = processes.start_opa(log_dir, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture(scope="session")
def emulator(fault_dir: Path) -> Iterator[Emulator]:
    """The fault tests' emulator: quotas off (faults are injected explicitly), fast updates."""
    seeds = seed_files(SEEDED_IMAGE_SETS, fault_dir / "seed")
    log_dir = fault_dir / "emulator"
    log_dir.mkdir()
    args = ["--no-quotas", "--update-delay", str(UPDATE_DELAY_SECONDS)]
    running = start_emulator(log_dir, seeds, args)
    try:
        yield running
    finally:
        running.child.stop()


@pytest.fixture(autouse=True)
def faults_off(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts and ends with no injected fault and no stalled update."""
    if "emulator" not in request.fixturenames:
        yield
        return
    running: Emulator = request.getfixturevalue("emulator")
    running.clear_faults()
    yield
    running.clear_faults()
    running.release_stalled()


@pytest.fixture(scope="session")
def proxy(fault_dir: Path, opa_url: str, emulator: Emulator) -> Iterator[Proxy]:
    """The shared proxy, on default settings."""
    running = start_proxy(fault_dir / "proxy", opa_url, emulator)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def launch_proxy(tmp_path: Path, opa_url: str, emulator: Emulator) -> Iterator[ProxyFactory]:
    """Start extra proxies with the options a test needs; all are stopped at the end of the test."""
    started: list[Proxy] = []

    def launch(args: Sequence[str]) -> Proxy:
        started.append(start_proxy(tmp_path / f"proxy-{len(started)}", opa_url, emulator, args))
        return started[-1]

    yield launch
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
async def stub(proxy: Proxy) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


@pytest.fixture(scope="session")
async def healthimaging(emulator: Emulator) -> AsyncIterator[Any]:
    """aioboto3 straight to the emulator, to check what really happened there."""
    session = aioboto3.Session(
        region_name="us-east-1", aws_access_key_id="emulator", aws_secret_access_key="emulator"
    )
    session._session.get_component("data_loader").search_paths.insert(0, str(AWS_MODELS))
    config = AioConfig(inject_host_prefix=False, retries={"mode": "standard", "max_attempts": 1})
    async with session.client("medical-imaging", endpoint_url=emulator.url, config=config) as c:
        yield c
