"""`imaging-proxy` with tracemalloc on: SIGUSR1 writes where the Python heap grew, by source line.

`python -m benchmarks.traced_proxy REPORT serve ...` runs `imaging-proxy serve ...`. The first
SIGUSR1 takes a baseline snapshot; each later one writes REPORT (JSON): the traced Python total
and the allocation sites that grew most since the baseline. What RSS grew beyond the traced
growth is C memory (gRPC core, uvloop, the allocators' slack).
"""

from __future__ import annotations

import json
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 8
TOP = 40


class HeapReports:
    """Baseline on the first signal, growth since it on each later one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._baseline: tracemalloc.Snapshot | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),)
        )
        traced, _ = tracemalloc.get_traced_memory()
        if self._baseline is None:
            self._baseline = snapshot
            self._write({"baseline_traced_bytes": traced})
            return
        by_line = snapshot.compare_to(self._baseline, "lineno")[:TOP]
        by_trace = snapshot.compare_to(self._baseline, "traceback")[:TOP]
        self._write(
            {
                "traced_bytes": traced,
                "by_line": [_growth(s.traceback, s.size_diff, s.count_diff) for s in by_line],
                "by_traceback": [
                    _growth(s.traceback, s.size_diff, s.count_diff, whole=True) for s in by_trace
                ],
            }
        )

    def _write(self, report: dict[str, object]) -> None:
        temporary = self._path.with_name(self._path.name + ".tmp")
        temporary.write_text(json.dumps(report, indent=2))
        temporary.replace(self._path)


def _growth(
    traceback: tracemalloc.Traceback, size: int, blocks: int, whole: bool = False
) -> dict[str, object]:
    where: object = [str(f) for f in traceback] if whole else str(traceback[0])
    return {"where": where, "bytes": size, "blocks": blocks}


def main() -> None:
    report, serve_args = Path(sys.argv[1]), sys.argv[2:]
    tracemalloc.start(FRAMES)

    signal.signal(signal.SIGUSR1, HeapReports(report).on_signal)
    from imaging_proxy_client.cli.main import main as cli

    cli(serve_args)


if __name__ == "__main__":
    main()
