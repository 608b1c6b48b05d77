"""Fault-test fixtures: real OPA, emulator and proxy processes; no fault outlives its test."""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import aioboto3
import grpc
import pytest
from aiobotocore.config import AioConfig

from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.cli import processes
from service.healthimaging import AWS_MODELS
from tests.e2e.faults.harness import (
    RAISED_BUDGETS,
    Config,
    Emulator,
    Proxy,
    seed_files,
    start_emulator,
    start_proxy,
)

SEEDED_IMAGE_SETS = 48
UPDATE_DELAY_SECONDS = 0.3


class ProxyFactory(Protocol):
    """Starts one more proxy with these options (and settings file sections)."""

    def __call__(self, args: Sequence[str] = (), config: Config = RAISED_BUDGETS) -> Proxy: ...


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

    def launch(args: Sequence[str] = (), config: Config = RAISED_BUDGETS) -> Proxy:
        log_dir = tmp_path / f"proxy-{len(started)}"
        started.append(start_proxy(log_dir, opa_url, emulator, args, config))
        return started[-1]

    yield launch
    for running in started:
        running.stop()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server of the test's own (no persistence), as the replicas' journal."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make test` installs it)")
    port, log_dir = processes.free_port(), tmp_path / "redis"
    log_dir.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    child = processes.spawn("redis", [*argv, "--save", "", "--appendonly", "no"], log_dir)
    processes.wait_until(lambda: _answers(port), child)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        child.stop()


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


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
