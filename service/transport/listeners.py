"""Listeners: the gRPC server (the service, health, reflection) bound to its ports, and an
optional plaintext health-only listener for probes without a certificate."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2_grpc
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from service.core.config import ServerSettings, Settings
from service.core.errors import StartupError
from service.identity.callers import Authenticator
from service.observability.metrics import Metrics
from service.operations.approvals import Approvals
from service.operations.pipeline import Pipeline
from service.operations.steering import Steering
from service.transport import reflection
from service.transport.open_streams import OpenStreams
from service.transport.server import SERVICE_NAME, MetadataUpdateServicer
from service.transport.tls import server_credentials

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Listeners:
    """The gRPC server (service, health, reflection) and an optional plaintext health-only one."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    probes_only: grpc.aio.Server | None
    """grpc.health.v1 alone, in plaintext on `health_port`: for probes without a certificate."""
    port: int
    tls: bool

    async def start(self) -> None:
        for listener in (self.server, self.probes_only):
            if listener is not None:
                await listener.start()

    async def not_serving(self) -> None:
        """Every health name NOT_SERVING (the first step of a shutdown)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, with a grace period for open streams; the probes-only listener
        answers NOT_SERVING throughout it."""
        started = time.monotonic()
        await self.server.stop(grace_seconds)
        log.info("stopped", waited_seconds=round(time.monotonic() - started, 3))
        if self.probes_only is not None:
            await self.probes_only.stop(None)


def listeners(
    settings: Settings,
    pipeline: Pipeline,
    steering: Steering,
    approvals: Approvals,
    authenticator: Authenticator,
    metrics: Metrics,
) -> Listeners:
    """Bind the ports (port 0: any free one); nothing is served before `start`."""
    server = grpc.aio.server(options=settings.server.grpc_options())
    open_streams = OpenStreams(settings.limits, metrics)
    servicer = MetadataUpdateServicer(
        pipeline, steering, approvals, authenticator, metrics, open_streams
    )
    pb_grpc.add_MetadataUpdateServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((SERVICE_NAME, health.SERVICE_NAME), server)
    address = f"{settings.server.host}:{settings.server.port}"
    credentials = server_credentials(settings.identity)
    port = _bind(server, address, credentials, "port")
    probes_only = _probes_only(settings.server, health_servicer)
    return Listeners(server, health_servicer, probes_only, port, credentials is not None)


def _probes_only(
    settings: ServerSettings, health_servicer: health.aio.HealthServicer
) -> grpc.aio.Server | None:
    if not settings.health_port:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _bind(server, f"{settings.host}:{settings.health_port}", None, "health_port")
    return server


def _bind(
    server: grpc.aio.Server,
    address: str,
    credentials: grpc.ServerCredentials | None,
    key: str,
) -> int:
    """Listen on `address`; a port in use (or an address not ours) is a StartupError naming it."""
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError:  # gRPC says only "Failed to bind"; the usual cause is a port in use
        raise StartupError(
            f"server.{key}: cannot listen on {address} (in use by another process?)"
        ) from None
