"""Benchmark 1, overhead: the same update lifecycles straight to the emulator and via the proxy.

A lifecycle is: submit UpdateImageSetMetadata, then poll GetImageSet until the new version is
UPDATED. Directly, this process does both with aioboto3 (configured as the proxy's client; first
poll 1 ms after the submit, then every 0.25 s growing by 1.5 times). Through the proxy, it sends
one UpdateImageSetMetadata stream and reads events until `finished`; the proxy adds identity, the
normaliser, a real OPA decision and the gRPC hops, and polls after the typical update duration it
has learned. The emulator applies each update 1 ms after accepting it, so both paths do exactly
one update and one GetImageSet per lifecycle and the work is CPU-bound: the ratio shows the
proxy's cost, not a sleep.

Each concurrency level runs `--repeats` pairs of cells (direct then proxy, alternating which goes
first) of `--updates` lifecycles each; ratios are taken within a pair, then the median reported.
After the cells, `components` measures EvaluateUpdate against its parts (a trivial gRPC server's
unary and an OPA decision), and the summary ends with issue 12's goals, met or not (`goals`).
`--tracing both` measures instead the proxy with tracing off and on (`tracing_cost`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from benchmarks import (
    components,
    goals,
    measure,
    otlp_sink,
    overhead_report,
    stack,
    tracing_cost,
    trivial_server,
    workload,
)
from benchmarks.measure import CpuUse, ms, percentile

FIRST_POLL, POLL_INITIAL, POLL_GROWTH, POLL_MAX = 0.001, 0.25, 1.5, 3.0
PRINCIPAL = stack.PRINCIPALS[0]
WARM_UP = 32
"""Workers (and twice as many lifecycles) of the untimed warm-up cell of each mode."""
COMPONENT_CALLS = 1000
"""Calls of each step of `components.measure_steps` (interleaved, at concurrency 1)."""


@dataclass(frozen=True)
class Timing:
    """Seconds from sending the update to its acceptance, and to seeing it UPDATED."""

    submitted: float
    finished: float
    authorized: float = math.nan
    """Via the proxy: until the `authorized` event (identity, normaliser, OPA, gRPC)."""


Lifecycle = Callable[[str, str, int], Awaitable[tuple[Timing, str]]]
"""(image set id, latest version, sequence number) → timing and the new latest version."""


@dataclass(frozen=True)
class Cell:
    """One measured run: `updates` lifecycles by `concurrency` workers in one mode."""

    mode: str
    concurrency: int
    seconds: float
    timings: tuple[Timing, ...]
    cpu: dict[str, CpuUse]
    backend_calls: dict[str, int]
    """API calls the emulator received during the cell, by operation."""

    @property
    def throughput(self) -> float:
        return len(self.timings) / self.seconds

    def cpu_us_per_update(self, process: str) -> float:
        return self.cpu[process].cpu_seconds / len(self.timings) * 1e6


def direct_lifecycle(client: Any, datastore_id: str) -> Lifecycle:
    async def run(image_set_id: str, version: str, sequence: int) -> tuple[Timing, str]:
        start = time.perf_counter()
        params = workload.aws_params(datastore_id, image_set_id, version, sequence)
        response = await client.update_image_set_metadata(**params)
        submitted = time.perf_counter() - start
        new_version = str(response["latestVersionId"])
        await asyncio.sleep(FIRST_POLL)
        interval = POLL_INITIAL
        while True:
            state = await client.get_image_set(
                datastoreId=datastore_id, imageSetId=image_set_id, versionId=new_version
            )
            if _terminal(state["imageSetState"], state.get("imageSetWorkflowStatus", "")):
                _require_updated(state.get("imageSetWorkflowStatus", ""))
                return Timing(submitted, time.perf_counter() - start), new_version
            await asyncio.sleep(interval)
            interval = min(interval * POLL_GROWTH, POLL_MAX)

    return run


def proxy_lifecycle(stub: pb_grpc.MetadataUpdateServiceAsyncStub, datastore_id: str) -> Lifecycle:
    metadata = workload.caller(PRINCIPAL)

    async def run(image_set_id: str, version: str, sequence: int) -> tuple[Timing, str]:
        start = time.perf_counter()
        request = workload.grpc_request(datastore_id, image_set_id, version, sequence)
        authorized = submitted = math.nan
        async for event in stub.UpdateImageSetMetadata(request, metadata=metadata):
            kind = workload.event_kind(event)
            if kind == "authorized":
                authorized = time.perf_counter() - start
            elif kind == "submitted":
                submitted = time.perf_counter() - start
            elif kind == "finished":
                state = event.finished.state
                _require_updated(state.image_set_workflow_status)
                finished = time.perf_counter() - start
                return Timing(submitted, finished, authorized), state.latest_version_id
        raise RuntimeError("the stream ended without a finished event")

    return run


def _terminal(state: str, workflow_status: str) -> bool:
    return state != "LOCKED" and workflow_status in workload.TERMINAL


def _require_updated(workflow_status: str) -> None:
    if workflow_status != "UPDATED":
        raise RuntimeError(f"an update ended {workflow_status}, not UPDATED")


class ImageSets:
    """Fresh image sets for each cell, so every cell starts from the same emulator state.

    The emulator's cost per call grows with an image set's version count; giving each cell its
    own image sets (at most `MAX_UPDATES_PER_IMAGE_SET` updates each) keeps cells comparable.
    """

    def __init__(self, image_set_ids: Sequence[str]) -> None:
        self._unused = list(image_set_ids)
        self.sequence = itertools.count()

    def take(self, count: int) -> list[str]:
        if count > len(self._unused):
            raise RuntimeError("not enough seeded image sets; raise the seed count")
        taken, self._unused = self._unused[:count], self._unused[count:]
        return taken


MAX_UPDATES_PER_IMAGE_SET = 20


def image_sets_per_worker(concurrency: int, updates: int) -> int:
    return max(1, math.ceil(updates / concurrency / MAX_UPDATES_PER_IMAGE_SET))


async def run_cell(
    mode: str,
    lifecycle: Lifecycle,
    concurrency: int,
    updates: int,
    image_sets: ImageSets,
    running: stack.Stack,
    settle: float = 0.0,
) -> Cell:
    tickets: Iterator[int] = iter(range(updates))
    timings: list[Timing] = []

    async def worker(owned: list[str]) -> None:
        latest = dict.fromkeys(owned, "1")
        for ticket in tickets:  # shared: the workers together run exactly `updates` lifecycles
            image_set_id = owned[ticket % len(owned)]
            timing, latest[image_set_id] = await lifecycle(
                image_set_id, latest[image_set_id], next(image_sets.sequence)
            )
            timings.append(timing)

    per_worker = image_sets_per_worker(concurrency, updates)
    owned = [image_sets.take(per_worker) for _ in range(concurrency)]
    meter = measure.CpuMeter(running.pids())
    running.clear_requests()
    meter.start()
    started = time.perf_counter()
    await asyncio.gather(*(worker(image_set_ids) for image_set_ids in owned))
    seconds = time.perf_counter() - started
    await asyncio.sleep(settle)  # work the cell left behind (a span export) still counts
    cpu = meter.stop()
    calls = dict(Counter(r["operation"] for r in running.requests()))
    return Cell(mode, concurrency, seconds, tuple(timings), cpu, calls)


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...]
    updates: int
    repeats: int

    def image_sets_needed(self) -> int:
        cells = sum(c * image_sets_per_worker(c, self.updates) for c in self.concurrency)
        return 2 * (WARM_UP + self.repeats * cells)


Mode = tuple[Lifecycle, stack.Stack, ImageSets]
"""How a mode runs a lifecycle, on which stack, with which of its image sets."""


async def measure_all(
    stack_: stack.Stack, plan: Plan, trivial_endpoint: str
) -> tuple[list[Cell], dict[str, Any]]:
    image_sets = ImageSets(stack_.image_set_ids)
    async with (
        workload.direct_client(stack_.emulator_url, max(plan.concurrency)) as client,
        workload.channel(stack_.endpoint) as channel,
        workload.channel(trivial_endpoint) as trivial_channel,
    ):
        stub = pb_grpc.MetadataUpdateServiceStub(channel)
        modes = {
            "direct": (direct_lifecycle(client, stack_.datastore_id), stack_, image_sets),
            "proxy": (proxy_lifecycle(stub, stack_.datastore_id), stack_, image_sets),
        }
        cells = await measure_modes(modes, plan)
        trivial = pb_grpc.MetadataUpdateServiceStub(trivial_channel)
        steps = await components.measure_steps(stack_, stub, trivial, COMPONENT_CALLS)
    return cells, steps


async def measure_modes(modes: Mapping[str, Mode], plan: Plan, settle: float = 0.0) -> list[Cell]:
    """An untimed warm-up cell per mode, then at each level `repeats` pairs of cells, the order
    within a pair alternating."""
    cells: list[Cell] = []
    for mode, (lifecycle, running, image_sets) in modes.items():  # connections, loaders, OPA
        await run_cell(mode, lifecycle, WARM_UP, WARM_UP * 2, image_sets, running)
    first, second = modes
    for concurrency in plan.concurrency:
        for repeat in range(plan.repeats):
            for mode in [first, second] if repeat % 2 == 0 else [second, first]:
                lifecycle, running, image_sets = modes[mode]
                cell = await run_cell(
                    mode, lifecycle, concurrency, plan.updates, image_sets, running, settle
                )
                cells.append(cell)
                print(_progress(cell), flush=True)
    return cells


async def measure_tracing(stacks: Mapping[str, stack.Stack], plan: Plan) -> list[Cell]:
    """Proxy lifecycles on the untraced and the traced stack (`tracing_cost.stack_options`)."""
    async with contextlib.AsyncExitStack() as channels:
        modes: dict[str, Mode] = {}
        for mode, running in stacks.items():
            channel = await channels.enter_async_context(workload.channel(running.endpoint))
            stub = pb_grpc.MetadataUpdateServiceStub(channel)
            lifecycle = proxy_lifecycle(stub, running.datastore_id)
            modes[mode] = (lifecycle, running, ImageSets(running.image_set_ids))
        return await measure_modes(modes, plan, tracing_cost.SETTLE_SECONDS)


def run_tracing(plan: Plan) -> dict[str, Any]:
    """Both stacks up at once, the sink outliving them so their last spans still arrive."""
    with otlp_sink.serving() as sink, contextlib.ExitStack() as stacks:
        options = tracing_cost.stack_options(plan.image_sets_needed() // 2, sink.endpoint)
        running = {
            mode: stacks.enter_context(stack.running(o, f"tracing-{mode}"))
            for mode, o in options.items()
        }
        cells = uvloop.run(measure_tracing(running, plan))
        stacks.close()  # the traced proxy flushes its spans as it stops
        traced = WARM_UP * 2 + sum(len(c.timings) for c in cells if c.mode == "on")
        return tracing_cost.summarise(cells, plan.concurrency, sink.counter.spans, traced)


def _progress(cell: Cell) -> str:
    p50 = ms(percentile([t.finished for t in cell.timings], 0.5))
    polls = cell.backend_calls.get(workload.GET_IMAGE_SET, 0) / len(cell.timings)
    return (
        f"  {cell.mode:6} c={cell.concurrency:<3} {cell.throughput:7.0f} lifecycles/s "
        f"p50 {p50:6.2f} ms  {polls:.2f} GetImageSet each  load {measure.load_average()[0]:.2f}"
    )


def summarise(cells: Sequence[Cell], plan: Plan) -> dict[str, Any]:
    rows = []
    for concurrency in plan.concurrency:
        direct = [c for c in cells if c.concurrency == concurrency and c.mode == "direct"]
        proxy = [c for c in cells if c.concurrency == concurrency and c.mode == "proxy"]
        rows.append(_summary_row(concurrency, direct, proxy))
    return {"by_concurrency": rows}


def _summary_row(concurrency: int, direct: Sequence[Cell], proxy: Sequence[Cell]) -> dict[str, Any]:
    ratios = [p.throughput / d.throughput for d, p in zip(direct, proxy, strict=True)]
    d_done = [t.finished for c in direct for t in c.timings]
    p_done = [t.finished for c in proxy for t in c.timings]
    d_sub = [t.submitted for c in direct for t in c.timings]
    p_sub = [t.submitted for c in proxy for t in c.timings]
    p_auth = [t.authorized for c in proxy for t in c.timings]
    return {
        "concurrency": concurrency,
        "direct_per_s": measure.median([c.throughput for c in direct]),
        "proxy_per_s": measure.median([c.throughput for c in proxy]),
        "ratio_median": measure.median(ratios),
        "ratios": ratios,
        "direct_ms": {"p50": ms(percentile(d_done, 0.5)), "p99": ms(percentile(d_done, 0.99))},
        "proxy_ms": {"p50": ms(percentile(p_done, 0.5)), "p99": ms(percentile(p_done, 0.99))},
        "direct_submit_ms": {"p50": ms(percentile(d_sub, 0.5)), "p99": ms(percentile(d_sub, 0.99))},
        "proxy_submit_ms": {"p50": ms(percentile(p_sub, 0.5)), "p99": ms(percentile(p_sub, 0.99))},
        "proxy_authorized_ms": {
            "p50": ms(percentile(p_auth, 0.5)),
            "p99": ms(percentile(p_auth, 0.99)),
        },
        "get_image_set_per_lifecycle": {
            mode: sum(c.backend_calls.get(workload.GET_IMAGE_SET, 0) for c in mode_cells)
            / sum(len(c.timings) for c in mode_cells)
            for mode, mode_cells in (("direct", direct), ("proxy", proxy))
        },
        "cpu_us_per_update": {
            mode: {
                process: measure.median([c.cpu_us_per_update(process) for c in mode_cells])
                for process in mode_cells[0].cpu
            }
            for mode, mode_cells in (("direct", direct), ("proxy", proxy))
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__)
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--updates", type=int, default=1000, help="lifecycles per cell")
    parser.add_argument(
        "--repeats", type=int, default=3, help="pairs of cells per level (direct/proxy; off/on)"
    )
    parser.add_argument("--profile", type=Path, help="run the proxy under pyinstrument")
    parser.add_argument(
        "--tracing", choices=["off", "both"], default="off", help="both: tracing off vs on"
    )
    args = parser.parse_args(argv)
    plan = Plan(tuple(int(c) for c in args.concurrency.split(",")), args.updates, args.repeats)
    if args.tracing == "both":
        summary = run_tracing(plan)
        path = measure.write_results("overhead-tracing", {"plan": plan.__dict__, **summary})
        print(tracing_cost.report(summary), f"\nresults: {path}", sep="\n")
        return 0
    options = stack.StackOptions(image_sets=plan.image_sets_needed(), profile=args.profile)
    with (
        stack.running(options, "overhead") as running,
        trivial_server.running(running.log_dir) as (_, trivial_endpoint),
    ):
        cells, steps = uvloop.run(measure_all(running, plan, trivial_endpoint))
    summary = {**summarise(cells, plan), "components_c1": steps}
    summary["goals"] = goals.overhead(summary)
    name = "overhead-profiled" if args.profile else "overhead"
    path = measure.write_results(name, {"plan": plan.__dict__, **summary})
    print(overhead_report.report(summary))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
