"""The proxy's footprint over a soak, read from /proc: resident memory, open files, threads."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from tests.e2e.faults.harness import rss_bytes

MIB = 1024 * 1024


@dataclass(frozen=True)
class Footprint:
    """One reading of a process."""

    at: float
    rss_bytes: int
    open_files: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> Footprint:
        threads = len(os.listdir(f"/proc/{pid}/task"))
        return cls(time.monotonic(), rss_bytes(pid), len(os.listdir(f"/proc/{pid}/fd")), threads)

    def describe(self) -> dict[str, float]:
        return {
            "rss_mib": round(self.rss_bytes / MIB, 1),
            "open_files": self.open_files,
            "threads": self.threads,
        }


@dataclass
class Sampler:
    """Reads the process every `interval` seconds while the soak runs."""

    pid: int
    interval: float = 1.0
    readings: list[Footprint] = field(default_factory=list)

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            self.readings.append(Footprint.of(self.pid))
            try:
                async with asyncio.timeout(self.interval):
                    await until.wait()
            except TimeoutError:
                continue

    def after(self, seconds: float) -> Footprint:
        """The first reading taken `seconds` or more after the first one (warmed up)."""
        start = self.readings[0].at
        for reading in self.readings:
            if reading.at - start >= seconds:
                return reading
        return self.readings[-1]

    @property
    def peak_rss(self) -> int:
        return max(r.rss_bytes for r in self.readings)
