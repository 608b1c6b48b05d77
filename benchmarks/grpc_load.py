"""Benchmark 2, gRPC load: ghz against EvaluateUpdate and UpdateImageSetMetadata.

ghz (a Go load generator, its own process) reads the contract by server reflection, as a user
would; if the server's reflection cannot serve it, from a protoset built from protos/.
EvaluateUpdate (identity, normaliser, one OPA decision) runs for `--seconds` per cell.
UpdateImageSetMetadata streams each update until `finished`: every call must name an image set's
current version, so each cell sends one update to each of `--updates` seeded image sets (ghz
sends the messages of a JSON array round robin) and the next cell bumps the version.
The emulator applies each update 1 ms after accepting it, so the cost measured is the
proxy's, OPA's and the emulator's CPU, not a wait.
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import measure, stack, workload

SERVICE = "imaging.metadata.v1.MetadataUpdateService"
GHZ_PIN = "make tools"
PROTO_ROOT = Path(__file__).resolve().parents[1] / "protos"
PROTO = PROTO_ROOT / "imaging" / "metadata" / "v1" / "metadata.proto"


def find_ghz() -> str:
    found = shutil.which("ghz") or Path(__file__).resolve().parents[1] / ".tools" / "bin" / "ghz"
    if not Path(found).exists():
        raise FileNotFoundError(f"ghz not found: `{GHZ_PIN}` installs the pinned version")
    return str(found)


def contract(endpoint: str, work: Path) -> list[str]:
    """ghz's options naming the contract: none (server reflection) when one call gets through
    that way, else a protoset (ghz cannot parse metadata.proto's proto3 `optional` itself)."""
    probe = [find_ghz(), "--insecure", "--call", f"{SERVICE}/EvaluateUpdate", "--data", "{}"]
    probe += ["--total", "1", "--format", "json", endpoint]
    completed = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    if completed.returncode == 0:
        return []
    print(f"  ghz by reflection failed, using a protoset: {completed.stderr[-500:]}", flush=True)
    return ["--protoset", str(protoset(work / "metadata.protoset"))]


def protoset(path: Path) -> Path:
    """The contract and its imports as a FileDescriptorSet (grpcio-tools' protoc)."""
    argv = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", "--include_imports"]
    argv += [f"--descriptor_set_out={path}", str(PROTO)]
    subprocess.run(argv, check=True, timeout=60)
    return path


def message(datastore_id: str, image_set_id: str, version: str, sequence: int) -> dict[str, Any]:
    """An UpdateImageSetMetadataRequest in protobuf JSON (bytes are base64)."""
    blob = base64.b64encode(workload.attributes(sequence)).decode()
    return {
        "datastore_id": datastore_id,
        "image_set_id": image_set_id,
        "latest_version_id": version,
        "dicom_updates": {"updatable_attributes": blob},
    }


@dataclass(frozen=True)
class GhzRun:
    """One ghz run: its summary and the CPU each process used meanwhile."""

    method: str
    concurrency: int
    count: int
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    cpu_us_per_call: dict[str, float]


@dataclass(frozen=True)
class Target:
    """Where ghz sends its calls, and how it learns the contract (see `contract`)."""

    endpoint: str
    contract: tuple[str, ...]


def run_ghz(
    target: Target, method: str, data: Path, concurrency: int, limit: Sequence[str]
) -> dict[str, Any]:
    argv = [find_ghz(), "--insecure", *target.contract]
    argv += ["--call", f"{SERVICE}/{method}", "--data-file", str(data)]
    argv += ["--metadata", json.dumps({"x-dev-principal": stack.PRINCIPALS[0]})]
    argv += ["--concurrency", str(concurrency), "--connections", "1", "--timeout", "30s"]
    argv += ["--format", "json", *limit, target.endpoint]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"ghz failed ({completed.returncode}): {completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def measured(
    running: stack.Stack,
    target: Target,
    method: str,
    data: Path,
    concurrency: int,
    limit: Sequence[str],
) -> GhzRun:
    meter = measure.CpuMeter(running.pids())
    ghz_before = _children_cpu()
    meter.start()
    result = run_ghz(target, method, data, concurrency, limit)
    cpu = meter.stop()
    count = int(result["count"])
    per_call = {
        name: use.cpu_seconds / count * 1e6 for name, use in cpu.items() if name != "client"
    }
    per_call["ghz"] = (_children_cpu() - ghz_before) / count * 1e6
    latencies = {row["percentage"]: row["latency"] / 1e6 for row in result["latencyDistribution"]}
    run = GhzRun(
        method,
        concurrency,
        count,
        float(result["rps"]),
        latencies[50],
        latencies[99],
        dict(result["statusCodeDistribution"]),
        per_call,
    )
    print(
        f"  {method:24} c={concurrency:<3} {run.rps:7.0f}/s p50 {run.p50_ms:6.2f} ms "
        f"p99 {run.p99_ms:6.2f} ms {run.statuses}",
        flush=True,
    )
    return run


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...]
    seconds: float
    updates: int
    repeats: int


