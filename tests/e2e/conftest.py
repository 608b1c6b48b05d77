"""End-to-end helpers: the shared `stack` fixtures live in tests/support/stack.py (a plugin
registered by tests/conftest.py, so every suite shares one demo); the helpers are re-exported.

Below them, what the concurrency suites need on top: a redis-server of their own, and stacks whose
emulator enforces chosen quotas, with proxies started on chosen settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from service._proto.imaging.metadata.v1 import metadata_pb2 as pb
from service.cli import processes
from tests.support.stack import (
    EMULATOR_ENV,
    SEEDED_IMAGE_SETS,
    Stack,
    collect,
    dev,
    image_set_metadata,
    patient_name_update,
)

__all__ = [
    "EMULATOR_ENV",
    "SEEDED_IMAGE_SETS",
    "Stack",
    "collect",
    "dev",
    "image_set_metadata",
    "patient_name_update",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs for more than a few seconds (still in make test)"
    )


# --- concurrency suites: a redis-server of the test's own ----------------------------------------


@contextlib.contextmanager
def redis_server(log_dir: Path) -> Iterator[str]:
    """A fresh redis-server child (no persistence); yields its URL. Skips when it is missing."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make redis` installs it)")
    log_dir.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    child = processes.spawn("redis", [*argv, "--appendonly", "no"], log_dir)
    try:
        processes.wait_until(lambda: _redis_answers(port), child)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        child.stop()


def _redis_answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


# --- concurrency suites: OPA, an emulator with chosen quotas, proxies with chosen settings --------

Sections = Mapping[str, Mapping[str, object]]
"""Settings as TOML sections: section → field → value (emulator or proxy)."""

DEMO_DATASTORE_ID = "12345678901234567890123456789012"


def toml(sections: Sections) -> str:
    """TOML for flat sections (dotted names become nested tables); JSON scalars are valid TOML."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def seed_copies(count: int, folder: Path) -> Path:
    """`count` copies of pydicom's samples with fresh UIDs (one image set each), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = [dcmread(str(get_testdata_file(name))) for name in ("CT_small.dcm", "MR_small.dcm")]
    for index in range(count):
        dataset = samples[index % len(samples)]
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(dataset, keyword, generate_uid())
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.save_as(folder / f"copy-{index:05d}.dcm")
    return folder


@dataclass
class ProxyProcess:
    """One `imaging-proxy serve` child."""

    child: processes.Child
    port: int
    metrics_port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.child.process.kill()
        self.child.process.wait(30)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


@dataclass
class QuotaStack:
    """Real OPA and an emulator enforcing chosen quotas; proxies are started by the tests."""

    work: Path
    opa_url: str
    emulator_url: str
    datastore_id: str
    image_set_ids: list[str]
    children: list[processes.Child] = field(default_factory=list)

    def take(self, count: int) -> list[str]:
        """Image sets no other test has used (latest version "1")."""
        if len(self.image_set_ids) < count:
            raise RuntimeError("the stack ran out of fresh image sets; seed more")
        taken, self.image_set_ids = self.image_set_ids[:count], self.image_set_ids[count:]
        return taken

    def proxy(self, name: str, sections: Sections) -> ProxyProcess:
        """A proxy on free ports (gRPC, metrics) with these settings, stopped with the stack."""
        log_dir = self.work / name
        log_dir.mkdir(parents=True, exist_ok=True)
        metrics_port = processes.free_port()
        config = log_dir / "imaging-proxy.toml"
        config.write_text(toml({**sections, "server": {"metrics_port": metrics_port}}))
        args = ["--port", "0", "--insecure-dev-identity", "--opa-url", self.opa_url]
        args += ["--endpoint-url", self.emulator_url, "--config", str(config)]
        child, port = processes.start_proxy(log_dir, args, EMULATOR_ENV)
        self.children.append(child)
        return ProxyProcess(child, port, metrics_port)

    def admin(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.emulator_url}/_emulator/{path}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def requests(self, operation: str = "") -> list[dict[str, Any]]:
        """The emulator's log of API calls (one operation's, if named), in arrival order."""
        logged = list(self.admin("GET", "requests")["requests"])
        return [r for r in logged if not operation or r["operation"] == operation]


@contextlib.contextmanager
def quota_stack(
    work: Path, emulator: Sections, image_sets: int, update_delay: float = 0.3
) -> Iterator[QuotaStack]:
    """OPA + an emulator configured by `emulator` (e.g. its [quotas.tps.<Operation>] tables)."""
    seeds = seed_copies(image_sets, work / "seed")
    config = work / "emulator.toml"
    config.write_text(toml(emulator))
    children: list[processes.Child] = []  # proxies join it: stopped first, OPA last
    try:
        opa_port = processes.free_port()
        children.append(processes.start_opa(work, opa_port))
        args = ["--config", str(config), "--datastore-id", DEMO_DATASTORE_ID, "--non-primary"]
        args += ["--update-delay", str(update_delay), f"--seed={seeds}"]
        emulator_child, ready = processes.start_emulator(work, processes.free_port(), args)
        children.append(emulator_child)
        opa_url = f"http://127.0.0.1:{opa_port}"
        ids = list(ready["imageSetIds"])
        yield QuotaStack(work, opa_url, ready["url"], ready["datastoreId"], ids, children)
    finally:
        for child in reversed(children):
            child.stop()


def write_quota(rate: float, burst: float) -> Sections:
    """Emulator settings enforcing this UpdateImageSetMetadata quota (others: AWS defaults)."""
    return {"quotas.tps.UpdateImageSetMetadata": {"rate": rate, "burst": burst}}


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
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:g} s")
        await asyncio.sleep(0.05)


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
