"""Benchmark 1's decision against its parts: EvaluateUpdate, a trivial gRPC unary, an OPA decision.

At concurrency 1, in the same run and interleaved (rounds of the three steps, the order rotating
each round, so drift on the shared machine hits all alike): the trivial server's EvaluateUpdate
(gRPC's own cost, `trivial_server`), an OPA decision (an HTTP POST of the proxy's own input) and
the proxy's EvaluateUpdate (identity, normaliser, the OPA call, gRPC). The proxy's excess over
its parts is `evaluate p50 - (trivial p50 + OPA p50)`. Afterwards, OPA's own handler time
(`?metrics=true`, `timer_server_handler_ns`) shows how much of a decision is OPA's work and how
much the hop between processes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from benchmarks import stack, workload
from benchmarks.measure import ms, percentile
from service.core.config import OpaSettings
from service.core.model import Caller
from service.normaliser.updates import normalise
from service.policy.policy_input import build_input
from service.transport.server import to_update_request

ROUND = 50
"""Calls of one step in a row, before the next step's turn."""
WARM_UP = 20

Step = Callable[[], Awaitable[object]]


async def measure_steps(
    running: stack.Stack,
    proxy: pb_grpc.MetadataUpdateServiceAsyncStub,
    trivial: pb_grpc.MetadataUpdateServiceAsyncStub,
    calls: int,
) -> dict[str, Any]:
    """`calls` of each step, interleaved by rounds; p50/p99 of each and the proxy's excess."""
    request = workload.grpc_request(running.datastore_id, running.image_set_ids[-1], "1", 0)
    principal = stack.PRINCIPALS[0]
    document = {
        "input": build_input(Caller(principal, "dev"), normalise(to_update_request(request)))
    }
    url = f"{running.opa_url}/v1/data/{OpaSettings().decision_path.replace('.', '/')}"
    metadata = workload.caller(principal)
    async with aiohttp.ClientSession() as session:

        async def opa() -> object:
            async with session.post(url, json=document) as response:
                return await response.read()

        steps: dict[str, Step] = {
            "trivial_unary_ms": lambda: trivial.EvaluateUpdate(request, metadata=metadata),
            "opa_decision_ms": opa,
            "evaluate_update_ms": lambda: proxy.EvaluateUpdate(request, metadata=metadata),
        }
        seconds = await _interleaved(steps, calls)
        seconds["opa_server_handler_ms"] = await _opa_own_time(session, url, document, calls)
    summary: dict[str, Any] = {
        name: {"p50": ms(percentile(values, 0.5)), "p99": ms(percentile(values, 0.99))}
        for name, values in seconds.items()
    }
    parts = summary["trivial_unary_ms"]["p50"] + summary["opa_decision_ms"]["p50"]
    summary["excess_ms"] = summary["evaluate_update_ms"]["p50"] - parts
    summary["calls_each"] = calls
    return summary


async def _opa_own_time(
    session: aiohttp.ClientSession, url: str, document: dict[str, Any], calls: int
) -> list[float]:
    """OPA's own time per decision (its server handler, in seconds), from its metrics."""
    own = []
    for _ in range(calls):
        async with session.post(url, params={"metrics": "true"}, json=document) as response:
            answer = await response.json()
        own.append(answer["metrics"]["timer_server_handler_ns"] / 1e9)
    return own


async def _interleaved(steps: dict[str, Step], calls: int) -> dict[str, list[float]]:
    for step in steps.values():  # connections, OPA's compiled query, the proxy's caches
        for _ in range(WARM_UP):
            await step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for round_index in range(max(1, calls // ROUND)):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            step, timings = steps[name], seconds[name]
            for _ in range(min(ROUND, calls)):
                start = time.perf_counter()
                await step()
                timings.append(time.perf_counter() - start)
    return seconds
