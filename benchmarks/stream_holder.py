"""Benchmark 3's client side, run as its own processes: many WatchUpdate streams held open.

Opens `--streams` WatchUpdate streams over the operation ids in `--operations` (round robin),
spread over `--channels` connections and opened `--batch` at a time (a burst of thousands of
pending calls is what trips gRPC's pending-call limit). A stream counts as open once its first
event (the replayed `authorized`) arrives. When every stream is open or has failed, it writes
`--ready-file`; it then reads every stream to its end (`finished`) or until `--max-seconds`,
and writes `--results-file`: events by kind, errors by status code, when each `finished` arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from benchmarks import measure, workload
from service.cli.readyfile import read_json, write_json_atomically


@dataclass
class Tally:
    """What this process's streams saw."""

    opened: int = 0
    failed_to_open: int = 0
    events: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    finished_at: list[float] = field(default_factory=list)


async def watch(
    stub: pb_grpc.MetadataUpdateServiceAsyncStub,
    operation_id: str,
    principal: str,
    tally: Tally,
    settled: asyncio.Event,
) -> None:
    """Read one stream to its end; `settled` is set once it is open (or has failed)."""
    request = pb.WatchUpdateRequest(operation_id=operation_id)
    opened = False
    try:
        async for event in stub.WatchUpdate(request, metadata=workload.caller(principal)):
            if not opened:
                opened = True
                tally.opened += 1
                settled.set()
            kind = workload.event_kind(event)
            tally.events[kind] += 1
            if kind == "finished":
                tally.finished_at.append(time.time())
    except grpc.aio.AioRpcError as error:
        tally.errors[error.code().name] += 1
        if not opened:
            tally.failed_to_open += 1
    finally:
        settled.set()


@dataclass(frozen=True)
class Plan:
    endpoint: str
    operations: tuple[tuple[str, str], ...]
    """(operation id, principal who started it)."""
    streams: int
    channels: int
    batch: int
    max_seconds: float


async def hold(plan: Plan, ready_file: Path) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + plan.max_seconds
    channels = [workload.channel(plan.endpoint) for _ in range(plan.channels)]
    stubs = [pb_grpc.MetadataUpdateServiceStub(channel) for channel in channels]
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, plan.streams, plan.batch):
        batch = [asyncio.Event() for _ in range(start, min(start + plan.batch, plan.streams))]
        for index, settled in enumerate(batch, start):
            operation_id, principal = plan.operations[index % len(plan.operations)]
            stub = stubs[index % len(stubs)]
            tasks.append(asyncio.create_task(watch(stub, operation_id, principal, tally, settled)))
        with contextlib.suppress(TimeoutError):  # the next batch starts once this one is open
            async with asyncio.timeout_at(_loop_time(deadline)):
                await asyncio.gather(*(settled.wait() for settled in batch))
    write_json_atomically(ready_file, {"opened": tally.opened, "failed": tally.failed_to_open})
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    tally.errors["LEFT_OPEN_AT_DEADLINE"] += len(pending)
    for channel in channels:
        await channel.close()
    return tally


def _loop_time(monotonic_deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + monotonic_deadline - time.monotonic()


@dataclass(frozen=True)
class Crowd:
    """What the holder processes together open (the coordinator's side)."""

    endpoint: str
    streams: int
    processes: int
    channels: int
    batch: int
    max_seconds: float


@dataclass
class Holders:
    """The running holder processes and their files."""

    processes: list[subprocess.Popen[bytes]]
    ready_files: list[Path]
    results_files: list[Path]

    def ready(self) -> list[dict[str, int]]:
        """The ready documents written so far; RuntimeError if a holder died before its own."""
        documents = []
        for path, process in zip(self.ready_files, self.processes, strict=True):
            if process.poll() is not None and not path.exists():
                raise RuntimeError(f"a stream holder exited with {process.returncode}")
            if path.exists():
                documents.append(read_json(path))
        return documents

    def results(self) -> list[dict[str, Any]]:
        return [read_json(path) for path in self.results_files]


def launch(crowd: Crowd, operations: Sequence[tuple[str, str]], work: Path) -> Holders:
    """Start `crowd.processes` holders sharing `crowd.streams` over `operations`."""
    work.mkdir(parents=True, exist_ok=True)
    operations_file = work / "operations.json"
    operations_file.write_text(json.dumps([list(pair) for pair in operations]))
    per_process = math.ceil(crowd.streams / crowd.processes)
    holders = Holders([], [], [])
    for index in range(crowd.processes):
        holders.ready_files.append(work / f"ready-{index}.json")
        holders.results_files.append(work / f"results-{index}.json")
        argv = [sys.executable, "-m", "benchmarks.stream_holder", "--endpoint", crowd.endpoint]
        argv += ["--operations", str(operations_file), "--streams", str(per_process)]
        argv += ["--channels", str(crowd.channels), "--batch", str(crowd.batch)]
        argv += ["--max-seconds", str(crowd.max_seconds)]
        argv += ["--ready-file", str(holders.ready_files[-1])]
        argv += ["--results-file", str(holders.results_files[-1])]
        with (work / f"holder-{index}.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        holders.processes.append(process)
    return holders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_holder", description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--operations", type=Path, required=True, help="JSON [[id, principal]]")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--results-file", type=Path, required=True)
    args = parser.parse_args(argv)
    operations = tuple((str(op), str(who)) for op, who in json.loads(args.operations.read_text()))
    plan = Plan(
        args.endpoint, operations, args.streams, args.channels, args.batch, args.max_seconds
    )
    tally = uvloop.run(hold(plan, args.ready_file))
    results = {
        "opened": tally.opened,
        "failed_to_open": tally.failed_to_open,
        "events": dict(tally.events),
        "errors": dict(tally.errors),
        "finished_at": tally.finished_at,
        "cpu_seconds": measure.own_cpu_seconds(),
        "peak_rss_bytes": measure.peak_rss_bytes(os.getpid()),
    }
    write_json_atomically(args.results_file, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
