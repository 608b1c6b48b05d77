"""Client-library fixtures: the fault tests' stack (real OPA, emulator, proxy processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from imaging_proxy_client import Credentials, MetadataUpdateClient

from tests.e2e.faults.conftest import (
    emulator,
    fault_dir,
    fault_stack,
    faults_off,
    opa_url,
    proxy,
)
from tests.e2e.faults.harness import Proxy

__all__ = ["emulator", "fault_dir", "fault_stack", "faults_off", "opa_url", "proxy"]


@pytest.fixture
async def client(proxy: Proxy) -> AsyncIterator[MetadataUpdateClient]:
    """The library's client of the shared proxy, as the demo's administrator."""
    credentials = Credentials.insecure(dev_principal="demo-admin")
    async with MetadataUpdateClient(proxy.endpoint, credentials, retry_timeout=30.0) as opened:
        yield opened
