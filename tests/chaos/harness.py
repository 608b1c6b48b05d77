"""The chaos campaign's parts: real processes, faults, and the figures each scenario prints.

Three `imaging-proxy serve` replicas share one journal in a real `redis-server` started here (its
port kept across restarts, with AOF or without), in front of OPA and the emulator. Clients are
the project's own `MetadataUpdateClient` over a round-robin channel to every replica (what a
Kubernetes Service gives): one idempotency key per update, re-sends and re-attaches as it does.
Truth is the emulator's: the number of versions an image set gained is how often its update was
applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imaging_proxy_client import (
    Authorized,
    ClientError,
    Credentials,
    DeadlineExceeded,
    Finished,
    MetadataUpdateClient,
    Retrying,
    RpcError,
)

from devstack.processes import Child, free_port, spawn, wait_until
from devstack.proxies import ProxyProcess
from devstack.servers import _pong
from devstack.settings import Sections
from tests.e2e.conftest import QuotaStack
from tests.support.stack import emulator_client, require_redis_server

LEASE_SECONDS = 2.0
HEARTBEAT_SECONDS = 1.0
TIME_LIMIT = 75.0
"""A client still without an outcome after this long counts as a stream that never ended."""
EDITOR = "demo-editor"


class RedisControl:
    """One redis-server on a fixed port, restarted at will (with its AOF, or empty)."""

    def __init__(self, work: Path, *, aof: bool) -> None:
        self.work = work
        self.port = free_port()
        self.aof = aof
        self.child: Child | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof else []
        argv = [
            str(shutil.which("redis-server")),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--dir", str(self.work), *(persistence or ["--appendonly", "no"])),
        ]
        self.child = spawn("redis", argv, self.work)
        wait_until(lambda: _pong(self.port), self.child)

    def stop(self) -> None:
        if self.child is not None:
            self.child.kill()  # as a crash or a node loss: no final save
            self.child = None

    def restart(self, *, empty: bool = False, down: float = 0.0) -> None:
        self.stop()
        if empty:
            for stale in self.work.glob("appendonly*"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
        time.sleep(down)
        self.start()


@dataclass
class Told:
    """What one client was told."""

    image_set: str
    accepted: bool = False
    outcome: str = ""
    """UPDATED (or another workflow status), an error reason, or "" (never ended)."""
    trail: list[str] = field(default_factory=list)
    """What the client saw, in order (event kinds, retries with their cause)."""


@dataclass
class Figures:
    name: str
    told: list[Told]
    applied: dict[str, int]
    takeover_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> dict[str, object]:
        accepted = [t for t in self.told if t.accepted]
        once = sum(1 for applied in self.applied.values() if applied == 1)
        twice = sum(1 for applied in self.applied.values() if applied >= 2)
        misreported = sum(1 for t in self.told if self._misreported(t))
        hung = sum(1 for t in self.told if not t.outcome)
        silent = sum(
            1 for t in accepted if self.applied[t.image_set] == 0 and t.outcome in ("", "UPDATED")
        )
        takeover = f"{self.takeover_seconds:.1f} s" if self.takeover_seconds is not None else "-"
        return {
            "updates accepted": len({t.image_set for t in accepted}),
            "applied exactly once": once,
            "applied twice": twice,
            "outcomes misreported": misreported,
            "streams not ended": hung,
            "lost without a word": silent,
            "told an error, not applied": sum(
                1
                for t in self.told
                if t.outcome not in ("", "UPDATED") and not self.applied[t.image_set]
            ),
            "takeover time": takeover,
        }

    def _misreported(self, told: Told) -> bool:
        applied = self.applied[told.image_set]
        if told.outcome == "UPDATED":
            return applied == 0
        return bool(told.outcome) and applied > 0  # an error told for an update that happened

    @property
    def breaches(self) -> list[str]:
        rows = self.rows
        names = ("applied twice", "outcomes misreported", "streams not ended")
        found = [f"{name}: {rows[name]}" for name in (*names, "lost without a word") if rows[name]]
        if self.takeover_seconds is not None and self.takeover_seconds > LEASE_SECONDS + 1.0:
            found.append(f"takeover time {self.takeover_seconds:.1f} s > lease + 1 s")
        return found

    def print(self) -> None:
        print(f"\n== {self.name}")
        for name, value in self.rows.items():
            print(f"   {name:<22} {value}")
        for note in self.notes:
            print(f"   {note}")
        for told in self.told:
            if not told.outcome or self._misreported(told):
                print(f"   {told.image_set[:8]} {told.outcome or 'never ended'}: {told.trail}")


@dataclass
class Campaign:
    """One scenario's replicas over a shared backend, and the clients driving them."""

    backend: QuotaStack
    redis: RedisControl
    name: str
    replicas: list[ProxyProcess] = field(default_factory=list)

    def settings(self) -> Sections:
        return {
            "journal": {"url": self.redis.url, "lease_seconds": LEASE_SECONDS},
            "budget": {"url": self.redis.url, "update_rate": 50.0, "update_burst": 50.0},
            "watch": {"heartbeat_seconds": HEARTBEAT_SECONDS},
            "backend": {"connect_timeout_seconds": 1.0, "read_timeout_seconds": 4.0},
            "opa": {"health_interval_seconds": 0.5, "health_failures": 2},
        }

    def start(self, count: int = 3) -> None:
        self.replicas = [
            self.backend.proxy(f"{self.name}-{n}", self.settings()) for n in range(count)
        ]

    def target(self) -> str:
        return "ipv4:" + ",".join(f"127.0.0.1:{p.port}" for p in self.replicas)

    def client(self, only: ProxyProcess | None = None) -> MetadataUpdateClient:
        """The project's client over every replica (round robin), or over `only` one."""
        return MetadataUpdateClient(
            only.endpoint if only else self.target(),
            Credentials(use_tls=False, dev_principal=EDITOR),
            connect_timeout=5.0,
            read_timeout=HEARTBEAT_SECONDS * 4,
            max_attempts=40,
            retry_timeout=TIME_LIMIT,
            channel_options=(("grpc.lb_policy_name", "round_robin"),),
        )

    async def drive(
        self,
        count: int,
        fault: Callable[[], Awaitable[None]],
        *,
        fault_after: float = 1.0,
        takeover: bool = False,
        watcher: ProxyProcess | None = None,
    ) -> Figures:
        """`count` updates at once; `fault` runs `fault_after` s in; then the truth is read.
        `takeover`: a replica is lost, so the time to the first takeover is measured.
        `watcher`: every update is also watched on this replica alone (its stream counted too)."""
        image_sets = self.backend.take(count)
        watches: list[asyncio.Task[Told]] = []
        async with self.client() as client, self.client(watcher) as watching:
            runs = [
                asyncio.create_task(self._one(client, i, watching if watcher else None, watches))
                for i in image_sets
            ]
            await asyncio.sleep(fault_after)
            faulted_at = time.time()
            await fault()
            told = [*await asyncio.gather(*runs)]
            told += await asyncio.gather(*watches)
        figures = Figures(self.name, list(told), await self.applied(image_sets))
        if takeover:
            figures.takeover_seconds = self.takeover_after(faulted_at)
        return figures

    async def _one(
        self,
        client: MetadataUpdateClient,
        image_set: str,
        watching: MetadataUpdateClient | None = None,
        watches: list[asyncio.Task[Told]] | None = None,
    ) -> Told:
        told = Told(image_set)
        document = {"Study": {"DICOM": {"StudyDescription": f"CHAOS {image_set[:8]}"}}}
        events = client.update(
            self.backend.datastore_id,
            image_set,
            "1",
            updatable=document,
            time_limit=TIME_LIMIT,
        )
        return await self._follow(told, events, watching, watches)

    async def _follow(
        self,
        told: Told,
        events: Any,
        watching: MetadataUpdateClient | None = None,
        watches: list[asyncio.Task[Told]] | None = None,
    ) -> Told:
        """Read one stream (an update's or a watch's) to its end, noting what it was told."""
        image_set = told.image_set
        try:
            async for event in events:
                kind = type(event).__name__
                if isinstance(event, Retrying):
                    kind = f"Retrying({str(event.error)[:90]})"
                if len(told.trail) < 12 and (not told.trail or told.trail[-1] != kind):
                    told.trail.append(kind)
                if isinstance(event, Authorized) and not told.accepted and watching:
                    assert watches is not None
                    watch = watching.watch(event.operation_id, time_limit=TIME_LIMIT)
                    watches.append(asyncio.create_task(self._follow(Told(image_set), watch)))
                told.accepted = told.accepted or isinstance(event, Authorized)
                if isinstance(event, Finished):
                    told.outcome = event.state.workflow_status
        except DeadlineExceeded:
            told.outcome = ""  # never ended within the time limit
        except RpcError as error:
            told.outcome = error.reason or error.code.name
        except ClientError as error:
            told.outcome = type(error).__name__
        return told

    async def applied(self, image_sets: list[str]) -> dict[str, int]:
        async with emulator_client(self.backend.emulator_url) as emulator:
            counts = {}
            for image_set in image_sets:
                latest = await emulator.get_image_set(
                    datastoreId=self.backend.datastore_id, imageSetId=image_set
                )
                counts[image_set] = int(latest["versionId"]) - 1
        return counts

    def takeover_after(self, faulted_at: float) -> float | None:
        """From the fault to the first operation another replica resumed (None: none did)."""
        times = [
            _epoch(event["timestamp"])
            for proxy in self.replicas
            for event in proxy.log_events()
            if event.get("event") == "operation_resumed"
            and _epoch(event["timestamp"]) >= faulted_at
        ]
        return min(times) - faulted_at if times else None

    def busiest(self, among: list[ProxyProcess] | None = None) -> ProxyProcess:
        """The replica running the most operations now (the one whose loss hurts most)."""

        def running(proxy: ProxyProcess) -> float:
            for line in proxy.metrics().splitlines():
                if line.startswith("imaging_proxy_running_operations "):
                    return float(line.split()[1])
            return 0.0

        return max(among or self.replicas, key=running)

    def log_count(self, event_name: str) -> int:
        return sum(1 for p in self.replicas for e in p.log_events() if e.get("event") == event_name)

    def stop(self) -> None:
        for proxy in self.replicas:
            with contextlib.suppress(OSError):
                os.kill(proxy.pid, signal.SIGCONT)
            with contextlib.suppress(Exception):
                proxy.kill()


async def readiness(proxy: ProxyProcess) -> bool | None:
    """Whether `proxy` says it is ready (None: it does not answer)."""
    async with grpc.aio.insecure_channel(proxy.endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=1)
        except grpc.aio.AioRpcError:
            return None
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def freeze(proxy: ProxyProcess) -> None:
    os.kill(proxy.pid, signal.SIGSTOP)


def thaw(proxy: ProxyProcess) -> None:
    os.kill(proxy.pid, signal.SIGCONT)


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def campaign(backend: QuotaStack, work: Path, name: str, *, aof: bool = True) -> Iterator[Campaign]:
    require_redis_server()  # skips without redis-server, except under CI (an error there)
    (work / name).mkdir(parents=True)
    redis = RedisControl(work / name, aof=aof)
    running = Campaign(backend, redis, name)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        redis.stop()
