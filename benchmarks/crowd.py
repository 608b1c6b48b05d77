"""Many callers at once, one update each, and what the emulator saw of them (benchmarks 4 and 5).

Each client sends one UpdateImageSetMetadata for its own image set and reads the stream to its
end. The verdict comes from the emulator's request log, the backend's own record: how many
writes it accepted in any window against what the budget allows (a token bucket of `rate` per
second and `burst` lets at most burst + rate * W calls through in any W seconds), how many calls
it throttled, and how evenly the principals were served.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from benchmarks import stack, workload
from benchmarks.measure import percentile

WINDOWS = (1.0, 10.0, 60.0)


@dataclass
class Outcome:
    """What one client saw."""

    principal: str
    image_set_id: str
    endpoint: str
    started_at: float
    first_position: int = -1
    submitted_at: float = math.nan
    finished_at: float = math.nan
    result: str = "UNFINISHED"
    """UPDATED, UPDATE_FAILED, a gRPC status code name, or UNFINISHED (cut off by the bound)."""


async def one_update(
    stub: pb_grpc.MetadataUpdateServiceAsyncStub, datastore_id: str, outcome: Outcome, sequence: int
) -> None:
    request = workload.grpc_request(datastore_id, outcome.image_set_id, "1", sequence)
    try:
        async for event in stub.UpdateImageSetMetadata(
            request, metadata=workload.caller(outcome.principal)
        ):
            kind = workload.event_kind(event)
            if kind == "queued" and outcome.first_position < 0:
                outcome.first_position = event.queued.position
            elif kind == "submitted":
                outcome.submitted_at = time.time()
            elif kind == "finished":
                outcome.finished_at = time.time()
                outcome.result = event.finished.state.image_set_workflow_status
    except grpc.aio.AioRpcError as error:
        outcome.result = error.code().name


Sample = tuple[float, str, float]
"""(when, which process, round-trip seconds of a trivial call to it)."""
PROBE_INTERVAL = 0.1


async def probe_forever(running: stack.Stack, samples: list[Sample]) -> None:
    """A trivial call to the emulator and to each proxy every 0.1 s: a stalled event loop (theirs,
    or this process's own, which slows every probe alike) shows as a long round trip."""
    channels = [workload.channel(endpoint) for endpoint in running.endpoints]
    stubs = [health_pb2_grpc.HealthStub(channel) for channel in channels]
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                at, start = time.time(), time.perf_counter()
                async with session.get(f"{running.emulator_url}/_emulator/health") as response:
                    await response.read()
                samples.append((at, "emulator", time.perf_counter() - start))
                for endpoint, stub in zip(running.endpoints, stubs, strict=True):
                    start = time.perf_counter()
                    await stub.Check(health_pb2.HealthCheckRequest())
                    samples.append((at, endpoint, time.perf_counter() - start))
                await asyncio.sleep(PROBE_INTERVAL)
    finally:
        for channel in channels:
            await channel.close()


async def run_crowd(
    running: stack.Stack,
    clients: int,
    seconds: float,
    probes: list[Sample],
    channels_per_endpoint: int = 4,
) -> list[Outcome]:
    """`clients` updates at once, spread over principals and endpoints; stop after `seconds`.
    Meanwhile `probes` collects round trips to the emulator and the proxies."""
    if clients > len(running.image_set_ids):
        raise RuntimeError("seed one image set per client")
    channels = [
        workload.channel(endpoint)
        for endpoint in running.endpoints
        for _ in range(channels_per_endpoint)
    ]
    now = time.time()
    outcomes, tasks = [], []
    for index in range(clients):
        channel_index = index % len(channels)
        outcome = Outcome(
            principal=stack.PRINCIPALS[index % len(stack.PRINCIPALS)],
            image_set_id=running.image_set_ids[index],
            endpoint=running.endpoints[channel_index // channels_per_endpoint],
            started_at=now,
        )
        stub = pb_grpc.MetadataUpdateServiceStub(channels[channel_index])
        tasks.append(asyncio.create_task(one_update(stub, running.datastore_id, outcome, index)))
        outcomes.append(outcome)
    prober = asyncio.create_task(probe_forever(running, probes))
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in [*pending, prober]:
        task.cancel()
    await asyncio.gather(*pending, prober, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return outcomes


def busiest_window(times: Sequence[float], window: float) -> int:
    """The most timestamps in any interval [t, t + window)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, start + window) - i for i, start in enumerate(ordered)),
        default=0,
    )


def write_check(requests: Sequence[dict[str, Any]], rate: float, burst: float) -> dict[str, Any]:
    """Accepted UpdateImageSetMetadata calls per window against the budget's allowance."""
    accepted = [
        r["at"] for r in requests if r["operation"] == workload.UPDATE and r["status"] == 200
    ]
    span = max(accepted) - min(accepted) if len(accepted) > 1 else math.nan
    windows = {
        f"{window:g}s": {
            "most": busiest_window(accepted, window),
            "allowed": math.floor(burst + rate * window),
        }
        for window in WINDOWS
    }
    return {
        "accepted": len(accepted),
        "mean_rate": (len(accepted) - 1) / span if span and span > 0 else math.nan,
        "windows": windows,
        "within_budget": all(w["most"] <= w["allowed"] for w in windows.values()),
    }


def throttles(requests: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Calls the emulator refused for quota, by operation (429 Throttling, 402 ServiceQuota...)."""
    refused: Counter[str] = Counter()
    for r in requests:
        if r["status"] == 429 or r.get("error") in QUOTA_ERRORS:
            refused[f"{r['operation']} {r.get('error') or r['status']}"] += 1
    return dict(refused)


QUOTA_ERRORS = frozenset({"ThrottlingException", "ServiceQuotaExceededException"})
CONTEXT_SECONDS = 2.0


def throttle_context(
    requests: Sequence[dict[str, Any]], probes: Sequence[Sample]
) -> list[dict[str, Any]]:
    """For each refused call: the same operation's calls in the seconds before it, and the
    longest probe round trip to each process meanwhile (which event loop stalled, if any)."""
    contexts = []
    for refused in requests:
        if refused["status"] != 429 and refused.get("error") not in QUOTA_ERRORS:
            continue
        at, operation = refused["at"], refused["operation"]
        before = [
            {"seconds_before": round(at - r["at"], 4), "status": r["status"]}
            for r in requests
            if r["operation"] == operation and at - CONTEXT_SECONDS <= r["at"] <= at
        ]
        slowest: dict[str, float] = {}
        for when, target, seconds in probes:
            if at - CONTEXT_SECONDS <= when <= at:
                slowest[target] = max(slowest.get(target, 0.0), round(seconds, 4))
        contexts.append(
            {"operation": operation, "at": at, "calls_before": before, "slowest_probe_s": slowest}
        )
    return contexts


def probe_summary(probes: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Round trips of the probes by process: p50, p99, max (seconds)."""
    targets = sorted({target for _, target, _ in probes})
    return {
        target: {
            "p50": percentile(rtts, 0.5),
            "p99": percentile(rtts, 0.99),
            "max": max(rtts),
        }
        for target in targets
        if (rtts := [seconds for _, name, seconds in probes if name == target])
    }


def fairness(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Completed updates per principal and max/min among them: over the whole run, and over the
    first half of the completions (when every update finishes, the whole run is trivially even;
    the first half shows whether they were served alike while all of them were waiting)."""
    done = sorted((o for o in outcomes if o.result == "UPDATED"), key=lambda o: o.finished_at)
    whole = _per_principal(done)
    first_half = _per_principal(done[: len(done) // 2])
    return {
        "completions": whole,
        "max_over_min": _max_over_min(whole),
        "first_half": first_half,
        "first_half_max_over_min": _max_over_min(first_half),
    }


def _per_principal(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = Counter(o.principal for o in outcomes)
    return {principal: counts.get(principal, 0) for principal in stack.PRINCIPALS}


def _max_over_min(counts: dict[str, int]) -> float:
    values = list(counts.values())
    return max(values) / min(values) if min(values) > 0 else math.inf


def has_errors(outcomes: Sequence[Outcome]) -> bool:
    """Some client ended with an error (not UPDATED, not merely cut off by the time bound)."""
    return any(o.result not in ("UPDATED", "UNFINISHED") for o in outcomes)


def outcome_summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    waits = [o.submitted_at - o.started_at for o in outcomes if not math.isnan(o.submitted_at)]
    return {
        "clients": len(outcomes),
        "results": dict(Counter(o.result for o in outcomes)),
        "by_endpoint": dict(Counter(o.endpoint for o in outcomes if o.result == "UPDATED")),
        "queued_first_position_max": max((o.first_position for o in outcomes), default=-1),
        "wait_to_submit_s": {"p50": percentile(waits, 0.5), "max": max(waits, default=math.nan)},
    }
