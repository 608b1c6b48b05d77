"""End-to-end helpers: the shared `stack` fixtures live in tests/support/stack.py (a plugin
registered by tests/conftest.py, so every suite shares one demo); the helpers are re-exported.

Below them, what the concurrency suites need on top (built by `devstack`): stacks whose
emulator enforces chosen quotas, with proxies started on chosen settings."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb

from devstack import polling
from devstack.processes import Child, free_port
from devstack.proxies import ProxyProcess
from devstack.settings import Sections, merged
from devstack.settings import update_quota as write_quota
from devstack.stack import LocalStack, StackSpec, running_stack
from tests.support.stack import (
    EMULATOR_ENV,
    SEEDED_IMAGE_SETS,
    Stack,
    collect,
    dev,
    image_set_metadata,
    patient_name_update,
    redis_server,
)

__all__ = [
    "EMULATOR_ENV",
    "SEEDED_IMAGE_SETS",
    "ProxyProcess",
    "Sections",
    "Stack",
    "collect",
    "dev",
    "image_set_metadata",
    "patient_name_update",
    "redis_server",
    "write_quota",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs for more than a few seconds (still in make test)"
    )


# --- concurrency suites: OPA, an emulator with chosen quotas, proxies with chosen settings --------


@dataclass
class QuotaStack:
    """Real OPA and an emulator enforcing chosen quotas; proxies are started by the tests."""

    local: LocalStack

    @property
    def work(self) -> Path:
        return self.local.work

    @property
    def opa_url(self) -> str:
        return self.local.opa_url

    @property
    def emulator_url(self) -> str:
        return self.local.emulator_url

    @property
    def datastore_id(self) -> str:
        return self.local.datastore_id

    @property
    def children(self) -> list[Child]:
        return self.local.children

    def take(self, count: int) -> list[str]:
        """Image sets no other test has used (latest version "1")."""
        return self.local.take(count)

    def proxy(self, name: str, sections: Sections, args: Sequence[str] = ()) -> ProxyProcess:
        """A proxy on free ports (gRPC, metrics) with these settings, stopped with the stack
        (`args`: command-line options, which win over the stack's own, e.g. `--opa-url`)."""
        metrics_port = free_port()
        settings = merged(sections, {"server": {"metrics_port": metrics_port}})
        return self.local.add_proxy(
            self.work / name, args, settings=settings, metrics_port=metrics_port
        )

    def admin(self, method: str, path: str, body: object = None) -> Any:
        return self.local.emulator.admin(method, path, body)

    def requests(self, operation: str = "") -> list[dict[str, Any]]:
        """The emulator's log of API calls (one operation's, if named), in arrival order."""
        return self.local.emulator.requests(operation)


@contextlib.contextmanager
def quota_stack(
    work: Path, emulator: Sections, image_sets: int, update_delay: float = 0.3
) -> Iterator[QuotaStack]:
    """OPA + an emulator configured by `emulator` (e.g. its [quotas.tps.<Operation>] tables)."""
    spec = StackSpec(image_sets, update_delay=update_delay, quotas=True, emulator_settings=emulator)
    with running_stack(spec, work) as local:
        yield QuotaStack(local)


def within_budget(times: list[float], rate: float, burst: float, slack: float = 0.05) -> bool:
    """Whether calls at these times fit a token bucket of `rate`/s and `burst` (replayed)."""
    tokens, last = burst, None
    for at in sorted(times):
        if last is not None:
            tokens = min(burst, tokens + (at - last) * rate)
        if tokens < 1.0 - slack:
            return False
        tokens, last = tokens - 1.0, at
    return True


def throttles(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in logged if r.get("error") == "ThrottlingException" or r["status"] == 429]


async def assert_eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Poll `check` until it holds (no sleeping for eventual state)."""
    await polling.eventually(check, within, until=bool)


async def read_until(call: Any, kind: str) -> list[pb.UpdateEvent]:
    """The stream's events up to and including the first `kind` one; fails if it ends before."""
    events = []
    while (event := await call.read()) != grpc.aio.EOF:
        events.append(event)
        if event.WhichOneof("event") == kind:
            return events
    raise AssertionError(f"the stream ended before a {kind!r} event: {kinds(events)}")


@contextlib.contextmanager
def stalled_updates(backend: QuotaStack) -> Iterator[None]:
    """Updates stay UPDATING (LOCKED) until released: a second one on the image set queues."""
    backend.admin("PUT", "faults", {"update_stall_rate": 1.0})
    try:
        yield
    finally:
        backend.admin("PUT", "faults", {})
        backend.admin("POST", "release-stalled", {})


def kinds(events: list[pb.UpdateEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events if e.WhichOneof("event") != "heartbeat"]


def study_update(
    datastore_id: str, image_set_id: str, text: str, version: str = "1", key: str = ""
) -> pb.UpdateImageSetMetadataRequest:
    """Change StudyDescription (allowed for every demo principal with metadata-editor)."""
    document = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": text}}}
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=datastore_id,
        image_set_id=image_set_id,
        latest_version_id=version,
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
        idempotency_key=key,
    )
