"""Benchmark 3, waiting at scale: 10,000 open status streams over 100 updates that take long.

Design. Real updates take seconds to minutes and the default write quota is 0.25/s, so 10,000
streams cannot each be an update of its own: they are 100 updates watched 100 times each.
1. The emulator stalls every update (its `update_stall_rate` fault = 1: LOCKED/UPDATING until
   released). This process starts one UpdateImageSetMetadata per image set through the proxy
   and keeps those 100 streams open (the write quota is raised for this set-up only).
2. `--holders` separate processes (`benchmarks.stream_holder`) open the other 9,900 streams as
   WatchUpdate on those operations, over several connections, 500 at a time.
3. Hold for `--hold-seconds`: the proxy's RSS, its CPU (heartbeats every 5 s per stream and the
   poll loops are all it does), the clients' CPU, and the backend GetImageSet rate from the
   emulator's request log. GetImageSet keeps HealthImaging's default quota (25/s, burst 50)
   unless `--read-quota off`: whether 100 waiting image sets stay under it is part of the test.
4. Release every stalled update: how long until all 10,000 streams have `finished`, and how
   many GetImageSet calls each update cost in all.
5. Calls per finished update against how long an update takes (`--durations`): 100 fresh
   updates, each released after D seconds, one stream each.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from benchmarks import measure, stack, stream_holder, workload
from benchmarks.measure import mb, percentile
from devstack.settings import update_quota
from service.cli.readyfile import read_json

REPO = Path(__file__).resolve().parents[1]
HEAP_LINES = 20
SETUP_WRITE_QUOTA = update_quota(200, 200)


@dataclass(frozen=True)
class Plan:
    image_sets: int = 100
    streams: int = 10_000
    holders: int = 2
    channels: int = 10
    batch: int = 500
    hold_seconds: float = 30.0
    read_quota: str = "default"
    heartbeat_seconds: float = 0.0
    """0: the proxy's default."""
    durations: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)
    trace_memory: Path | None = None
    """Run the proxy with tracemalloc and report its heap while the streams are held."""
    profile: Path | None = None
    """Run the proxy under pyinstrument (save the session here)."""
    malloc_arena_max: int = 0
    """glibc MALLOC_ARENA_MAX for the proxy (0: glibc's default, 8 per core)."""


@dataclass
class Update:
    """One update started through the proxy, and its stream read to the end in the background."""

    image_set_id: str
    principal: str
    operation_id: str = ""
    events: Counter[str] = field(default_factory=Counter)
    error: str = ""
    submitted_at: float = math.nan
    finished_at: float = math.nan


async def start_updates(
    stub: pb_grpc.MetadataUpdateServiceAsyncStub,
    running: stack.Stack,
    image_set_ids: Sequence[str],
    version: str,
) -> tuple[list[Update], list[asyncio.Task[None]]]:
    """Start one update per image set; return once each is `submitted` (its stream reads on)."""
    updates = [
        Update(image_set_id, stack.PRINCIPALS[index % len(stack.PRINCIPALS)])
        for index, image_set_id in enumerate(image_set_ids)
    ]
    submitted = [asyncio.Event() for _ in updates]
    tasks = [
        asyncio.create_task(_follow(stub, running, update, version, index, event))
        for index, (update, event) in enumerate(zip(updates, submitted, strict=True))
    ]
    async with asyncio.timeout(120):
        await asyncio.gather(*(event.wait() for event in submitted))
    failed = [u for u in updates if u.error]
    if failed:
        raise RuntimeError(f"{len(failed)} updates failed to start: {failed[0].error}")
    return updates, tasks


async def _follow(
    stub: pb_grpc.MetadataUpdateServiceAsyncStub,
    running: stack.Stack,
    update: Update,
    version: str,
    sequence: int,
    submitted: asyncio.Event,
) -> None:
    request = workload.grpc_request(running.datastore_id, update.image_set_id, version, sequence)
    try:
        async for event in stub.UpdateImageSetMetadata(
            request, metadata=workload.caller(update.principal)
        ):
            kind = workload.event_kind(event)
            update.operation_id = event.operation_id
            update.events[kind] += 1
            if kind == "submitted":
                update.submitted_at = time.time()
                submitted.set()
            elif kind == "finished":
                update.finished_at = time.time()
    except grpc.aio.AioRpcError as error:
        update.error = f"{error.code().name}: {error.details()}"
    finally:
        submitted.set()


