"""Benchmark 6, starvation (issue 18): one caller's single update while another floods.

The scenario of issue 18 at HealthImaging's default quotas (0.25 writes/s, reads 25/s): the
victim (`bench-01`) sends one series-level SeriesDescription update, which needs a reference
read, a decision and a write, while the flooder (`bench-00`) keeps sending the same kind of
update. Modes:

- `alone`: no flood (the baseline);
- `paced`: the flood keeps `--paced` updates in flight (a new one when one is authorized or
  refused), as a caller respecting the old gate's 8 would;
- `unpaced`: the flood sends `--unpaced` updates at once;
- `evaluate`: the flood is `--evaluators` EvaluateUpdate loops (the decisions stage only).

Each mode runs on a fresh stack. The flood starts `--head-start` seconds before the first
victim; `--victims` victims follow one another. For each: seconds to `authorized` and to
`finished`, and how many writes the emulator logged between the victim's `authorized` and its own
write (the goal: at most one per other waiting principal, here 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvloop
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from benchmarks import measure, stack, workload
from benchmarks.measure import percentile

FLOODER, VICTIM = stack.PRINCIPALS[0], stack.PRINCIPALS[1]
MODES = ("alone", "paced", "unpaced", "evaluate")
FLOOD_IMAGE_SETS = 20
"""The flood's updates go round these (their writes then mostly conflict: still writes spent)."""


@dataclass(frozen=True)
class Plan:
    modes: tuple[str, ...] = MODES
    victims: int = 3
    paced: int = 8
    unpaced: int = 1_000
    evaluators: int = 32
    head_start: float = 3.0


@dataclass
class Victim:
    authorized: float
    finished: float
    writes_ahead: int
    """Writes the emulator logged between the victim's `authorized` and its own write."""


