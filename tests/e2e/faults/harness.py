"""Fault-injection harness: OPA, the emulator and the proxy as real processes, and their knobs.

Shared by the fault tests (`tests/e2e/faults/`) and the soak (`tests/soak/`). Processes are started
by `devstack`, the builder `imaging-proxy demo` uses; the emulator's faults are changed at
run time through its admin endpoint (`PUT /_emulator/faults`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack import polling
from devstack.admin import EmulatorAdmin
from devstack.examples import DEMO_DATASTORE_ID
from devstack.proxies import ProxyProcess
from devstack.servers import EMULATOR_AWS_ENV
from devstack.settings import Sections
from devstack.stack import LocalStack, StackSpec

T = TypeVar("T")
DATASTORE_ID = DEMO_DATASTORE_ID
EMULATOR_ENV = EMULATOR_AWS_ENV
TERMINAL = frozenset({"UPDATED", "UPDATE_FAILED"})
ADMIN = "demo-admin"
STREAM_TIMEOUT = 30.0
"""Client deadline for streams that should end well before it: a hang fails the test quickly."""


# --- polling -------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 30.0) -> T:
    """Poll `check` until it returns something other than None (or stops raising AssertionError)."""
    result = await polling.eventually(check, within, until=polling.not_none)
    assert result is not None
    return result


# --- the stack -----------------------------------------------------------------------------------


def fault_spec(image_sets: int, update_delay: float = 0.3) -> StackSpec:
    """OPA and an emulator without quotas (faults are injected explicitly), a fixed random seed."""
    return StackSpec(image_sets, update_delay=update_delay, emulator_args=("--random-seed", "7"))


@dataclass(frozen=True)
class Emulator(EmulatorAdmin):
    """A running emulator: its admin endpoint, the seeded ids and the ones no test touched yet."""

    datastore_id: str = DATASTORE_ID
    image_set_ids: tuple[str, ...] = ()
    unused: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, stack: LocalStack) -> Emulator:
        """The stack's emulator, drawing from the stack's pool of unused image sets."""
        return cls(stack.emulator_url, 10.0, stack.datastore_id, stack.image_set_ids, stack.unused)

    def take_image_set(self) -> str:
        """An image set no other test has touched (latest version "1")."""
        if not self.unused:
            raise RuntimeError("the emulator ran out of fresh image sets; seed more")
        return self.unused.pop(0)


Proxy = ProxyProcess
"""A running `imaging-proxy serve` process."""

Config = Sections
"""A settings file's sections (as in service/core/config.py): section → field → value."""

RAISED_BUDGETS: Config = {"budget": {"update_rate": 50.0, "update_burst": 50.0}}
"""The emulator runs without quotas here; the proxy's budgets must not be the bottleneck either."""

PROXY_ARGS = ("--log-level", "info")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of every sample of `name` (whose labels include `labels`) in Prometheus text."""
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                total += sample.value
                found = True
    if not found:
        raise AssertionError(f"metric {name} {dict(labels or {})} not exported")
    return total


# --- gRPC ----------------------------------------------------------------------------------------


@asynccontextmanager
async def connect(proxy: Proxy) -> AsyncIterator[pb_grpc.MetadataUpdateServiceStub]:
    """A stub on a channel of its own to `proxy`, closed at the end of the block."""
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        yield pb_grpc.MetadataUpdateServiceStub(channel)


def dev(principal: str = ADMIN) -> tuple[tuple[str, str], ...]:
    return (("x-dev-principal", principal),)


def name_update(
    emulator: Emulator, image_set_id: str, name: str, version: str = "1", key: str = ""
) -> pb.UpdateImageSetMetadataRequest:
    """Change PatientName (a value made up by the test, never real patient data)."""
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=emulator.datastore_id,
        image_set_id=image_set_id,
        latest_version_id=version,
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
        idempotency_key=key,
    )


@dataclass(frozen=True)
class Outcome:
    """How one stream ended: every event it delivered, then the status it closed with."""

    events: tuple[pb.UpdateEvent, ...]
    code: grpc.StatusCode
    details: str
    error_info: error_details_pb2.ErrorInfo | None = None

    @property
    def operation_id(self) -> str:
        return self.events[0].operation_id if self.events else ""

    @property
    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("event")) for e in self.events if e.HasField("event")]

    @property
    def finished(self) -> pb.ImageSetState | None:
        last = [e.finished.state for e in self.events if e.HasField("finished")]
        return last[-1] if last else None

    @property
    def submitted(self) -> pb.ImageSetState | None:
        first = [e.submitted.state for e in self.events if e.HasField("submitted")]
        return first[0] if first else None


async def drain(call: Any) -> Outcome:
    """Read a stream to its end (even one partly read): its events and its closing status."""
    events: list[pb.UpdateEvent] = []
    try:
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
    except grpc.aio.AioRpcError as error:
        return Outcome(tuple(events), error.code(), error.details() or "", _error_info(error))
    return Outcome(tuple(events), grpc.StatusCode.OK, "")


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a rich status, if the proxy sent one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


async def update(
    stub: pb_grpc.MetadataUpdateServiceStub,
    request: pb.UpdateImageSetMetadataRequest,
    principal: str = ADMIN,
    deadline: float | None = None,
) -> Outcome:
    return await drain(
        stub.UpdateImageSetMetadata(request, metadata=dev(principal), timeout=deadline)
    )


async def watch(
    stub: pb_grpc.MetadataUpdateServiceStub, operation_id: str, principal: str = ADMIN
) -> Outcome:
    request = pb.WatchUpdateRequest(operation_id=operation_id)
    return await drain(stub.WatchUpdate(request, metadata=dev(principal)))


async def first_events(call: Any, until: str) -> list[pb.UpdateEvent]:
    """Read events until one of kind `until` arrives (the stream stays open)."""
    events: list[pb.UpdateEvent] = []
    while True:
        event = await call.read()
        if event is grpc.aio.EOF:
            raise AssertionError(f"stream ended before a {until!r} event: {events}")
        events.append(event)
        if event.WhichOneof("event") == until:
            return events


async def cli_update(
    proxy: Proxy,
    emulator: Emulator,
    image_set_id: str,
    name: str,
    environ: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """`imaging-proxy update-image-set-metadata`, as a user runs it: (return code, out, err)."""
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
    updates = json.dumps({"DICOMUpdates": {"updatableAttributes": json.dumps(document)}})
    argv = ["update-image-set-metadata", "--endpoint-url", proxy.endpoint, "--dev-principal", ADMIN]
    argv += ["--datastore-id", emulator.datastore_id, "--image-set-id", image_set_id]
    argv += ["--latest-version-id", "1", "--cli-binary-format", "raw-in-base64-out"]
    argv += ["--update-image-set-metadata-updates", updates, "--output", "json"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imaging_proxy_client.cli.main",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **EMULATOR_ENV, **(environ or {})},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), STREAM_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the CLI did not end within {STREAM_TIMEOUT:g} s") from None
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def environ_seconds(name: str, default: float) -> float:
    """A duration from the environment (the soak's SOAK_SECONDS), else the default."""
    return float(os.environ.get(name, default))
