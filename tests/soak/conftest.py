"""Soak fixtures: its own OPA, emulator and proxy processes (a short watch timeout)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from devstack.processes import free_port
from devstack.stack import LocalStack, running_stack
from tests.e2e.faults.harness import (
    PROXY_ARGS,
    RAISED_BUDGETS,
    Emulator,
    Proxy,
    environ_seconds,
    fault_spec,
)
from tests.soak.load import LoadSettings
from tests.support.stack import emulator_client

SOAK_IMAGE_SETS = 16
WATCH_TIMEOUT_SECONDS = 3.0
"""Short, so stalled updates end their streams and the soak's clients re-attach with WatchUpdate."""


@pytest.fixture(scope="module")
def soak_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="module")
def soak_stack(soak_dir: Path) -> Iterator[LocalStack]:
    """The soak's own OPA and emulator (the fault tests' settings)."""
    with running_stack(fault_spec(SOAK_IMAGE_SETS), soak_dir) as stack:
        yield stack


@pytest.fixture(scope="module")
def soak_opa(soak_stack: LocalStack) -> str:
    return soak_stack.opa_url


@pytest.fixture(scope="module")
def soak_emulator(soak_stack: LocalStack) -> Emulator:
    return Emulator.of(soak_stack)


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def soak_proxy(soak_dir: Path, soak_stack: LocalStack, metrics_port: int) -> Iterator[Proxy]:
    args = ["--watch-timeout", str(WATCH_TIMEOUT_SECONDS), "--metrics-port", str(metrics_port)]
    running = soak_stack.add_proxy(soak_dir / "proxy", [*PROXY_ARGS, *args], RAISED_BUDGETS)
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
    async with emulator_client(soak_emulator.url) as client:
        yield client


@pytest.fixture(scope="module")
def load_settings() -> LoadSettings:
    """`SOAK_SECONDS` long (60 in `make test`, 600 in `make soak`)."""
    return LoadSettings(duration=environ_seconds("SOAK_SECONDS", 60.0))
