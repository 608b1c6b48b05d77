"""A local OTLP/gRPC trace sink: the traced proxy's exporter gets a real peer that counts spans.

Without a collector the exporter would fail, back off and retry, and the benchmark would measure
those retries rather than tracing. The sink answers every Export with OK and keeps only a count.
It serves from a thread of the benchmark's process (so its CPU shows under `client`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc


class SpanCounter(pb_grpc.TraceServiceServicer):
    """TraceService.Export: count the spans received, accept them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans = 0
        self._exports = 0

    def Export(
        self, request: pb.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> pb.ExportTraceServiceResponse:
        received = sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        with self._lock:
            self._spans += received
            self._exports += 1
        return pb.ExportTraceServiceResponse()

    @property
    def spans(self) -> int:
        with self._lock:
            return self._spans

    @property
    def exports(self) -> int:
        with self._lock:
            return self._exports


class Sink:
    """A running sink: where to export to, and what it received so far."""

    def __init__(self, port: int, counter: SpanCounter) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.counter = counter


@contextlib.contextmanager
def serving() -> Iterator[Sink]:
    """Serve on a free port of 127.0.0.1 while inside."""
    counter = SpanCounter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_TraceServiceServicer_to_server(counter, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Sink(port, counter)
    finally:
        server.stop(grace=5).wait()
