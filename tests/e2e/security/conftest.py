"""Fixtures for the security tests: the secured stack (mTLS + JWT), its stubs, a JWT listener."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.e2e.secure_stack import (
    Proxy,
    SecureStack,
    backend_args,
    identity_args,
    running_secure_stack,
    start_proxy,
)
from tests.e2e.security.calls import Stubs


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with running_secure_stack(tmp_path_factory.mktemp("secure")) as stack:
        yield stack


@pytest.fixture(scope="session")
async def stubs(secure_stack: SecureStack) -> AsyncIterator[Stubs]:
    opened = Stubs(secure_stack)
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def jwt_listener(secure_stack: SecureStack) -> Iterator[Proxy]:
    """A second proxy on the same backend: server-only TLS (no client certificates) + JWT."""
    proxy = start_proxy(
        secure_stack.directory / "jwt-proxy",
        [
            *identity_args(secure_stack.pki, secure_stack.keys, client_ca=False),
            *backend_args(secure_stack.backend),
        ],
    )
    yield proxy
    proxy.child.stop()