def run_all(running: stack.Stack, target: Target, plan: Plan, work: Path) -> list[GhzRun]:
    evaluate = work / "evaluate.json"
    first = running.image_set_ids[0]
    evaluate.write_text(json.dumps(message(running.datastore_id, first, "1", 0)))
    runs = []
    run_ghz(target, "EvaluateUpdate", evaluate, 16, ["--total", "2000"])  # warm-up
    for concurrency in plan.concurrency:
        for _ in range(plan.repeats):
            # Calls still open when the time is up are left out, not counted as errors.
            limit = ["--duration", f"{plan.seconds:g}s", "--duration-stop", "ignore"]
            runs.append(measured(running, target, "EvaluateUpdate", evaluate, concurrency, limit))
    warm_up, measured_sets = running.image_set_ids[:WARM_UP], running.image_set_ids[WARM_UP:]
    batch = _update_batch(running.datastore_id, warm_up, 1, work)
    run_ghz(target, "UpdateImageSetMetadata", batch, 16, ["--total", str(WARM_UP)])
    version = 1
    for concurrency in plan.concurrency:
        for _ in range(plan.repeats):
            batch = _update_batch(running.datastore_id, measured_sets, version, work)
            limit = ["--total", str(len(measured_sets))]
            runs.append(
                measured(running, target, "UpdateImageSetMetadata", batch, concurrency, limit)
            )
            version += 1
    return runs


def _update_batch(
    datastore_id: str, image_set_ids: Sequence[str], version: int, work: Path
) -> Path:
    """One update per image set, each naming `version` as the latest."""
    path = work / f"updates-{version}-{len(image_set_ids)}.json"
    batch = [
        message(datastore_id, image_set_id, str(version), index)
        for index, image_set_id in enumerate(image_set_ids)
    ]
    path.write_text(json.dumps(batch))
    return path


def summarise(runs: Sequence[GhzRun]) -> list[dict[str, Any]]:
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        for concurrency in dict.fromkeys(r.concurrency for r in runs):
            cell = [r for r in runs if r.method == method and r.concurrency == concurrency]
            rows.append(
                {
                    "method": method,
                    "concurrency": concurrency,
                    "rps": measure.median([r.rps for r in cell]),
                    "p50_ms": measure.median([r.p50_ms for r in cell]),
                    "p99_ms": measure.median([r.p99_ms for r in cell]),
                    "calls": sum(r.count for r in cell),
                    "not_ok": sum(n for r in cell for s, n in r.statuses.items() if s != "OK"),
                    "statuses": dict(sum((Counter(r.statuses) for r in cell), Counter())),
                    "cpu_us_per_call": {
                        name: measure.median([r.cpu_us_per_call[name] for r in cell])
                        for name in cell[0].cpu_us_per_call
                    },
                }
            )
    return rows


def report(rows: Sequence[dict[str, Any]]) -> str:
    columns = ["method", "concurrency", "RPS", "p50 ms", "p99 ms", "calls", "not OK"]
    columns += ["proxy µs/call", "OPA µs/call", "emulator µs/call", "ghz µs/call"]
    return measure.table(columns, [_row(r) for r in rows])


def _row(r: dict[str, Any]) -> list[object]:
    keys = ("method", "concurrency", "rps", "p50_ms", "p99_ms", "calls", "not_ok")
    return [*(r[key] for key in keys), *(r["cpu_us_per_call"][p] for p in PROCESSES)]


PROCESSES = ("proxy-0", "opa", "emulator", "ghz")
WARM_UP = 100
"""Image sets updated once, untimed, before the update runs (the proxy's client warms up)."""


def _route(target: Target) -> str:
    return "protoset" if target.contract else "reflection"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_load", description=__doc__)
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--seconds", type=float, default=5.0, help="EvaluateUpdate run length")
    parser.add_argument("--updates", type=int, default=1000, help="updates per update run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median kept)")
    parser.add_argument("--profile", type=Path, help="run the proxy under pyinstrument")
    args = parser.parse_args(argv)
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    plan = Plan(concurrency, args.seconds, args.updates, args.repeats)
    find_ghz()
    options = stack.StackOptions(image_sets=WARM_UP + plan.updates, profile=args.profile)
    with (
        stack.running(options, "grpc-load") as running,
        tempfile.TemporaryDirectory() as work,
    ):
        target = Target(running.endpoint, tuple(contract(running.endpoint, Path(work))))
        runs = run_all(running, target, plan, Path(work))
    rows = summarise(runs)
    name = "grpc-load-profiled" if args.profile else "grpc-load"
    path = measure.write_results(
        name, {"plan": plan.__dict__, "contract": _route(target), "rows": rows}
    )
    print(report(rows))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
