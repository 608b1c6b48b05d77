"""Benchmark: CPU per HealthImaging call, botocore's path against the lean path, in one process.

Starts an emulator (quotas off), opens the proxy's backend client and alternates the two paths
round by round on GetImageSet (the poll; an update cannot be repeated on one image set without
waiting for it), reporting `time.process_time()` per call for each path and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from devstack.seeds import sample_path
from devstack.servers import EMULATOR_AWS_ENV, start_emulator
from service.backend.healthimaging import HealthImaging
from service.core.config import BackendSettings

Call = Callable[[dict[str, Any]], Awaitable[Any]]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hot_calls", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per path (default 5)")
    parser.add_argument("--calls", type=int, default=300, help="calls per round (default 300)")
    return parser.parse_args(argv)


async def cpu_per_call(call: Call, params: dict[str, Any], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        await call(params)
    return (time.process_time() - started) / calls


def paths(backend: HealthImaging, operation: str) -> dict[str, Call]:
    client = backend._client
    lean = backend._lean[operation]
    if lean is None:
        raise SystemExit(f"the lean path is off for {operation}")

    async def botocores(params: dict[str, Any]) -> Any:
        return await client._make_api_call(operation, params)

    return {"botocore": botocores, "lean": lean.call}


async def measure(url: str, datastore_id: str, image_set_id: str, args: argparse.Namespace) -> None:
    os.environ.update(EMULATOR_AWS_ENV)
    async with HealthImaging.open(BackendSettings(endpoint_url=url)) as backend:
        calls = paths(backend, "GetImageSet")
        params: dict[str, Any] = {"datastoreId": datastore_id, "imageSetId": image_set_id}
        for call in calls.values():  # warm: connections, first-call preparation
            await cpu_per_call(call, params, 20)
        seen: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                seen[name].append(await cpu_per_call(call, params, args.calls))
    report(seen, args)


def report(seen: dict[str, list[float]], args: argparse.Namespace) -> None:
    medians = {name: statistics.median(values) for name, values in seen.items()}
    print(f"GetImageSet: {args.rounds} rounds x {args.calls} calls per path, CPU per call")
    for name, values in seen.items():
        rounds = " ".join(f"{v * 1e6:.0f}" for v in values)
        print(f"  {name:9} median {medians[name] * 1e6:7.0f} us   rounds: {rounds}")
    print(f"  lean / botocore = {medians['lean'] / medians['botocore']:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    seeds = [sample_path("CT_small.dcm"), sample_path("MR_small.dcm")]
    emulator_args = ["--no-quotas", "--non-primary", *[f"--seed={s}" for s in seeds]]
    emulator = start_emulator(Path(tempfile.mkdtemp(prefix="lean-calls-")), emulator_args)
    try:
        image_set_id = emulator.image_set_ids[0]
        asyncio.run(measure(emulator.url, emulator.datastore_id, image_set_id, args))
    finally:
        emulator.child.stop()


if __name__ == "__main__":
    main()