def get_image_set_calls(running: stack.Stack, since: float, until: float) -> dict[str, int]:
    """GetImageSet calls the emulator received in [since, until], by HTTP status."""
    statuses: Counter[str] = Counter()
    for entry in running.requests():
        if entry["operation"] == "GetImageSet" and since <= entry["at"] <= until:
            statuses[str(entry["status"])] += 1
    return dict(statuses)


async def settle(check: Callable[[], bool], what: str, seconds: float) -> None:
    """Poll `check` (a condition of other processes: their files, their exit) until it holds."""
    try:
        async with asyncio.timeout(seconds):
            while not check():  # noqa: ASYNC110 - other processes cannot set an asyncio.Event
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise TimeoutError(f"{what}: not done after {seconds:g} s") from None


async def hold_and_release(running: stack.Stack, plan: Plan) -> dict[str, Any]:
    """Phases 1 to 4."""
    proxy = running.pid("proxy-0")
    running.set_faults({"update_stall_rate": 1.0})
    async with workload.channel(running.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        started = time.time()
        updates, tasks = await start_updates(stub, running, running.image_set_ids, "1")
        rss_before = measure.sample(proxy).rss_bytes
        if plan.trace_memory:
            await heap_report(proxy, plan.trace_memory)  # the baseline
        crowd = stream_holder.Crowd(
            running.endpoint,
            plan.streams - len(updates),
            plan.holders,
            plan.channels,
            plan.batch,
            max_seconds=600,
        )
        holders = stream_holder.launch(
            crowd, [(u.operation_id, u.principal) for u in updates], running.log_dir / "holders"
        )
        try:
            opening = time.monotonic()
            await settle(lambda: len(holders.ready()) == plan.holders, "opening streams", 300)
            open_seconds = time.monotonic() - opening
            held = await _hold(running, plan, holders)
            released = time.time()
            running.emulator("POST", "release-stalled", {})
            await settle(lambda: all(p.poll() is not None for p in holders.processes), "end", 300)
            async with asyncio.timeout(60):
                await asyncio.gather(*tasks)
            done = time.time()
        finally:
            for process in holders.processes:
                if process.poll() is None:
                    process.kill()
    results = holders.results()
    finished_at = [t for r in results for t in r["finished_at"]] + [u.finished_at for u in updates]
    delivery = [t - released for t in finished_at]
    after_release = get_image_set_calls(running, released, done)
    whole_life = get_image_set_calls(running, started, done)
    return {
        "streams_open": sum(r["opened"] for r in results) + len(updates),
        "failed_to_open": sum(r["failed_to_open"] for r in results),
        "open_seconds": open_seconds,
        "proxy_rss_before_mb": mb(rss_before),
        **held,
        "finished_streams": len([t for t in finished_at if not math.isnan(t)]),
        "stream_errors": dict(sum((Counter(r["errors"]) for r in results), Counter())),
        "update_errors": [u.error for u in updates if u.error],
        "holder_events": dict(sum((Counter(r["events"]) for r in results), Counter())),
        "finished_delivery_s": {
            "p50": percentile(delivery, 0.5),
            "p99": percentile(delivery, 0.99),
            "max": max(delivery) if delivery else math.nan,
        },
        "get_image_set_after_release": after_release,
        "get_image_set_per_update_whole_life": sum(whole_life.values()) / len(updates),
        "update_seconds_whole_life": done - started,
        "holder_peak_rss_mb": [mb(r["peak_rss_bytes"]) for r in results],
    }


async def _hold(running: stack.Stack, plan: Plan, holders: stream_holder.Holders) -> dict[str, Any]:
    """Phase 3: everything open and waiting; sample memory each second, CPU over the window."""
    proxy = running.pid("proxy-0")
    pids = {"proxy": proxy, **{f"holder-{i}": p.pid for i, p in enumerate(holders.processes)}}
    meter = measure.CpuMeter(pids)
    since = time.time()
    meter.start()
    peak = 0
    deadline = time.monotonic() + plan.hold_seconds
    while time.monotonic() < deadline:
        peak = max(peak, measure.sample(proxy).rss_bytes)
        await asyncio.sleep(1)
    cpu = meter.stop()
    until = time.time()
    calls = get_image_set_calls(running, since, until)
    window = until - since
    heap = await heap_report(proxy, plan.trace_memory) if plan.trace_memory else {}
    return {
        "heap": heap,
        "hold_seconds": window,
        "proxy_rss_mb": mb(measure.sample(proxy).rss_bytes),
        "proxy_rss_peak_mb": mb(peak),
        "cpu_cores": {name: use.cores for name, use in cpu.items()},
        "get_image_set_per_s": sum(calls.values()) / window,
        "get_image_set_statuses": calls,
    }


async def heap_report(proxy: int, path: Path) -> dict[str, Any]:
    """Ask the traced proxy (SIGUSR1) for its heap report and read it."""
    _request_heap_report(proxy, path)
    await settle(path.exists, "heap report", 120)
    report: dict[str, Any] = read_json(path)
    return report


def _request_heap_report(proxy: int, path: Path) -> None:
    path.unlink(missing_ok=True)
    os.kill(proxy, signal.SIGUSR1)


async def durations(running: stack.Stack, plan: Plan, first_version: int) -> list[dict[str, Any]]:
    """Phase 5: GetImageSet calls per finished update, by how long the update took.

    Each duration runs twice: the proxy learns the typical duration from the first round (its
    first poll waits that long), the second is the steady state reported.
    """
    rows = []
    versions = itertools.count(first_version)
    async with workload.channel(running.endpoint) as channel:
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        for seconds in plan.durations:
            for phase in ("learning", "steady"):
                row = await _timed_round(stub, running, seconds, str(next(versions)))
                rows.append({"round": phase, **row})
            print(f"  update of {seconds:g} s: {row['get_image_set_per_update']:.2f} calls")
    running.set_faults({})
    return rows


async def _timed_round(
    stub: pb_grpc.MetadataUpdateServiceAsyncStub, running: stack.Stack, seconds: float, version: str
) -> dict[str, Any]:
    """100 updates held `seconds` (stalled, then released), one stream each, to the end."""
    running.set_faults({"update_stall_rate": 1.0})
    started = time.time()
    updates, tasks = await start_updates(stub, running, running.image_set_ids, version)
    await asyncio.sleep(max(0.0, started + seconds - time.time()))
    running.emulator("POST", "release-stalled", {})
    released = time.time()
    async with asyncio.timeout(120):
        await asyncio.gather(*tasks)
    calls = get_image_set_calls(running, started, time.time())
    seen = [u.finished_at - released for u in updates if not math.isnan(u.finished_at)]
    return {
        "update_seconds": seconds,
        "get_image_set_per_update": sum(calls.values()) / len(updates),
        "statuses": calls,
        "finished_seen_after_s": {"p50": percentile(seen, 0.5), "max": max(seen, default=math.nan)},
        "errors": [u.error for u in updates if u.error],
    }


async def run(running: stack.Stack, plan: Plan) -> dict[str, Any]:
    held = await hold_and_release(running, plan)
    return {"hold": held, "durations": await durations(running, plan, first_version=2)}


def report(results: dict[str, Any]) -> str:
    held = results["hold"]
    cores = held["cpu_cores"]
    holders = sum(v for k, v in cores.items() if k.startswith("holder"))
    rows = [
        ["streams open (failed to open)", f"{held['streams_open']:,} ({held['failed_to_open']})"],
        ["time to open them", f"{held['open_seconds']:.1f} s"],
        ["proxy RSS before → with streams", _rss(held)],
        ["proxy CPU while holding", f"{cores['proxy']:.3f} cores"],
        ["stream holders' CPU", f"{holders:.3f} cores"],
        ["GetImageSet rate while holding", f"{held['get_image_set_per_s']:.1f}/s"],
        ["GetImageSet statuses while holding", str(held["get_image_set_statuses"])],
        ["`finished` delivered after release p50/p99/max", _delivery(held)],
        ["streams that saw `finished`", f"{held['finished_streams']:,}"],
        ["stream errors", str(held["stream_errors"] or "none")],
        ["GetImageSet per update (whole life)", _per_update(held)],
    ]
    durations_table = measure.table(
        DURATION_COLUMNS, [_duration_row(r) for r in results["durations"]]
    )
    tables = [measure.table(["waiting at scale", "value"], rows), durations_table]
    if held["heap"].get("by_line"):
        tables.append(heap_table(held["heap"], held["streams_open"]))
    return "\n\n".join(tables)


def heap_table(heap: dict[str, Any], streams: int) -> str:
    """Python heap growth while the streams were opened, per stream, by allocating line."""
    rows = [
        [line["where"].replace(str(REPO), ""), line["bytes"] / streams, line["blocks"] / streams]
        for line in heap["by_line"][:HEAP_LINES]
    ]
    return measure.table(["allocated at", "bytes per stream", "blocks per stream"], rows)


DURATION_COLUMNS = (
    "update takes",
    "round",
    "GetImageSet per finished update",
    "`finished` seen p50 / max s after release",
    "statuses",
)


def _duration_row(row: dict[str, Any]) -> list[object]:
    seen = row["finished_seen_after_s"]
    return [
        f"{row['update_seconds']:g} s",
        row["round"],
        row["get_image_set_per_update"],
        f"{seen['p50']:.2f} / {seen['max']:.2f}",
        str(row["statuses"]),
    ]


def _rss(held: dict[str, Any]) -> str:
    before, during = held["proxy_rss_before_mb"], held["proxy_rss_peak_mb"]
    per_stream = (during - before) * 1e3 / max(1, held["streams_open"])
    return f"{before:.0f} MB → {during:.0f} MB (≈ {per_stream:.1f} KB per stream)"


def _delivery(held: dict[str, Any]) -> str:
    d = held["finished_delivery_s"]
    return f"{d['p50']:.2f} / {d['p99']:.2f} / {d['max']:.2f} s"


def _per_update(held: dict[str, Any]) -> str:
    per_update = held["get_image_set_per_update_whole_life"]
    return f"{per_update:.1f} (update held {held['update_seconds_whole_life']:.0f} s)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.waiting", description=__doc__)
    parser.add_argument("--image-sets", type=int, default=100)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--holders", type=int, default=2, help="client processes")
    parser.add_argument("--hold-seconds", type=float, default=30.0)
    parser.add_argument("--read-quota", choices=["default", "off"], default="default")
    parser.add_argument("--heartbeat", type=float, default=0.0, help="proxy heartbeat seconds")
    parser.add_argument("--durations", default="0.5,1,2,5", help="phase 5 update durations (s)")
    parser.add_argument("--trace-memory", type=Path, help="tracemalloc the proxy; report here")
    parser.add_argument("--profile", type=Path, help="run the proxy under pyinstrument")
    parser.add_argument("--malloc-arena-max", type=int, default=0, help="glibc arenas (0: default)")
    args = parser.parse_args(argv)
    plan = Plan(
        image_sets=args.image_sets,
        streams=args.streams,
        holders=args.holders,
        hold_seconds=args.hold_seconds,
        read_quota=args.read_quota,
        heartbeat_seconds=args.heartbeat,
        durations=tuple(float(d) for d in args.durations.split(",") if d),
        trace_memory=args.trace_memory.resolve() if args.trace_memory else None,
        profile=args.profile.resolve() if args.profile else None,
        malloc_arena_max=args.malloc_arena_max,
    )
    with stack.running(_options(plan), "waiting") as running:
        results = uvloop.run(run(running, plan))
    name = "waiting-traced" if plan.trace_memory or plan.profile else "waiting"
    if plan.heartbeat_seconds:
        name += f"-heartbeat{plan.heartbeat_seconds:g}"
    if plan.streams != Plan.streams:
        name += f"-streams{plan.streams}"
    path = measure.write_results(name, {"plan": plan.__dict__, **results})
    print(report(results))
    print(f"\nresults: {path}")
    return 0


def _options(plan: Plan) -> stack.StackOptions:
    config: dict[str, dict[str, object]] = {
        # The set-up's 100 submits go at once; reads keep (or drop) the default quota.
        "budget": {"update_rate": 200.0, "update_burst": 200.0},
    }
    if plan.heartbeat_seconds:
        config["watch"] = {"heartbeat_seconds": plan.heartbeat_seconds}
    quotas: stack.Quotas = SETUP_WRITE_QUOTA if plan.read_quota == "default" else "off"
    return stack.StackOptions(
        image_sets=plan.image_sets,
        update_delay=0.5,
        quotas=quotas,
        proxy_config=config,
        profile=plan.profile,
        trace_memory=plan.trace_memory,
        proxy_env={"MALLOC_ARENA_MAX": str(plan.malloc_arena_max)} if plan.malloc_arena_max else {},
    )


if __name__ == "__main__":
    raise SystemExit(main())
