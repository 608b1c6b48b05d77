"""Benchmark 3b, idle streams side by side: what a silent status stream costs the proxy vs gRPC.

In one run, the same holder processes (`stream_holder`: same channels, same batches) open
`--streams` WatchUpdate streams against a trivial grpc.aio server (`trivial_server`: one event,
then silence) and then against the proxy (WatchUpdate on updates the emulator stalls, as in
`waiting`), hold them `--hold-seconds`, and close them. For each server: its RSS after start,
before the streams (the proxy with its 100 stalled updates started, the trivial server after a
few calls) and with them (peak while held); per stream, and the ratio proxy/trivial per stream
against issue 12's goal. Also the top imports of `service.app` by cumulative time (`python -X
importtime`), which show what the proxy's base RSS is made of.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from benchmarks import goals, measure, stack, stream_holder, trivial_server, waiting, workload
from benchmarks.measure import mb

TARGET_RATIO = 1.15
IMPORTS_SHOWN = 15
WARM_UP_CALLS = 10


@dataclass(frozen=True)
class Plan:
    streams: int = 10_000
    image_sets: int = 100
    holders: int = 2
    channels: int = 10
    batch: int = 500
    hold_seconds: float = 10.0


async def hold(
    endpoint: str, pid: int, operations: list[tuple[str, str]], plan: Plan, work: Path
) -> dict[str, Any]:
    """Open `plan.streams` streams to `endpoint` from the holders, hold them, close them."""
    before = measure.sample(pid).rss_bytes
    crowd = stream_holder.Crowd(
        endpoint, plan.streams, plan.holders, plan.channels, plan.batch, max_seconds=600
    )
    holders = stream_holder.launch(crowd, operations, work)
    try:
        opening = time.monotonic()
        await waiting.settle(lambda: len(holders.ready()) == plan.holders, "opening streams", 300)
        open_seconds = time.monotonic() - opening
        opened = sum(document["opened"] for document in holders.ready())
        peak = 0
        deadline = time.monotonic() + plan.hold_seconds
        while time.monotonic() < deadline:
            peak = max(peak, measure.sample(pid).rss_bytes)
            await asyncio.sleep(0.5)
    finally:
        for process in holders.processes:
            process.kill()
            process.wait()
    return {
        "streams_open": opened,
        "open_seconds": open_seconds,
        "rss_before_streams_mb": mb(before),
        "rss_with_streams_mb": mb(peak),
        "kb_per_stream": (peak - before) / 1e3 / max(1, opened),
    }


async def warm_trivial(endpoint: str) -> None:
    """A few calls of each kind, as the proxy has served its 100 updates before its streams."""
    async with workload.channel(endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        for _ in range(WARM_UP_CALLS):
            await stub.EvaluateUpdate(workload.grpc_request("d", "i", "1", 0))
            call = stub.WatchUpdate(pb.WatchUpdateRequest(operation_id="warm-up"))
            await call.read()
            call.cancel()


async def side_by_side(
    running: stack.Stack, trivial: tuple[int, str], plan: Plan, base: dict[str, float]
) -> dict[str, Any]:
    trivial_pid, trivial_endpoint = trivial
    await warm_trivial(trivial_endpoint)
    work = running.log_dir / "holders"
    results = {
        "trivial": await hold(
            trivial_endpoint,
            trivial_pid,
            [("trivial", stack.PRINCIPALS[0])],
            plan,
            work / "trivial",
        )
    }
    running.set_faults({"update_stall_rate": 1.0})
    async with workload.channel(running.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        updates, tasks = await waiting.start_updates(stub, running, running.image_set_ids, "1")
        operations = [(u.operation_id, u.principal) for u in updates]
        results["proxy"] = await hold(
            running.endpoint, running.pid("proxy-0"), operations, plan, work / "proxy"
        )
        running.emulator("POST", "release-stalled", {})
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks)
    running.set_faults({})
    for name, figures in results.items():
        figures["base_rss_mb"] = base[name]
    return results


def summarise(results: dict[str, Any], imports: list[dict[str, Any]]) -> dict[str, Any]:
    proxy, trivial = results["proxy"], results["trivial"]
    ratio = (
        proxy["kb_per_stream"] / trivial["kb_per_stream"]
        if trivial["kb_per_stream"] > 0
        else float("nan")
    )
    return {
        "servers": results,
        "per_stream_ratio": ratio,
        "base_rss_ratio": proxy["base_rss_mb"] / trivial["base_rss_mb"],
        "imports_by_cumulative_us": imports,
        "goals": [
            goals.at_most("idle stream cost per stream, proxy/trivial gRPC", ratio, TARGET_RATIO)
        ],
    }


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def top_imports(module: str = "service.app", count: int = IMPORTS_SHOWN) -> list[dict[str, Any]]:
    """`python -X importtime -c "import <module>"`: the imports costing most, cumulative µs."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [
        {"module": m[4], "self_us": int(m[1]), "cumulative_us": int(m[2]), "depth": len(m[3]) // 2}
        for line in completed.stderr.splitlines()
        if (m := IMPORT_LINE.match(line))
    ]
    return sorted(rows, key=lambda row: int(row["cumulative_us"]), reverse=True)[:count]


def report(summary: dict[str, Any]) -> str:
    servers = summary["servers"]
    rows = [
        [
            name,
            f"{s['streams_open']:,}",
            s["open_seconds"],
            s["base_rss_mb"],
            s["rss_before_streams_mb"],
            s["rss_with_streams_mb"],
            s["kb_per_stream"],
        ]
        for name, s in servers.items()
    ]
    columns = [
        "server",
        "streams open",
        "opened in s",
        "base RSS MB",
        "before streams MB",
        "with streams MB",
        "KB per stream",
    ]
    ratios = measure.table(
        ["proxy / trivial", "value"],
        [["per stream", summary["per_stream_ratio"]], ["base RSS", summary["base_rss_ratio"]]],
    )
    imports = measure.table(
        [
            "import (python -X importtime -c 'import service.app')",
            "depth",
            "cumulative ms",
            "self ms",
        ],
        [
            [r["module"], r["depth"], r["cumulative_us"] / 1e3, r["self_us"] / 1e3]
            for r in summary["imports_by_cumulative_us"]
        ],
    )
    return "\n\n".join(
        [measure.table(columns, rows), ratios, goals.table(summary["goals"]), imports]
    )


def run(plan: Plan) -> dict[str, Any]:
    options = stack.StackOptions(image_sets=plan.image_sets, update_delay=0.5)
    with stack.running(options, "idle-streams") as running:
        proxy_base = measure.sample(running.pid("proxy-0")).rss_bytes
        with trivial_server.running(running.log_dir) as (child, endpoint):
            base = {"proxy": mb(proxy_base), "trivial": mb(measure.sample(child.pid).rss_bytes)}
            results = uvloop.run(side_by_side(running, (child.pid, endpoint), plan, base))
    return summarise(results, top_imports())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_streams", description=__doc__)
    parser.add_argument("--streams", type=int, default=Plan.streams, help="per server")
    parser.add_argument("--holders", type=int, default=Plan.holders, help="client processes")
    parser.add_argument("--hold-seconds", type=float, default=Plan.hold_seconds)
    args = parser.parse_args(argv)
    plan = Plan(streams=args.streams, holders=args.holders, hold_seconds=args.hold_seconds)
    summary = run(plan)
    name = "idle-streams" if plan.streams == Plan.streams else f"idle-streams-{plan.streams}"
    path = measure.write_results(name, {"plan": plan.__dict__, **summary})
    print(report(summary))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
