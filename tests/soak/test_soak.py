"""A bounded soak: steady load with random faults; every accepted update ends, the proxy stays flat.

`SOAK_SECONDS` sets the length (60 s by default, as `make test` runs it; `make soak` runs 600).
`SOAK_REPORT=path.json` writes the figures quoted in docs/OPERATIONS.md.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.faults.harness import (
    Emulator,
    Proxy,
    environ_seconds,
    eventually,
    metric_value,
    metrics_text,
)
from tests.soak.load import Load, LoadSettings
from tests.soak.resources import MIB, Footprint, Sampler

pytestmark = pytest.mark.e2e

SOAK_SECONDS = environ_seconds("SOAK_SECONDS", 60.0)
# Flat means: after warm-up, memory may wobble (allocator, caches) but not grow with traffic.
RSS_SLACK_BYTES = 24 * MIB
RSS_SLACK_FRACTION = 0.25
OPEN_FILES_SLACK = 16


IDLE = {"open_streams": 0.0, "running_operations": 0.0, "poll_loops": 0.0}


@pytest.mark.timeout(SOAK_SECONDS + 300)
async def test_soak_every_accepted_update_ends_and_the_proxy_stays_flat(
    load_settings: LoadSettings,
    soak_emulator: Emulator,
    soak_proxy: Proxy,
    soak_stub: pb_grpc.MetadataUpdateServiceStub,
    soak_healthimaging: Any,
    metrics_port: int,
) -> None:
    load = Load(load_settings, soak_emulator, soak_stub, soak_healthimaging)
    sampler, done = Sampler(soak_proxy.pid), asyncio.Event()
    sampling = asyncio.create_task(sampler.run(done))

    tally = await load.run()
    done.set()
    await sampling
    idle = await _idle_gauges(metrics_port)
    warm, end = sampler.after(min(20.0, SOAK_SECONDS / 4)), Footprint.of(soak_proxy.pid)
    latest = await _latest_states(soak_emulator, soak_healthimaging, load)
    expected = {i: (str(1 + n), "ACTIVE") for i, n in tally.accepted_per_image_set.items()}
    checks = {
        "every accepted update ended": not tally.unresolved and tally.accepted > 0,
        "one version per accepted update, none LOCKED": latest == expected,
        "no stream, task or poll loop left": idle == IDLE,
        "RSS flat": end.rss_bytes <= warm.rss_bytes * (1 + RSS_SLACK_FRACTION) + RSS_SLACK_BYTES,
        "open files flat": end.open_files <= warm.open_files + OPEN_FILES_SLACK,
    }
    _report(load, warm, end, sampler, metrics_port, {**checks, "idle_gauges": idle})

    failed = [name for name, ok in checks.items() if not ok]
    assert not failed, f"{failed}; unresolved operations: {tally.unresolved}"


async def _idle_gauges(port: int) -> dict[str, float]:
    """The proxy's task gauges once the load has stopped (they may take a moment to drain)."""

    def read() -> dict[str, float]:
        text = metrics_text(port)
        return {name: metric_value(text, f"imaging_proxy_{name}") for name in IDLE}

    async def drained() -> dict[str, float] | None:
        gauges = await asyncio.to_thread(read)
        return gauges if gauges == IDLE else None

    try:
        return await eventually(drained, within=30)
    except AssertionError:
        return await asyncio.to_thread(read)


async def _latest_states(emulator: Emulator, client: Any, load: Load) -> dict[str, tuple[str, str]]:
    """Each image set the soak touched: its latest version and state."""
    latest = {}
    for image_set in load.tally.accepted_per_image_set:
        got = await client.get_image_set(datastoreId=emulator.datastore_id, imageSetId=image_set)
        latest[image_set] = (str(got["versionId"]), str(got["imageSetState"]))
    return latest


def _report(
    load: Load,
    warm: Footprint,
    end: Footprint,
    sampler: Sampler,
    port: int,
    checks: Mapping[str, object],
) -> None:
    exported = metrics_text(port)
    figures = {
        "checks": dict(checks),
        "seconds": load.settings.duration,
        "workers": load.settings.workers,
        **load.tally.summary(),
        "proxy_warm": warm.describe(),
        "proxy_end": end.describe(),
        "proxy_peak_rss_mib": round(sampler.peak_rss / MIB, 1),
        "backend_calls": _backend_calls(load.emulator),
        "throttles_absorbed": _by_labels(
            exported, "imaging_proxy_backend_throttles_total", ("operation",)
        ),
        "rpcs": _by_labels(exported, "imaging_proxy_requests_total", ("rpc", "outcome")),
    }
    print("\nsoak figures:", json.dumps(figures, indent=2))
    if path := os.environ.get("SOAK_REPORT"):
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


def _by_labels(text: str, name: str, labels: tuple[str, ...]) -> dict[str, float]:
    """A counter's samples keyed by their label values ("rpc outcome" → count)."""
    return {
        " ".join(sample.labels[label] for label in labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def _backend_calls(emulator: Emulator) -> dict[str, int]:
    """What reached the emulator, by operation and status (0: connection dropped)."""
    counts: dict[str, int] = {}
    for entry in emulator.requests():
        key = f"{entry['operation']} {entry['status']}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
