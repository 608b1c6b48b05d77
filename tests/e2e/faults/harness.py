"""Fault-injection harness: OPA, the emulator and the proxy as real processes, and their knobs.

Shared by the fault tests (`tests/e2e/faults/`) and the soak (`tests/soak/`). Processes are started
with `service/cli/processes.py`, the same helpers `imaging-proxy demo` uses; the emulator's faults
are changed at run time through its admin endpoint (`PUT /_emulator/faults`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from service._proto.imaging.metadata.v1 import metadata_pb2 as pb
from service._proto.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from service.cli import processes

T = TypeVar("T")
DATASTORE_ID = "12345678901234567890123456789012"
EMULATOR_ENV = {
    "AWS_ACCESS_KEY_ID": "emulator",
    "AWS_SECRET_ACCESS_KEY": "emulator",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SAMPLES = ("CT_small.dcm", "MR_small.dcm")
TERMINAL = frozenset({"UPDATED", "UPDATE_FAILED"})
ADMIN = "demo-admin"
STREAM_TIMEOUT = 30.0
"""Client deadline for streams that should end well before it: a hang fails the test quickly."""


# --- polling -------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 30.0) -> T:
    """Poll `check` until it returns something other than None (or stops raising AssertionError)."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = await check()
            if result is not None:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:g} s")
        await asyncio.sleep(0.05)


# --- seeding -------------------------------------------------------------------------------------


def seed_files(count: int, folder: Path) -> list[Path]:
    """Copies of pydicom's samples with fresh study/series/instance UIDs: one image set each."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = [Path(str(get_testdata_file(name))) for name in SAMPLES]
    paths = []
    for index in range(count):
        dataset = dcmread(samples[index % len(samples)])
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(dataset, keyword, generate_uid())
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        paths.append(folder / f"seed-{index:05d}.dcm")
        dataset.save_as(paths[-1])
    return paths


# --- the emulator --------------------------------------------------------------------------------


@dataclass
class Emulator:
    """A running emulator process: its URL, the seeded ids and its admin endpoint."""

    child: processes.Child
    url: str
    datastore_id: str
    image_set_ids: list[str]
    _unused: list[str] = field(default_factory=list)

    def take_image_set(self) -> str:
        """An image set no other test has touched (latest version "1")."""
        if not self._unused:
            raise RuntimeError("the emulator ran out of fresh image sets; seed more")
        return self._unused.pop(0)

    def admin(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def set_faults(self, knobs: Mapping[str, object]) -> None:
        """Replace every fault knob (left-out knobs return to 'no fault')."""
        self.admin("PUT", "faults", dict(knobs))

    def clear_faults(self) -> None:
        self.admin("PUT", "faults", {})

    def release_stalled(self) -> int:
        return int(self.admin("POST", "release-stalled", {})["released"])

    def requests(self) -> list[dict[str, Any]]:
        return list(self.admin("GET", "requests")["requests"])

    def calls(self, operation: str, image_set_id: str) -> list[dict[str, Any]]:
        """Every `operation` call the emulator received for one image set, in order."""
        return [
            r
            for r in self.requests()
            if r["operation"] == operation and r["imageSetId"] == image_set_id
        ]


def start_emulator(
    log_dir: Path, seeds: Sequence[Path], extra_args: Sequence[str] = ()
) -> Emulator:
    args = ["--datastore-id", DATASTORE_ID, "--non-primary", "--random-seed", "7"]
    args += [f"--seed={path}" for path in seeds]
    child, ready = processes.start_emulator(log_dir, processes.free_port(), [*args, *extra_args])
    ids = list(ready["imageSetIds"])
    return Emulator(child, ready["url"], ready["datastoreId"], ids, list(ids))


# --- the proxy -----------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A running `imaging-proxy serve` process."""

    child: processes.Child
    port: int
    log_dir: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.child.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, an OOM kill, a lost node)."""
        self.child.process.send_signal(signal.SIGKILL)
        self.child.process.wait(30)

    def stop(self) -> None:
        self.child.stop(timeout=30)

    def log_events(self) -> list[dict[str, Any]]:
        """The proxy's structured log lines (JSON objects) so far."""
        events = []
        for line in self.child.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events


Config = Mapping[str, Mapping[str, object]]
"""A settings file's sections (as in service/config.py): section → field → value."""

RAISED_BUDGETS: Config = {"budget": {"update_rate": 50.0, "update_burst": 50.0}}
"""The emulator runs without quotas here; the proxy's budgets must not be the bottleneck either."""


def write_config(path: Path, sections: Config) -> Path:
    """A TOML settings file (JSON scalars are valid TOML values)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_proxy(
    log_dir: Path,
    opa_url: str,
    emulator: Emulator,
    extra_args: Sequence[str] = (),
    config: Config = RAISED_BUDGETS,
) -> Proxy:
    """A proxy on a free port with development identity, talking to this OPA and emulator."""
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = write_config(log_dir / "imaging-proxy.toml", config)
    args = ["--port", "0", "--insecure-dev-identity", "--opa-url", opa_url, "--config"]
    args += [str(settings), "--endpoint-url", emulator.url, "--log-level", "info", *extra_args]
    child, port = processes.start_proxy(log_dir, args, EMULATOR_ENV)
    return Proxy(child, port, log_dir)


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
        "service.cli.main",
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
