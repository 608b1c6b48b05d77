"""Issue 10, no caller can starve the others: a flood from one principal while an editor works.

Sixteen connections keep sending, four requests at a time each, for several seconds, while
`demo-editor` makes a few StudyDescription updates and a poller reads every health name ten times
a second, each read with kubelet's default one-second timeout. Real processes: the secure stack's
OPA and emulator, and proxies of their own with development identity and the default `[limits]`.

- From `nobody-at-all` (no grant anywhere): ~60 KB documents, about 2,300 private tags to update
  and 3,100 series to remove, by EvaluateUpdate and UpdateImageSetMetadata. Each is refused by
  the gate before its document is read; nothing reaches the backend.
- From `demo-admin` (every role), to a proxy whose OPA is slow (a relay holds each decision back
  50 ms): EvaluateUpdate of documents at the payload limit. The flood waits its turn in the
  decisions stage (issue 18: slowed, not refused), and another principal's evaluations and
  updates still get through.

Run with `-s` to see the figures (legitimate updates, health readings, refusals).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from service.core.config import LimitSettings
from service.transport.health import LIVENESS, READINESS
from service.transport.server import SERVICE_NAME
from tests.e2e.secure_stack import (
    CHANNEL_OPTIONS,
    RPC_TIMEOUT,
    Proxy,
    SecureStack,
    backend_args,
    service_stub,
    start_proxy,
)
from tests.e2e.security.calls import assert_updated, events_of, study, update
from tests.e2e.security.relay import Relay, serve

pytestmark = pytest.mark.e2e

FLOODERS = 16
VOLLEY = 4
"""Requests each flooding connection has in flight at once: 64 in all."""
FLOOD_SECONDS = 6.0
HEAD_START_SECONDS = 1.0
"""The flood runs this long before the editor starts."""
EDITS = 5
DECISION_DELAY = 0.05
"""How long the slow OPA holds each decision back in the flood with grants."""
HEALTH_NAMES = ("", LIVENESS, READINESS, SERVICE_NAME)
HEALTH_PERIOD = 0.1
HEALTH_TIMEOUT = 1.0
"""kubelet's default probe timeout."""
PRIVATE_TAGS, REMOVED_SERIES = 2_300, 3_100
LIMITS = LimitSettings()
Metadata = tuple[tuple[str, str], ...]
Call = Any  # grpc.aio.UnaryUnaryCall or UnaryStreamCall (not subscriptable at run time)
Send = Callable[["pb_grpc.MetadataUpdateServiceAsyncStub"], Call]
"""One flood request: given a stub, start the call."""


def dev(name: str) -> Metadata:
    return (("x-dev-principal", name),)


@pytest.fixture(scope="module")
def dev_proxy(secure_stack: SecureStack) -> Iterator[Proxy]:
    """A proxy with development identity and default limits on the secure stack's backend."""
    proxy = start_proxy(
        secure_stack.directory / "flood-proxy",
        ["--insecure-dev-identity", *backend_args(secure_stack.backend)],
    )
    yield proxy
    proxy.child.stop()


@pytest.fixture(scope="module")
async def slow_opa_proxy(secure_stack: SecureStack) -> AsyncIterator[Proxy]:
    """The same, but its OPA decisions pass a relay that holds each back DECISION_DELAY: an OPA
    busy with a flood. Role queries and OPA's /health are not delayed."""
    async with contextlib.AsyncExitStack() as cleanup:
        session = await cleanup.enter_async_context(aiohttp.ClientSession())
        relay = Relay(secure_stack.backend.opa_url, session, delayed="/v1/data/imaging/update")
        relay.delay = DECISION_DELAY
        relay_url = f"http://127.0.0.1:{await serve(relay, cleanup)}"
        proxy = start_proxy(
            secure_stack.directory / "slow-opa-flood-proxy",
            [
                "--insecure-dev-identity",
                *("--endpoint-url", secure_stack.backend.emulator_url),
                *("--opa-url", relay_url),
            ],
        )
        cleanup.callback(proxy.child.stop)
        yield proxy


# --- documents -----------------------------------------------------------------------------------


