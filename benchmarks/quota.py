"""Benchmark 4, quota truth: 1,000 callers at once against HealthImaging's real write quota.

Two runs, each on a fresh stack: the emulator enforcing the default quotas (0.25 writes/s,
burst 1; GetImageSet 25/s) with the proxy's default budget, and both raised to 5 writes/s.
1,000 clients, 100 for each of 10 principals, each send one update (their own image set) at
the same moment and read their stream to the end. The emulator's request log must show no more
accepted writes in any window than the quota allows, no throttled call, every principal served
alike (max/min completions within 20%), and, when the run is long enough, every update finished.
At 0.25 writes/s, 1,000 updates take 67 minutes: the default run stops after `--seconds`
(clients still queued are counted UNFINISHED); `--seconds 0` waits for all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import uvloop

from benchmarks import crowd, measure, stack
from service.devstack.settings import update_quota

UPDATE_DELAY = 1.0
"""Seconds the emulator takes to apply an update (HealthImaging takes seconds too)."""
UNBOUNDED_SECONDS = 6 * 3600.0
"""`--seconds 0`: wait for every update, within this safety bound."""


@dataclass(frozen=True)
class Run:
    """One quota scenario."""

    name: str
    rate: float
    burst: float
    clients: int
    seconds: float

    def options(self) -> stack.StackOptions:
        default = self.rate == 0.25 and self.burst == 1
        quotas = "default" if default else update_quota(self.rate, self.burst)
        budget = {"update_rate": self.rate, "update_burst": self.burst}
        return stack.StackOptions(
            image_sets=self.clients,
            update_delay=UPDATE_DELAY,
            quotas=quotas,
            proxy_config={"budget": budget},
        )


async def measure_run(running: stack.Stack, run: Run) -> dict[str, Any]:
    print(f"  {run.name}: {run.clients} clients, up to {run.seconds:g} s", flush=True)
    probes: list[crowd.Sample] = []
    outcomes = await crowd.run_crowd(running, run.clients, run.seconds, probes)
    requests = running.requests()
    running.keep_logs = crowd.has_errors(outcomes)
    return {
        "run": run.__dict__,
        "writes": crowd.write_check(requests, run.rate, run.burst),
        "throttled": crowd.throttles(requests),
        "throttle_context": crowd.throttle_context(requests, probes),
        "probe_round_trips_s": crowd.probe_summary(probes),
        "fairness": crowd.fairness(outcomes),
        "outcomes": crowd.outcome_summary(outcomes),
        "clients": [dataclasses.asdict(o) for o in outcomes],
    }


def verdict(result: dict[str, Any]) -> dict[str, bool]:
    outcomes = result["outcomes"]
    return {
        "writes within quota": bool(result["writes"]["within_budget"]),
        "no throttled call": not result["throttled"],
        "fair (max/min ≤ 1.2)": max(
            result["fairness"]["max_over_min"], result["fairness"]["first_half_max_over_min"]
        )
        <= 1.2,
        "every update finished": outcomes["results"] == {"UPDATED": outcomes["clients"]},
    }


def report(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        writes, run = result["writes"], result["run"]
        busiest = ", ".join(
            f"{name}: {w['most']}/{w['allowed']}" for name, w in writes["windows"].items()
        )
        rows.append(
            [
                run["name"],
                f"{run['rate']:g}/s burst {run['burst']:g}",
                writes["accepted"],
                f"{writes['mean_rate']:.3f}/s",
                busiest,
                str(result["throttled"] or "none"),
                "{max_over_min:.2f} / {first_half_max_over_min:.2f}".format(**result["fairness"]),
                str(result["outcomes"]["results"]),
                ", ".join(k for k, ok in verdict(result).items() if not ok) or "all met",
            ]
        )
    columns = ["run", "quota", "writes accepted", "mean rate", "busiest window: most/allowed"]
    columns += ["throttled", "fairness max/min (all / first half)", "client results", "missed"]
    return measure.table(columns, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quota", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=600.0, help="default-quota run bound")
    parser.add_argument("--fast-seconds", type=float, default=600.0, help="5 writes/s run bound")
    parser.add_argument("--runs", default="default,fast", help="which runs: default, fast")
    args = parser.parse_args(argv)
    bound = args.seconds or UNBOUNDED_SECONDS
    runs = {
        "default": Run("default quotas", 0.25, 1, args.clients, bound),
        "fast": Run("5 writes/s", 5.0, 5, args.clients, args.fast_seconds),
    }
    keys = args.runs.split(",")
    results = []
    for key in keys:
        run = runs[key]
        with stack.running(run.options(), f"quota-{key}") as running:
            results.append(uvloop.run(measure_run(running, run)))
        print(report(results[-1:]), flush=True)
    name = "quota" if sorted(keys) == sorted(runs) else "quota-" + "-".join(keys)
    path = measure.write_results(name, {"results": results})
    print(report(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
