"""Measuring: percentiles, per-process CPU and RSS from /proc, result files and markdown tables."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "build" / "bench"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds used so far and resident memory of one process, at one instant."""

    pid: int
    at: float
    cpu_seconds: float
    rss_bytes: int


def sample(pid: int) -> ProcessSample:
    """Read /proc/<pid>/stat (utime + stime) and /proc/<pid>/status (VmRSS)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return ProcessSample(pid, time.monotonic(), cpu, rss)


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def own_cpu_seconds() -> float:
    """CPU time of this process, all threads (gRPC's and the event loop's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds a process used between two samples, and its peak RSS seen."""

    cpu_seconds: float
    wall_seconds: float
    rss_bytes: int

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else math.nan


class CpuMeter:
    """CPU used by named processes over a window: `start()`, work, `stop()`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._before: dict[str, ProcessSample] = {}
        self._own_before = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._before = {name: sample(pid) for name, pid in self._pids.items()}
        self._own_before = own_cpu_seconds()
        self._started = time.monotonic()

    def stop(self) -> dict[str, CpuUse]:
        wall = time.monotonic() - self._started
        used = {
            name: _difference(self._before[name], sample(pid), wall)
            for name, pid in self._pids.items()
        }
        used["client"] = CpuUse(own_cpu_seconds() - self._own_before, wall, 0)
        return used


def _difference(before: ProcessSample, after: ProcessSample, wall: float) -> CpuUse:
    return CpuUse(after.cpu_seconds - before.cpu_seconds, wall, after.rss_bytes)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def write_results(name: str, document: Mapping[str, object]) -> Path:
    """build/bench/<name>.json, with when and where it was measured."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    stamped = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_end": load_average(),
        **document,
    }
    path.write_text(json.dumps(stamped, indent=2, default=str))
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats get a sensible number of digits."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ms(seconds: float) -> float:
    return seconds * 1000


def mb(size: int) -> float:
    return size / 1e6