def oversized_request(image_set_id: str) -> pb.UpdateImageSetMetadataRequest:
    """~60 KB: 2,300 private tags on one instance and 3,100 series removals (issue 10, item 1)."""
    tags = {f"0019{0x1000 + n:04X}": "x" for n in range(PRIVATE_TAGS)}
    updatable = {
        "SchemaVersion": 1.1,
        "Study": {"Series": {"1.2.3": {"Instances": {"1.2.3.4": {"DICOM": tags}}}}},
    }
    removable = {
        "SchemaVersion": 1.1,
        "Study": {"Series": {str(n): {} for n in range(REMOVED_SERIES)}},
    }
    request = update(image_set_id, compact(updatable), compact(removable), force=True)
    size = len(
        request.dicom_updates.updatable_attributes + request.dicom_updates.removable_attributes
    )
    assert 55_000 < size < 70_000, size
    return request


def compact(document: dict[str, object]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def max_size_request(image_set_id: str) -> pb.UpdateImageSetMetadataRequest:
    """A valid document as large as `[limits] max_payload_bytes` allows: many series edits."""
    series: dict[str, object] = {}

    def document() -> dict[str, object]:
        return {
            "SchemaVersion": 1.1,
            "Study": {"DICOM": {"StudyDescription": "FLOOD"}, "Series": series},
        }

    while len(json.dumps(document())) <= LIMITS.max_payload_bytes:
        uid = f"1.2.826.0.1.3680043.8.498.{len(series) + 1}"
        series[uid] = {"DICOM": {"SeriesDescription": "FLOOD"}}
    series.popitem()
    return update(image_set_id, document())


# --- the three parties ---------------------------------------------------------------------------


@dataclass
class Tally:
    """How each flood request ended, by status code name ("OK" for an answer)."""

    codes: Counter[str] = field(default_factory=Counter)
    with_retry_info: int = 0


async def outcome(call: Call) -> tuple[str, bool]:
    """(status code name, whether the status carried RetryInfo)."""
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall):
            async for _ in call:
                pass
        else:
            await call
        return "OK", False
    except grpc.aio.AioRpcError as error:
        status = await rpc_status.aio.from_call(call)
        details = status.details if status else ()
        retry = any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details)
        return error.code().name, retry


async def flood(endpoint: str, sends: list[Send], stop: asyncio.Event, tally: Tally) -> None:
    """One flooding connection: a volley of VOLLEY requests at once, the answers, the next
    volley, until `stop`."""
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = service_stub(channel)
        n = 0
        while not stop.is_set():
            volley = [sends[(n + k) % len(sends)](stub) for k in range(VOLLEY)]
            for code, retry in await asyncio.gather(*(outcome(call) for call in volley)):
                tally.codes[code] += 1
                tally.with_retry_info += retry
            n += VOLLEY


