"""`python -m benchmarks [--quick] [NAME ...]`: run the benchmarks in order (`make bench`).

Each benchmark starts its own OPA, emulator and proxy on 127.0.0.1, runs a bounded amount of
work, stops everything and writes build/bench/<name>.json. `--quick` runs every one at a small
size (a few minutes in all) to check the harness, not to measure.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from benchmarks import grpc_load, idle_streams, overhead, quota, replicas, starvation, waiting

Main = Callable[[Sequence[str] | None], int]

BENCHMARKS: dict[str, tuple[Main, list[str], list[str]]] = {
    # name: (entry point, full-size arguments, quick arguments)
    "overhead": (overhead.main, [], ["--updates", "200", "--repeats", "1"]),
    "grpc_load": (grpc_load.main, [], ["--seconds", "2", "--updates", "200", "--repeats", "1"]),
    "waiting": (
        waiting.main,
        [],
        ["--streams", "1000", "--hold-seconds", "5", "--durations", "0.5"],
    ),
    "idle_streams": (idle_streams.main, [], ["--streams", "1000", "--hold-seconds", "3"]),
    "quota": (
        quota.main,
        [],
        ["--clients", "100", "--seconds", "30", "--fast-clients", "100", "--fast-seconds", "60"],
    ),
    "replicas": (replicas.main, [], ["--clients", "40", "--seconds", "60"]),
    "starvation": (
        starvation.main,
        [],
        ["--victims", "1", "--unpaced", "200", "--head-start", "2"],
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: check the harness")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    failed = []
    for name in args.names or list(BENCHMARKS):
        entry, full, quick = BENCHMARKS[name]
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        if entry(quick if args.quick else full) != 0:
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - started:.0f} s ===", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
