"""Composition root: one AsyncExitStack opens every long-lived part once, in dependency order.

Opened: OPA client, aioboto3 client, journal, budget, admission, watcher, runner, then the
server. Shutdown follows DESIGN.md's order, spelled out in `_serving` (the stack alone would
close clients before streams had their grace): health NOT_SERVING → no new submits (queued
callers are told to re-attach) → stop accepting, grace for open streams → operations cancelled
(their records stay as they were, for the next owner) → the stack closes the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import structlog

from service.admission.budget import Budget
from service.admission.stages import shared_stages
from service.admission.write_queue import Admission
from service.backend.healthimaging import BackendProbe, CredentialsProbe, HealthImaging
from service.backend.references import References
from service.core.config import Settings
from service.identity.callers import Authenticator
from service.journal import open_journal
from service.observability import audit, tracing
from service.observability.metrics import Metrics
from service.operations.approvals import Approvals
from service.operations.event_streams import Streams
from service.operations.image_set_polls import Watcher
from service.operations.ownership import Leased, Ownership
from service.operations.pipeline import Pipeline
from service.operations.runner import Runner
from service.operations.steering import Steering
from service.policy.decisions import PolicyClient
from service.policy.opa_admin import OpaAdmin
from service.transport.health import Health, PingProbe, Probe
from service.transport.listeners import Listeners, listeners
from service.transport.server import SERVICE_NAME

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger(__name__)
CREDENTIALS = "aws-credentials"
REDIS = "redis"


@dataclass(frozen=True)
class Parts:
    """The long-lived parts behind the server."""

    pipeline: Pipeline
    steering: Steering
    approvals: Approvals
    runner: Runner
    admission: Admission
    probes: Mapping[str, Probe]
    """Reachability of each dependency, by health name ("opa", "healthimaging", CREDENTIALS)."""
    ownership: Ownership | None
    """With a shared journal: this replica's lease (other replicas' operations may need taking
    over, and this one's may be taken)."""


async def open_parts(settings: Settings, stack: AsyncExitStack, metrics: Metrics) -> Parts:
    """Open every long-lived part once, in dependency order; `stack` closes them in reverse."""
    policy = await stack.enter_async_context(PolicyClient.open(settings.opa))
    backend = await stack.enter_async_context(HealthImaging.open(settings.backend))
    session = await stack.enter_async_context(aiohttp.ClientSession())  # the health probes'
    opa_health = await stack.enter_async_context(
        OpaAdmin(settings.opa, settings.opa.health_timeout_seconds)
    )
    journal = await stack.enter_async_context(open_journal(settings.journal))
    redis_url = settings.budget.url or (settings.journal.url if journal.shared else "")
    budget = await stack.enter_async_context(
        Budget.open(
            settings.budget, settings.backend, redis_url, settings.journal.key_prefix, metrics
        )
    )
    stages = shared_stages(settings.admission, settings.limits, budget, metrics)
    admission = Admission(settings.admission, budget, journal, metrics, stages.flows)
    admission.start()
    stack.push_async_callback(admission.close)
    watcher = Watcher(backend, stages.polls, settings.watch, metrics)
    stack.push_async_callback(watcher.close)
    runner = Runner(
        backend, watcher, admission, budget, journal, settings.watch, metrics, settings.limits
    )
    stack.push_async_callback(runner.close)
    streams = Streams(runner, journal, settings.watch.heartbeat_seconds)
    references = References(backend, stages.reference_reads, stages.polls)
    pipeline = Pipeline(
        policy, runner, streams, metrics, settings.limits, stages.decisions, references
    )
    probes: dict[str, Probe] = {
        "opa": opa_health,
        "healthimaging": BackendProbe(session, settings.backend),
        CREDENTIALS: CredentialsProbe(backend),
    }
    ownership = None
    if isinstance(journal, Leased):
        ownership = Ownership(journal, runner, settings.journal.lease_seconds, metrics)
        probes[REDIS] = PingProbe(journal.ping)
    steering = Steering(policy, runner, journal, metrics)
    approvals = Approvals(policy, runner, journal, backend, budget, metrics, settings.limits)
    return Parts(pipeline, steering, approvals, runner, admission, probes, ownership)


async def run(
    settings: Settings,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    tracer_provider: TracerProvider | None = None,
) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM), then shut down in a fixed order.

    `tracer_provider`: trace into this one (a test's) rather than as `settings.tracing` says."""
    stop = stop or asyncio.Event()
    authenticator = Authenticator.from_settings(settings.identity)  # bad keys stop the start here
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        stack.enter_context(tracing.opened(settings.tracing, tracer_provider))  # before clients
        stack.enter_context(audit.opened(settings.audit))
        if settings.server.metrics_port:
            stack.enter_context(metrics.serving(settings.server.host, settings.server.metrics_port))
        parts = await open_parts(settings, stack, metrics)
        resumed = await parts.runner.resume()
        served = listeners(
            settings, parts.pipeline, parts.steering, parts.approvals, authenticator, metrics
        )
        await stack.enter_async_context(_serving(settings, parts, served))
        _install_signal_handlers(stop)
        address = f"{settings.server.host}:{served.port}"
        log.info("serving", address=address, tls=served.tls, resumed=resumed)
        if ready is not None:
            ready(served.port)
        await stop.wait()


@contextlib.asynccontextmanager
async def _serving(settings: Settings, parts: Parts, served: Listeners) -> AsyncIterator[None]:
    """Serve (with the health probes and the takeover loop); leave in the shutdown's order."""
    checks = Health(
        served.health,
        SERVICE_NAME,
        parts.probes,
        settings.opa.health_failures,
        # Without credentials no update can succeed; without the shared journal's Redis none
        # can be recorded.
        required=("opa", CREDENTIALS, *((REDIS,) if parts.ownership else ())),
    )
    await checks.live()  # before the first call can ask
    await served.start()
    background = _background(settings, parts, checks)
    try:
        yield
    finally:
        log.info("shutting_down", grace_seconds=settings.server.grace_seconds)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await served.not_serving()
        await parts.admission.close()
        await served.stop(settings.server.grace_seconds)


def _background(settings: Settings, parts: Parts, checks: Health) -> list[asyncio.Task[None]]:
    interval = settings.opa.health_interval_seconds
    tasks = [asyncio.create_task(checks.probe_forever(interval), name="health")]
    if parts.ownership:  # keep our lease; take over the operations of replicas that went away
        interval = min(settings.journal.lease_seconds / 2, 1.0)  # taken over ≤ lease + 1 s
        tasks.append(asyncio.create_task(parts.ownership.keep_forever(), name="lease"))
        tasks.append(asyncio.create_task(parts.runner.take_over_forever(interval), name="takeover"))
        tasks.append(asyncio.create_task(parts.steering.hear_cancels_forever(), name="cancels"))
        tasks.append(asyncio.create_task(parts.approvals.hear_nudges_forever(), name="nudges"))
    return tasks


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