@dataclass
class Readings:
    """Every health reading taken during a flood: (name, status or error code) counts."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    slowest: float = 0.0

    @property
    def all_serving(self) -> bool:
        return {status for _, status in self.counts} == {"SERVING"}


async def poll_health(endpoint: str, stop: asyncio.Event, readings: Readings) -> None:
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            for name in HEALTH_NAMES:
                started = time.perf_counter()
                try:
                    request = health_pb2.HealthCheckRequest(service=name)
                    answer = await stub.Check(request, timeout=HEALTH_TIMEOUT)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                except grpc.aio.AioRpcError as error:
                    status = error.code().name
                readings.counts[(name, status)] += 1
                readings.slowest = max(readings.slowest, time.perf_counter() - started)
            await asyncio.sleep(HEALTH_PERIOD)


async def edit(endpoint: str, image_set: str) -> list[float]:
    """`demo-editor` changes StudyDescription EDITS times, one version after the other; the
    seconds each update took to finish."""
    took = []
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = service_stub(channel)
        for n in range(EDITS):
            started = time.monotonic()
            document = study({"StudyDescription": f"DURING THE FLOOD {n}"})
            request = update(image_set, document, version=str(n + 1))
            call = stub.UpdateImageSetMetadata(
                request, metadata=dev("demo-editor"), timeout=RPC_TIMEOUT
            )
            assert_updated(await events_of(call))
            took.append(time.monotonic() - started)
    return took


@asynccontextmanager
async def flooding(proxy: Proxy, sends: list[Send]) -> AsyncIterator[tuple[Tally, Readings]]:
    """FLOODERS streams and the health poller run while the block runs (and FLOOD_SECONDS)."""
    stop, tally, readings = asyncio.Event(), Tally(), Readings()
    started = time.monotonic()
    tasks = [
        asyncio.create_task(flood(proxy.endpoint, sends, stop, tally)) for _ in range(FLOODERS)
    ]
    tasks.append(asyncio.create_task(poll_health(proxy.endpoint, stop, readings)))
    try:
        await asyncio.sleep(HEAD_START_SECONDS)
        yield tally, readings
        await asyncio.sleep(max(0.0, FLOOD_SECONDS - (time.monotonic() - started)))
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def figures(title: str, took: list[float], tally: Tally, readings: Readings) -> str:
    return (
        f"{title}: legitimate updates finished {len(took)}/{EDITS} "
        f"(seconds each: {', '.join(f'{t:.2f}' for t in took)}); flood outcomes "
        f"{dict(tally.codes)} ({tally.with_retry_info} with RetryInfo); health readings "
        f"{sum(readings.counts.values())}: {dict(readings.counts)}, "
        f"slowest {readings.slowest:.3f} s"
    )


# --- the floods ----------------------------------------------------------------------------------


async def test_a_flood_without_grants_starves_nobody_and_health_stays_serving(
    secure_stack: SecureStack, dev_proxy: Proxy
) -> None:
    target = uuid.uuid4().hex  # any call for it would show in the emulator's request log
    edited = secure_stack.take_image_set()
    request, nobody = oversized_request(target), dev("nobody-at-all")
    sends: list[Send] = [
        lambda stub: stub.EvaluateUpdate(request, metadata=nobody, timeout=RPC_TIMEOUT),
        lambda stub: stub.UpdateImageSetMetadata(request, metadata=nobody, timeout=RPC_TIMEOUT),
    ]

    async with flooding(dev_proxy, sends) as (tally, readings):
        took = await edit(dev_proxy.endpoint, edited)

    print(figures("flood without grants", took, tally, readings))
    assert len(took) == EDITS
    assert readings.all_serving, readings.counts
    assert sum(readings.counts.values()) >= len(HEALTH_NAMES) * FLOOD_SECONDS
    assert set(tally.codes) == {"PERMISSION_DENIED"}, tally.codes
    assert tally.codes["PERMISSION_DENIED"] >= FLOODERS * 4
    assert not [r for r in secure_stack.requests() if r.get("imageSetId") == target]


async def test_a_flood_with_grants_waits_its_turn_and_others_get_through(
    secure_stack: SecureStack, slow_opa_proxy: Proxy
) -> None:
    edited = secure_stack.take_image_set()
    request, admin = max_size_request(uuid.uuid4().hex), dev("demo-admin")
    sends: list[Send] = [
        lambda stub: stub.EvaluateUpdate(request, metadata=admin, timeout=RPC_TIMEOUT)
    ]
    others: list[str] = []

    async with flooding(slow_opa_proxy, sends) as (tally, readings):
        took = await edit(slow_opa_proxy.endpoint, edited)
        others = await evaluate_as_another_principal(slow_opa_proxy, request)

    print(figures("flood with grants", took, tally, readings) + f"; demo-private: {others}")
    assert len(took) == EDITS
    assert readings.all_serving, readings.counts
    assert set(tally.codes) == {"OK"}, tally.codes  # a busy caller is slowed, not refused
    assert others == ["OK"] * len(others) and others


async def evaluate_as_another_principal(
    proxy: Proxy, request: pb.UpdateImageSetMetadataRequest
) -> list[str]:
    """`demo-private` evaluates the same document a few times while demo-admin floods."""
    codes = []
    async with grpc.aio.insecure_channel(proxy.endpoint, options=CHANNEL_OPTIONS) as channel:
        stub = service_stub(channel)
        for _ in range(5):
            call = stub.EvaluateUpdate(request, metadata=dev("demo-private"), timeout=RPC_TIMEOUT)
            codes.append((await outcome(call))[0])
    return codes
