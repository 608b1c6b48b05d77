"""OPA's address: the decision client and the readiness probe reach the same host and port."""

from __future__ import annotations

import pytest

from service.core.config import OpaSettings
from service.policy.decisions import opa_address


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:8181", ("http", "127.0.0.1", 8181)),
        ("http://opa", ("http", "opa", 8181)),  # OPA's port, not HTTP's 80
        ("https://opa.internal", ("https", "opa.internal", 443)),
        ("http://opa:9999/", ("http", "opa", 9999)),
    ],
)
def test_the_address_is_what_the_decision_client_uses(
    url: str, address: tuple[str, str, int]
) -> None:
    assert opa_address(OpaSettings(url=url)) == address
