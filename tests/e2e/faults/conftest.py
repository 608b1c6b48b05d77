"""Fault-test fixtures: real OPA, emulator and proxy processes; no fault outlives its test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.stack import LocalStack, running_stack
from tests.e2e.faults.harness import (
    PROXY_ARGS,
    RAISED_BUDGETS,
    Config,
    Emulator,
    Proxy,
    fault_spec,
)
from tests.support.stack import emulator_client, redis_server

SEEDED_IMAGE_SETS = 48
UPDATE_DELAY_SECONDS = 0.3


class ProxyFactory(Protocol):
    """Starts one more proxy with these options (and settings file sections)."""

    def __call__(self, args: Sequence[str] = (), config: Config = RAISED_BUDGETS) -> Proxy: ...


@pytest.fixture(scope="session")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def fault_stack(fault_dir: Path) -> Iterator[LocalStack]:
    """OPA and the fault tests' emulator (see `fault_spec`), shared by the whole session."""
    with running_stack(fault_spec(SEEDED_IMAGE_SETS, UPDATE_DELAY_SECONDS), fault_dir) as stack:
        yield stack


@pytest.fixture(scope="session")
def opa_url(fault_stack: LocalStack) -> str:
    return fault_stack.opa_url


@pytest.fixture(scope="session")
def emulator(fault_stack: LocalStack) -> Emulator:
    return Emulator.of(fault_stack)


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
def proxy(fault_dir: Path, fault_stack: LocalStack) -> Iterator[Proxy]:
    """The shared proxy, on default settings."""
    running = fault_stack.add_proxy(fault_dir / "proxy", PROXY_ARGS, RAISED_BUDGETS)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def launch_proxy(tmp_path: Path, fault_stack: LocalStack) -> Iterator[ProxyFactory]:
    """Start extra proxies with the options a test needs; all are stopped at the end of the test."""
    started: list[Proxy] = []

    def launch(args: Sequence[str] = (), config: Config = RAISED_BUDGETS) -> Proxy:
        log_dir = tmp_path / f"proxy-{len(started)}"
        started.append(fault_stack.add_proxy(log_dir, [*PROXY_ARGS, *args], config))
        return started[-1]

    yield launch
    for running in started:
        running.stop()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server of the test's own (no persistence), as the replicas' journal."""
    with redis_server(tmp_path / "redis") as url:
        yield url


@pytest.fixture(scope="session")
async def stub(proxy: Proxy) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


@pytest.fixture(scope="session")
async def healthimaging(emulator: Emulator) -> AsyncIterator[Any]:
    """aioboto3 straight to the emulator, to check what really happened there."""
    async with emulator_client(emulator.url) as client:
        yield client
