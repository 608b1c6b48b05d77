"""The fuzzing target: the real `imaging-proxy serve` (dev identity + JWT), real OPA, the emulator.

Hypothesis profiles come from tests/conftest.py ("default"; HYPOTHESIS_PROFILE=fuzz for `make
fuzz`); each test asks for at least its CI share of examples (see `cases`).
"""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.fuzz.documents import Layout
from tests.e2e.secure_stack import (
    DATASTORE_ID,
    Backend,
    Proxy,
    running_backend,
    start_proxy,
)
from tests.support.pki import AUDIENCE, ISSUER, JwtKeys, write_jwt_keys

FUZZ_IMAGE_SETS = 8


def cases(ci: int) -> settings:
    """`ci` examples, or the loaded profile's count when it asks for more (`make fuzz`)."""
    return settings(
        max_examples=max(ci, settings().max_examples),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclass(frozen=True)
class Target:
    """The running proxy under fuzz, a blocking stub to it, and what it runs against."""

    proxy: Proxy
    stub: pb_grpc.MetadataUpdateServiceStub
    """Blocking: hypothesis drives plain functions."""
    backend: Backend
    keys: JwtKeys

    def assert_alive(self) -> None:
        assert self.proxy.child.process.poll() is None, "the proxy crashed"

    def layout(self, image_set_id: str) -> Layout:
        """The image set's latest version and its metadata, read from the emulator's API."""
        base = f"{self.backend.emulator_url}/datastore/{DATASTORE_ID}/imageSet/{image_set_id}"
        version = str(_post(f"{base}/getImageSet")["versionId"])
        return Layout(image_set_id, version, _post(f"{base}/getImageSetMetadata?version={version}"))


def _post(url: str) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as answer:
        raw = answer.read()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


@pytest.fixture(scope="session")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    directory = tmp_path_factory.mktemp("fuzz")
    keys = write_jwt_keys(directory / "jwt")
    with running_backend(directory, FUZZ_IMAGE_SETS) as backend:
        identity = ["--insecure-dev-identity", "--jwt-jwks-file", str(keys.jwks_file)]
        identity += ["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]
        endpoints = ["--opa-url", backend.opa_url, "--endpoint-url", backend.emulator_url]
        # A generous OPA timeout: a slow decision on a busy machine is not what is fuzzed here.
        proxy = start_proxy(directory / "proxy", [*identity, *endpoints, "--opa-timeout", "10"])
        try:
            with grpc.insecure_channel(proxy.endpoint) as channel:
                yield Target(proxy, pb_grpc.MetadataUpdateServiceStub(channel), backend, keys)
        finally:
            proxy.child.stop()
