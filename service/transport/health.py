"""Health: liveness (the process serves) kept apart from readiness (OPA can be reached).

The names grpc.health.v1 reports:

    "", "liveness"                 SERVING while the process runs; NOT_SERVING only on shutdown
    "readiness", SERVICE_NAME      NOT_SERVING when OPA cannot be reached (its GET /health failed
                                   `health_failures` probes in a row, or never answered yet), when
                                   a shared journal's Redis does not answer PING (as many probes
                                   in a row), or when no AWS credentials were found at start-up
    "opa", "healthimaging"         information: each dependency's reachability, judged the same way
    "redis"                        the shared journal's Redis (only with a Redis journal)
    "aws-credentials"              whether botocore's credential chain found credentials at start-up

Readiness probes OPA's health endpoint with its own timeout, never a policy decision: a decision
slowed by load is not an outage, and no probe result ever touches liveness, so a busy OPA can
neither restart the proxy nor take it out of rotation. HealthImaging is shared by every replica,
so its outage is reported, not acted on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol

import structlog
from grpc_health.v1 import health, health_pb2

from service.core.errors import ProxyError

log = structlog.get_logger(__name__)

LIVENESS = "liveness"
READINESS = "readiness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Reachability:
    """Up after one answered probe, down after `failures` failed ones in a row. Pure."""

    def __init__(self, failures: int) -> None:
        self._failures = failures
        self._failed = 0
        self.up = False

    def observe(self, answered: bool) -> bool:
        self._failed = 0 if answered else self._failed + 1
        if answered:
            self.up = True
        elif self._failed >= self._failures:
            self.up = False
        return self.up


class Probe(Protocol):
    """A dependency's reachability check (opa.OpaAdmin, healthimaging.BackendProbe)."""

    async def answers(self) -> bool: ...


class PingProbe:
    """Whether a store answers a ping (the shared journal's Redis): its errors are domain ones."""

    def __init__(self, ping: Callable[[], Awaitable[None]]) -> None:
        self._ping = ping

    async def answers(self) -> bool:
        try:
            await self._ping()
        except ProxyError:
            return False
        return True


class Health:
    """Sets every health name: liveness once, readiness and the dependencies after each probe."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        service_name: str,
        probes: Mapping[str, Probe],
        failures: int,
        required: Collection[str] = ("opa",),
    ) -> None:
        self._servicer = servicer
        self._service_name = service_name
        self._probes = probes
        self._required = tuple(required)
        """The probes readiness needs (OPA, credentials); the others are information."""
        self._states = {name: Reachability(failures) for name in probes}

    async def live(self) -> None:
        """The process serves: liveness SERVING, readiness NOT_SERVING until OPA answers."""
        for name in ("", LIVENESS):
            await self._servicer.set(name, SERVING)
        for name in (READINESS, self._service_name, *self._probes):
            await self._servicer.set(name, NOT_SERVING)

    async def probe_forever(self, interval: float) -> None:
        was: dict[str, bool] | None = None
        while True:
            now = await self.probe_once()
            if now != was:
                log.info("readiness", **now)
                was = now
            await asyncio.sleep(interval)

    async def probe_once(self) -> dict[str, bool]:
        """Probe every dependency at once; readiness needs every required one up."""
        answered = await asyncio.gather(*(probe.answers() for probe in self._probes.values()))
        up = {
            name: state.observe(ok)
            for (name, state), ok in zip(self._states.items(), answered, strict=True)
        }
        ready = all(up[name] for name in self._required)
        statuses = up | {READINESS: ready, self._service_name: ready}
        for name, ok in statuses.items():
            await self._servicer.set(name, SERVING if ok else NOT_SERVING)
        return up