@dataclass
class Flood:
    sent: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def count(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1


def series_request(
    image_set_id: str, series_uid: str, text: str
) -> pb.UpdateImageSetMetadataRequest:
    document = {
        "SchemaVersion": 1.1,
        "Study": {"Series": {series_uid: {"DICOM": {"SeriesDescription": text}}}},
    }
    return pb.UpdateImageSetMetadataRequest(
        datastore_id=stack.DATASTORE_ID,
        image_set_id=image_set_id,
        latest_version_id="1",
        dicom_updates=pb.DICOMUpdates(updatable_attributes=json.dumps(document).encode()),
    )


async def first_series(running: stack.Stack, image_set_ids: Sequence[str]) -> dict[str, str]:
    """Each image set's first series UID, read straight from the emulator."""
    found = {}
    async with workload.direct_client(running.emulator_url, 4) as client:
        for image_set_id in image_set_ids:
            response = await client.get_image_set_metadata(
                datastoreId=stack.DATASTORE_ID, imageSetId=image_set_id
            )
            async with response["imageSetMetadataBlob"] as blob:
                raw = await blob.read()
            document = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
            found[image_set_id] = next(iter(document["Study"]["Series"]))
    return found


async def outcome(call: Any, until: str = "") -> str:
    """How a call ended: OK, or its status code name. `until`: stop reading at that event."""
    try:
        if until:
            async for event in call:
                if workload.event_kind(event) == until:
                    break
        else:
            await call
        return "OK"
    except grpc.aio.AioRpcError as error:
        return error.code().name


async def update_flood(
    stub: pb_grpc.MetadataUpdateServiceStub,
    requests: list[pb.UpdateImageSetMetadataRequest],
    in_flight: int,
    flood: Flood,
    stop: asyncio.Event,
) -> None:
    """`in_flight` updates at once, a new one when one is authorized or refused, until `stop`."""

    async def worker(offset: int) -> None:
        n = offset
        while not stop.is_set():
            request = requests[n % len(requests)]
            n += in_flight
            flood.sent += 1
            call = stub.UpdateImageSetMetadata(request, metadata=workload.caller(FLOODER))
            flood.count(await outcome(call, until="authorized"))
            call.cancel()  # the operation goes on in the proxy; the flood only keeps sending

    await asyncio.gather(*(worker(k) for k in range(in_flight)))


async def evaluate_flood(
    stub: pb_grpc.MetadataUpdateServiceStub,
    request: pb.UpdateImageSetMetadataRequest,
    workers: int,
    flood: Flood,
    stop: asyncio.Event,
) -> None:
    async def worker() -> None:
        while not stop.is_set():
            flood.sent += 1
            flood.count(
                await outcome(stub.EvaluateUpdate(request, metadata=workload.caller(FLOODER)))
            )

    await asyncio.gather(*(worker() for _ in range(workers)))


async def victim(
    running: stack.Stack,
    stub: pb_grpc.MetadataUpdateServiceStub,
    request: pb.UpdateImageSetMetadataRequest,
) -> Victim:
    started = time.monotonic()
    authorized = finished = float("nan")
    writes_then = 0
    call: Any = stub.UpdateImageSetMetadata(request, metadata=workload.caller(VICTIM))
    async for event in call:
        kind = workload.event_kind(event)
        if kind == "authorized":
            authorized = time.monotonic() - started
            writes_then = len(writes(running))
        elif kind == "finished":
            finished = time.monotonic() - started
    logged = writes(running)
    own = logged.index(request.image_set_id)
    return Victim(authorized, finished, own - writes_then)


def writes(running: stack.Stack) -> list[str]:
    return [r["imageSetId"] for r in running.requests() if r["operation"] == workload.UPDATE]


async def run_mode(mode: str, plan: Plan) -> dict[str, Any]:
    options = stack.StackOptions(image_sets=FLOOD_IMAGE_SETS + plan.victims, quotas="default")
    with stack.running(options, f"starvation-{mode}") as running:
        ids = running.image_set_ids
        series = await first_series(running, ids)
        flood_sets, victim_sets = ids[:FLOOD_IMAGE_SETS], ids[FLOOD_IMAGE_SETS:]
        flood_requests = [series_request(i, series[i], "FLOOD") for i in flood_sets]
        flood, stop = Flood(), asyncio.Event()
        async with (
            workload.channel(running.endpoint) as flood_channel,
            workload.channel(running.endpoint) as victim_channel,
        ):
            flood_stub = pb_grpc.MetadataUpdateServiceStub(flood_channel)
            victim_stub = pb_grpc.MetadataUpdateServiceStub(victim_channel)
            flooding = _flood(mode, plan, flood_stub, flood_requests, flood, stop)
            task = asyncio.create_task(flooding) if flooding is not None else None
            await asyncio.sleep(plan.head_start if task else 0.0)
            results = []
            for image_set_id in victim_sets:
                request = series_request(image_set_id, series[image_set_id], "VICTIM")
                results.append(await victim(running, victim_stub, request))
                print(
                    f"  {mode:8} victim: authorized {results[-1].authorized:.3f} s, finished "
                    f"{results[-1].finished:.2f} s, writes ahead {results[-1].writes_ahead}",
                    flush=True,
                )
            stop.set()
            if task is not None:  # the flood's calls still waiting are cancelled, not awaited
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return {
        "mode": mode,
        "victims": [vars(v) for v in results],
        "flood": {"sent": flood.sent, "codes": flood.codes},
    }


def _flood(
    mode: str,
    plan: Plan,
    stub: pb_grpc.MetadataUpdateServiceStub,
    requests: list[pb.UpdateImageSetMetadataRequest],
    flood: Flood,
    stop: asyncio.Event,
) -> Coroutine[Any, Any, None] | None:
    if mode == "paced":
        return update_flood(stub, requests, plan.paced, flood, stop)
    if mode == "unpaced":
        return update_flood(stub, requests, plan.unpaced, flood, stop)
    if mode == "evaluate":
        return evaluate_flood(stub, requests[0], plan.evaluators, flood, stop)
    return None


def report(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        victims = result["victims"]
        authorized = [v["authorized"] for v in victims]
        finished = [v["finished"] for v in victims]
        rows.append(
            (
                result["mode"],
                len(victims),
                max(authorized),
                percentile(authorized, 0.5),
                percentile(finished, 0.5),
                max(finished),
                max(v["writes_ahead"] for v in victims),
                result["flood"]["sent"],
                ", ".join(f"{k} {v}" for k, v in sorted(result["flood"]["codes"].items())) or "-",
            )
        )
    headers = (
        "mode",
        "victims",
        "authorized max s",
        "authorized p50 s",
        "finished p50 s",
        "finished max s",
        "writes ahead max",
        "flood sent",
        "flood outcomes",
    )
    return measure.table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.starvation", description=__doc__)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--victims", type=int, default=Plan.victims)
    parser.add_argument("--paced", type=int, default=Plan.paced)
    parser.add_argument("--unpaced", type=int, default=Plan.unpaced)
    parser.add_argument("--evaluators", type=int, default=Plan.evaluators)
    parser.add_argument("--head-start", type=float, default=Plan.head_start)
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    if set(modes) - set(MODES):
        parser.error(f"modes are {', '.join(MODES)}")
    plan = Plan(modes, args.victims, args.paced, args.unpaced, args.evaluators, args.head_start)
    results = [uvloop.run(run_mode(mode, plan)) for mode in plan.modes]
    print(report(results))
    goal = all(
        max(v["authorized"] for v in r["victims"]) <= 1.0
        and max(v["writes_ahead"] for v in r["victims"]) <= 1
        for r in results
    )
    print(f"goal (authorized within 1 s, at most one write ahead): {'met' if goal else 'NOT met'}")
    print(
        f"results: {measure.write_results('starvation', {'plan': vars(plan), 'results': results})}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
