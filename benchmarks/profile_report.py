"""Where the proxy's time goes: a pyinstrument session summarised by pipeline stage.

pyinstrument samples the proxy's main thread (the event loop) every millisecond. Each sample's
stack is attributed to the outermost frame that names a stage (the submit call, the poll loop,
the OPA call, ...); what runs outside any Python frame (uvloop's and gRPC core's C code, and
waiting in epoll) shows up as the event loop's own time.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyinstrument.session import Session

from benchmarks import measure

# (stage, a substring of the function name, a substring of the file path). A sample belongs to
# the innermost frame naming a proxy stage; failing that, to the innermost naming a library.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("backend: submit (aioboto3 UpdateImageSetMetadata)", "HealthImaging.update", "healthimaging"),
    ("backend: poll (aioboto3 GetImageSet)", "HealthImaging.get_image_set", "healthimaging"),
    ("watch loop", "", "service/watch"),
    ("policy: OPA call (aiohttp)", "PolicyClient.decide", "service/policy"),
    ("normaliser", "normalise", "service/updates"),
    ("identity", "Authenticator.authenticate", "service/identity"),
    ("audit log lines", "", "service/audit"),
    ("events → protobuf", "to_pb_event", "service/server"),
    ("request → domain", "to_update_request", "service/server"),
    ("journal", "", "service/journal"),
    ("admission queue", "", "service/admission"),
    ("quota budget", "", "service/budget"),
    ("events (replay, JSON)", "", "service/events"),
    ("metrics", "", "service/metrics"),
    ("operation runner", "", "service/runner"),
    ("streams: fan-out, heartbeats", "", "service/streams"),
    ("health monitor", "", "service/transport/health.py"),
    ("gRPC handlers", "", "service/server"),
)
LIBRARIES: tuple[tuple[str, str, str], ...] = (
    ("gRPC server (Python part)", "", "grpc/aio"),
    ("gRPC server (Cython part)", "", "grpc/_cython"),
    ("structlog", "", "structlog"),
    ("sqlite3 (on the event loop)", "", "sqlite3"),
    ("prometheus_client", "", "prometheus_client"),
    ("start-up (imports)", "_find_and_load", "importlib"),
)
LOOP = "event loop: C code (uvloop, gRPC core) and idle"
OTHER = "other Python"


def stage_of(path: Sequence[Any]) -> str:
    """The stage of the innermost frame on the path (root first) that names one."""
    for stages in (STAGES, LIBRARIES):
        for frame in reversed(path):
            for stage, function, file_part in stages:
                if function in _qualified(frame) and file_part in (frame.file_path or ""):
                    return stage
    return OTHER


def _qualified(frame: Any) -> str:
    return f"{frame.class_name}.{frame.function}" if frame.class_name else str(frame.function)


def breakdown(session: Session) -> dict[str, float]:
    """Seconds of samples per stage."""
    totals: dict[str, float] = defaultdict(float)
    stack: list[tuple[Any, list[Any]]] = [(session.root_frame(), [])]
    while stack:
        frame, parents = stack.pop()
        path = [*parents, frame]
        own = _self_time(frame)
        if own > 0:
            is_loop = frame.is_synthetic and _qualified(parents[-1]) == "Runner.run"
            totals[LOOP if is_loop else stage_of(path)] += own
        stack.extend((child, path) for child in frame.children)
    return totals


def _self_time(frame: Any) -> float:
    return float(frame.time - sum(child.time for child in frame.children))


def report(path: Path, updates: int = 0) -> str:
    session = Session.load(str(path))
    totals = breakdown(session)
    busy = sum(seconds for stage, seconds in totals.items() if stage != LOOP)
    rows: list[list[object]] = []
    for stage, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        share = seconds / busy if stage != LOOP and busy else float("nan")
        per_update = seconds / updates * 1e6 if updates else float("nan")
        rows.append([stage, seconds, share * 100, per_update])
    header = (
        f"pyinstrument: {session.duration:.1f} s wall, {session.cpu_time:.1f} s CPU, "
        f"{session.sample_count} samples; Python-attributed {busy:.2f} s"
    )
    columns = ["stage", "seconds", "% of Python time", "µs per update"]
    return header + "\n\n" + measure.table(columns, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_report", description=__doc__
    )
    parser.add_argument("session", type=Path, help="a .pyisession file")
    parser.add_argument("--updates", type=int, default=0, help="updates in the profiled run")
    args = parser.parse_args(argv)
    print(report(args.session, args.updates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
