"""Benchmark 4, quota truth: hundreds of callers at once against HealthImaging's real write quota.

Two runs, each on a fresh stack: the emulator enforcing the default quotas (0.25 writes/s,
burst 1; GetImageSet 25/s) with the proxy's default budget, 300 clients (`--clients`); and both
raised to 5 writes/s, 1,000 clients (`--fast-clients`). The clients, spread evenly over 10
principals, each send one update (their own image set) at the same moment and read their stream
to the end. The emulator's request log must show no more accepted writes in any window than the
quota allows, no throttled call, every principal served alike (max/min completions ≤ 1.2), and
every update finished: issue 12's four goals, each reported met or not.
At 0.25 writes/s, 300 updates take 20 minutes: the default run waits for all of them, bounded by
`--seconds` (clients still queued then are counted UNFINISHED); `--seconds 0` waits unbounded.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import uvloop

from benchmarks import crowd, goals, measure, stack
from devstack.settings import update_quota

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
        quotas: stack.Quotas = "default" if default else update_quota(self.rate, self.burst)
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
    result = {
        "run": run.__dict__,
        "writes": crowd.write_check(requests, run.rate, run.burst),
        "throttled": crowd.throttles(requests),
        "throttle_context": crowd.throttle_context(requests, probes),
        "probe_round_trips_s": crowd.probe_summary(probes),
        "fairness": crowd.fairness(outcomes),
        "outcomes": crowd.outcome_summary(outcomes),
        "clients": [dataclasses.asdict(o) for o in outcomes],
    }
    result["goals"] = verdict(result)
    return result


def verdict(result: dict[str, Any]) -> list[goals.Goal]:
    """Issue 12's four goals for a quota run."""
    outcomes, fairness = result["outcomes"], result["fairness"]
    busiest = max(w["most"] / w["allowed"] for w in result["writes"]["windows"].values())
    updated = outcomes["results"].get("UPDATED", 0) / max(1, outcomes["clients"])
    return [
        goals.at_most("writes within quota: busiest window, accepted/allowed", busiest, 1.0),
        goals.at_most("throttled calls", float(sum(result["throttled"].values())), 0),
        goals.at_most(
            "fairness max/min (whole run and first half)",
            max(fairness["max_over_min"], fairness["first_half_max_over_min"]),
            FAIRNESS,
        ),
        goals.at_least("every update finished: share UPDATED", updated, 1.0),
    ]


FAIRNESS = 1.2


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
                ", ".join(g["goal"] for g in verdict(result) if not g["met"]) or "all met",
            ]
        )
    columns = ["run", "quota", "writes accepted", "mean rate", "busiest window: most/allowed"]
    columns += ["throttled", "fairness max/min (all / first half)", "client results", "missed"]
    return measure.table(columns, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quota", description=__doc__)
    parser.add_argument("--clients", type=int, default=300, help="default-quota run clients")
    parser.add_argument("--seconds", type=float, default=1800.0, help="default-quota run bound")
    parser.add_argument("--fast-clients", type=int, default=1000, help="5 writes/s run clients")
    parser.add_argument("--fast-seconds", type=float, default=600.0, help="5 writes/s run bound")
    parser.add_argument("--runs", default="default,fast", help="which runs: default, fast")
    args = parser.parse_args(argv)
    bound = args.seconds or UNBOUNDED_SECONDS
    runs = {
        "default": Run("default quotas", 0.25, 1, args.clients, bound),
        "fast": Run("5 writes/s", 5.0, 5, args.fast_clients, args.fast_seconds),
    }
    keys = args.runs.split(",")
    results = []
    for key in keys:
        run = runs[key]
        with stack.running(run.options(), f"quota-{key}") as running:
            results.append(uvloop.run(measure_run(running, run)))
        print(report(results[-1:]), goals.table(results[-1]["goals"]), sep="\n\n", flush=True)
    name = "quota" if sorted(keys) == sorted(runs) else "quota-" + "-".join(keys)
    path = measure.write_results(name, {"results": results})
    print(report(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
