"""Benchmark 5, replicas: two proxies sharing one Redis budget of 2 writes/s.

Two `imaging-proxy serve` replicas, their journal and quota budget in one Redis, in front of an
emulator enforcing 2 UpdateImageSetMetadata/s (burst 2). `--clients` callers (10 principals)
are spread evenly over both replicas, one update each. The emulator's log must show the two
together never above 2 writes/s in any window (burst + rate * W), no throttled call, and every
update finished; the share each replica submitted shows both were working.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

import uvloop

from benchmarks import crowd, measure, quota, stack
from devstack.settings import update_quota

RATE, BURST = 2.0, 2.0


def options(clients: int) -> stack.StackOptions:
    budget: dict[str, object] = {"update_rate": RATE, "update_burst": BURST}
    return stack.StackOptions(
        image_sets=clients,
        update_delay=quota.UPDATE_DELAY,
        quotas=update_quota(RATE, BURST),
        proxy_config={"budget": budget},
        replicas=2,
        redis=True,
    )


async def measure_replicas(running: stack.Stack, clients: int, seconds: float) -> dict[str, Any]:
    probes: list[crowd.Sample] = []
    outcomes = await crowd.run_crowd(running, clients, seconds, probes)
    requests = running.requests()
    running.keep_logs = crowd.has_errors(outcomes)
    run = quota.Run("2 replicas, one Redis budget", RATE, BURST, clients, seconds)
    return {
        "run": run.__dict__,
        "writes": crowd.write_check(requests, RATE, BURST),
        "throttled": crowd.throttles(requests),
        "throttle_context": crowd.throttle_context(requests, probes),
        "probe_round_trips_s": crowd.probe_summary(probes),
        "fairness": crowd.fairness(outcomes),
        "outcomes": crowd.outcome_summary(outcomes),
        "clients": [dataclasses.asdict(o) for o in outcomes],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=600.0, help="bound on the run")
    args = parser.parse_args(argv)
    with stack.running(options(args.clients), "replicas") as running:
        result = uvloop.run(measure_replicas(running, args.clients, args.seconds))
    path = measure.write_results("replicas", result)
    print(quota.report([result]))
    print(f"writes accepted by replica: {result['outcomes']['by_endpoint']}")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
