"""`python -m benchmarks.tracing_shutdown [--runs N]`: how long `serve` takes to stop (SIGTERM
to exit) when its OTLP collector is down, beside the same proxy with tracing off.

Each run starts a real `imaging-proxy serve` (tracing to a port nothing listens on, or off),
makes one RPC so there is a span to export, sends SIGTERM and times the exit. OPA and
HealthImaging are not needed: the RPC is refused, which is still a traced call. The difference
between the two modes is what a dead collector adds to a shutdown (docs/OPERATIONS.md, Tracing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import grpc

from devstack.processes import free_port
from devstack.servers import start_proxy

EVALUATE = "/imaging.metadata.v1.MetadataUpdateService/EvaluateUpdate"


def one_stop(work: Path, traced: bool) -> float:
    """Seconds from SIGTERM to exit of a proxy that served one call."""
    config = work / "proxy.toml"
    dead = f"http://127.0.0.1:{free_port()}"
    config.write_text(f'[tracing]\nenabled = {str(traced).lower()}\nendpoint = "{dead}"\n')
    args = ["--config", str(config), "--insecure-dev-identity", "--opa-url", dead, "--port", "0"]
    child, port = start_proxy(work, [*args, "--endpoint-url", dead])
    try:
        # refused (no OPA), but still one traced RPC
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, suppress(grpc.RpcError):
            channel.unary_unary(EVALUATE)(b"", metadata=(("x-dev-principal", "b"),), timeout=5)
        started = time.perf_counter()
        child.stop(60)
        return time.perf_counter() - started
    finally:
        child.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing_shutdown")
    parser.add_argument("--runs", type=int, default=3, help="stops per mode (default 3)")
    args = parser.parse_args(argv)
    for traced in (False, True):
        with tempfile.TemporaryDirectory(prefix="tracing-shutdown-") as folder:
            seconds = [one_stop(Path(folder), traced) for _ in range(args.runs)]
        mode = "collector down" if traced else "tracing off   "
        listed = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{mode}: median {statistics.median(seconds):.2f} s ({listed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
