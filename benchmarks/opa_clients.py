"""The decision's OPA call two ways, same run, same OPA, interleaved: the proxy's PolicyClient
(plain aiohttp, redirects refused) and opa-python-client's AsyncOpaClient.query_rule (retries 0,
the same timeout). p50/p99 of each and the difference: docs/POLICIES.md, "The OPA client".

    python -m benchmarks.opa_clients [--calls 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from opa_client import AsyncOpaClient

from benchmarks.measure import percentile
from devstack.processes import free_port
from devstack.servers import start_opa
from service.core.config import OpaSettings
from service.core.model import Caller, UpdateRequest
from service.normaliser.updates import normalise
from service.policy.decisions import PolicyClient
from service.policy.policy_input import build_input

ROUND = 100
WARM_UP = 200
DATASTORE = "12345678901234567890123456789012"


async def measure(opa_url: str, calls: int) -> dict[str, dict[str, float]]:
    settings = OpaSettings(url=opa_url)
    caller = Caller("dev:demo-editor", "dev")
    attributes = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHEST"}}}
    plan = normalise(
        UpdateRequest(
            datastore_id=DATASTORE,
            image_set_id="0" * 32,
            latest_version_id="1",
            force=False,
            include_study_image_sets=False,
            updatable_attributes=json.dumps(attributes).encode(),
            removable_attributes=None,
            revert_to_version_id=None,
            kind="dicom_updates",
        )
    )
    document = build_input(caller, plan, settings.send_values)
    package, rule = settings.decision_path.rsplit(".", 1)
    async with (
        PolicyClient.open(settings) as proxy,
        AsyncOpaClient(
            host="127.0.0.1",
            port=int(opa_url.rsplit(":", 1)[1]),
            retries=0,
            timeout=settings.timeout_seconds,
        ) as library,
    ):
        steps: dict[str, Callable[[], Awaitable[object]]] = {
            "policy_client": lambda: proxy.decide(caller, plan),
            "async_opa_client": lambda: library.query_rule(document, package, rule),
        }
        for step in steps.values():
            for _ in range(WARM_UP):
                await step()
        timings: dict[str, list[float]] = {name: [] for name in steps}
        names = list(steps)
        for index in range(max(1, calls // ROUND)):
            for name in names[index % 2 :] + names[: index % 2]:
                for _ in range(ROUND):
                    start = time.perf_counter()
                    await steps[name]()
                    timings[name].append(time.perf_counter() - start)
    summary = {
        name: {"p50_us": percentile(v, 0.5) * 1e6, "p99_us": percentile(v, 0.99) * 1e6}
        for name, v in timings.items()
    }
    summary["difference"] = {
        "p50_us": summary["async_opa_client"]["p50_us"] - summary["policy_client"]["p50_us"]
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opa-clients-") as work:
        port = free_port()
        opa = start_opa(Path(work), port, decision_log=False)
        try:
            summary = asyncio.run(measure(f"http://127.0.0.1:{port}", args.calls))
        finally:
            opa.stop()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
