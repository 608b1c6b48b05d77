"""The reference for gRPC's own cost: the proxy's service and messages, served by trivial handlers.

`python -m benchmarks.trivial_server --port P --ready-file F` serves
imaging.metadata.v1.MetadataUpdateService with grpc.aio on uvloop and the server options the
proxy uses by default (`ServerSettings.grpc_options`, as `service.transport.server` does).
EvaluateUpdate
returns a fixed Evaluation without work; WatchUpdate yields one `authorized` event (what the
proxy replays first) and is then silent until the client cancels. UpdateImageSetMetadata
answers UNIMPLEMENTED. It imports grpc, uvloop, the generated stubs and the settings only, so
its base RSS is gRPC's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import uvloop
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from service.cli.readyfile import write_json_atomically
from service.core.config import ServerSettings

if TYPE_CHECKING:
    from devstack.processes import Child

EVALUATION = pb.Evaluation(
    decision=pb.Decision(allow=True, decision_id="trivial"), kind="dicom_updates"
)
AUTHORIZED = pb.UpdateEvent(operation_id="trivial", authorized=pb.Authorized(decision_id="trivial"))


class TrivialServicer(pb_grpc.MetadataUpdateServiceServicer):
    """No identity, no normaliser, no decision, no journal: only gRPC's work remains."""

    async def EvaluateUpdate(
        self, request: pb.UpdateImageSetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Evaluation:
        return EVALUATION

    async def WatchUpdate(
        self, request: pb.WatchUpdateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.UpdateEvent]:
        yield AUTHORIZED
        await asyncio.Event().wait()  # silent until cancelled: no heartbeat, no poll

    def UpdateImageSetMetadata(
        self, request: pb.UpdateImageSetMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Iterator[pb.UpdateEvent]:
        """Not a reference for anything measured: UNIMPLEMENTED."""
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        return iter(())


async def serve(port: int, ready_file: Path) -> None:
    server = grpc.aio.server(options=ServerSettings().grpc_options())
    pb_grpc.add_MetadataUpdateServiceServicer_to_server(TrivialServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    write_json_atomically(ready_file, {"endpoint": f"127.0.0.1:{bound}"})
    await server.wait_for_termination()


@contextmanager
def running(log_dir: Path) -> Iterator[tuple[Child, str]]:
    """The trivial server as a child process on a free port: (child, endpoint), stopped after."""
    from devstack.processes import free_port, spawn, wait_for_json  # not in the server

    ready_file = log_dir / "trivial-server.ready.json"
    argv = [sys.executable, "-m", "benchmarks.trivial_server", "--port", str(free_port())]
    child = spawn("trivial-server", [*argv, "--ready-file", str(ready_file)], log_dir)
    try:
        document = wait_for_json(ready_file, child)
        yield child, str(document["endpoint"])
    finally:
        child.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.trivial_server", description=__doc__
    )
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--ready-file", type=Path, required=True, help="JSON {endpoint}, once up")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.ready_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
