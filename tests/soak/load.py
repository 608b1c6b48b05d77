"""The soak's load: steady update traffic, impatient clients, emulator faults changed at run time.

Workers each own a few image sets and update them one after another through the proxy. Some
clients walk away mid-stream and re-attach with WatchUpdate; a chaos task swaps the emulator's
fault knobs every phase and releases stalled updates. Everything observed goes into a `Tally`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions
import grpc
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2_grpc as pb_grpc

from tests.e2e.faults.harness import Emulator, Outcome, dev, drain, name_update, watch

# Fault profiles the chaos task picks from; per-call faults hit only the proxy's own calls.
PROXY_CALLS = ["GetImageSet", "UpdateImageSetMetadata"]
FAULT_PROFILES: tuple[Mapping[str, object], ...] = (
    {},
    {"error_rate": 0.3, "operations": ["GetImageSet"]},
    {"latency_ms": 150, "jitter_ms": 350, "operations": PROXY_CALLS},
    {"drop_rate": 0.2, "operations": ["GetImageSet"]},
    {"update_failure_rate": 0.3},
    {"update_stall_rate": 0.2},
    {"throttle_rate": 0.3},
    {"error_rate": 0.3, "operations": ["UpdateImageSetMetadata"]},
    {
        "error_rate": 0.1,
        "drop_rate": 0.1,
        "latency_ms": 50,
        "jitter_ms": 100,
        "update_failure_rate": 0.1,
    },
)


@dataclass(frozen=True)
class LoadSettings:
    """The shape of the load (all durations in seconds)."""

    duration: float
    workers: int = 6
    image_sets_per_worker: int = 2
    cancel_rate: float = 0.15
    """Fraction of clients that leave right after `submitted` and re-attach with WatchUpdate."""
    phase: float = 5.0
    """How long one fault profile stays on."""
    settle: float = 60.0
    """How long an accepted update may take to reach a terminal state once faults are off."""
    stream_deadline: float = 60.0
    """Client deadline on each stream (a hang shows as an unresolved update, not a stuck soak)."""
    seed: int = 20_261_123


@dataclass
class Tally:
    """What the clients saw."""

    accepted: int = 0
    finished: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    reattaches: int = 0
    walked_away: int = 0
    unresolved: dict[str, str] = field(default_factory=dict)
    """Accepted operations that never reported a terminal state → how their last stream ended."""
    latencies: list[float] = field(default_factory=list)
    accepted_per_image_set: Counter[str] = field(default_factory=Counter)
    profiles: dict[str, float] = field(default_factory=dict)
    """Seconds each fault profile was on."""

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "accepted": self.accepted,
            "finished": dict(self.finished),
            "refused": dict(self.refused),
            "reattaches": self.reattaches,
            "walked_away": self.walked_away,
            "unresolved": len(self.unresolved),
            "latency_p50_s": round(statistics.median(ordered), 3) if ordered else None,
            "latency_p95_s": round(ordered[int(len(ordered) * 0.95)], 3) if ordered else None,
            "fault_seconds": {k: round(v, 1) for k, v in self.profiles.items()},
        }


@dataclass
class Load:
    """One soak run's moving parts."""

    settings: LoadSettings
    emulator: Emulator
    stub: pb_grpc.MetadataUpdateServiceStub
    healthimaging: Any
    tally: Tally = field(default_factory=Tally)

    async def run(self) -> Tally:
        """Load and chaos for `duration`, then faults off and every accepted update settled."""
        rng = random.Random(self.settings.seed)
        stop_at = time.monotonic() + self.settings.duration
        chaos = asyncio.create_task(self._chaos(random.Random(rng.random()), stop_at))
        owned = _deal(self.emulator.image_set_ids, self.settings)
        workers = [
            self._worker(image_sets, random.Random(rng.random()), stop_at) for image_sets in owned
        ]
        await asyncio.gather(*workers)
        await chaos
        return self.tally

    async def _chaos(self, rng: random.Random, stop_at: float) -> None:
        """Every profile in turn (shuffled, then again), one phase each, stalls released between."""
        order: list[Mapping[str, object]] = []
        while time.monotonic() < stop_at:
            if not order:
                order = rng.sample(FAULT_PROFILES, len(FAULT_PROFILES))
            profile = order.pop()
            await asyncio.to_thread(self.emulator.set_faults, profile)
            await asyncio.to_thread(self.emulator.release_stalled)
            began = time.monotonic()
            await asyncio.sleep(min(self.settings.phase, max(0.0, stop_at - began)))
            label = _label(profile)
            self.tally.profiles[label] = (
                self.tally.profiles.get(label, 0.0) + time.monotonic() - began
            )
        await asyncio.to_thread(self.emulator.clear_faults)
        await asyncio.to_thread(self.emulator.release_stalled)

    async def _worker(self, image_sets: Sequence[str], rng: random.Random, stop_at: float) -> None:
        versions = {image_set: "1" for image_set in image_sets}
        count = 0
        while time.monotonic() < stop_at:
            image_set = rng.choice(list(image_sets))
            count += 1
            name = f"SOAK^{image_set[:6].upper()}{count}"
            request = name_update(self.emulator, image_set, name, versions[image_set])
            walk_away = rng.random() < self.settings.cancel_rate
            versions[image_set] = await self._one_update(request, walk_away)

    async def _one_update(self, request: pb.UpdateImageSetMetadataRequest, walk_away: bool) -> str:
        """Submit, follow (or leave and re-attach); returns the image set's new latest version."""
        started = time.monotonic()
        outcome = await self._submit(request, walk_away)
        if outcome.submitted is None:
            self.tally.refused[outcome.code.name] += 1
            return await self._latest_version(request.image_set_id)
        self.tally.accepted += 1
        self.tally.accepted_per_image_set[request.image_set_id] += 1
        finished = outcome.finished or await self._reattach(outcome.operation_id)
        if finished is None:
            return await self._latest_version(request.image_set_id)
        self.tally.finished[finished.image_set_workflow_status] += 1
        self.tally.latencies.append(time.monotonic() - started)
        return str(finished.latest_version_id)

    async def _submit(self, request: pb.UpdateImageSetMetadataRequest, walk_away: bool) -> Outcome:
        call: Any = self.stub.UpdateImageSetMetadata(
            request, metadata=dev(), timeout=self.settings.stream_deadline
        )
        if not walk_away:
            return await drain(call)
        events: list[pb.UpdateEvent] = []
        try:
            async for event in call:
                events.append(event)
                if event.HasField("submitted"):
                    self.tally.walked_away += 1
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as error:
            return Outcome(tuple(events), error.code(), error.details() or "")
        return Outcome(tuple(events), grpc.StatusCode.CANCELLED, "client walked away")

    async def _reattach(self, operation_id: str) -> pb.ImageSetState | None:
        """WatchUpdate until the operation reports its terminal state, or `settle` runs out."""
        give_up_at, last = time.monotonic() + self.settings.settle, "never re-attached"
        while time.monotonic() < give_up_at:
            self.tally.reattaches += 1
            outcome = await watch(self.stub, operation_id)
            if outcome.finished is not None:
                return outcome.finished
            last = f"{outcome.code.name}: {outcome.details}"
            await asyncio.sleep(1.0)  # re-attach pacing, as a client would back off
        self.tally.unresolved[operation_id] = last
        return None

    async def _latest_version(self, image_set_id: str) -> str:
        """Ask the emulator directly (retrying through whatever faults are on)."""
        for _ in range(100):
            try:
                got = await self.healthimaging.get_image_set(
                    datastoreId=self.emulator.datastore_id, imageSetId=image_set_id
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.HTTPClientError):
                await asyncio.sleep(0.1)
                continue
            if got["imageSetState"] != "LOCKED":
                return str(got["versionId"])
            await asyncio.sleep(0.2)
        raise AssertionError(f"image set {image_set_id} never settled")


def _deal(image_set_ids: Sequence[str], settings: LoadSettings) -> list[list[str]]:
    """Give each worker its own image sets, so no two clients race on one version."""
    per = settings.image_sets_per_worker
    needed = settings.workers * per
    if len(image_set_ids) < needed:
        raise RuntimeError(f"the soak needs {needed} image sets, {len(image_set_ids)} seeded")
    return [list(image_set_ids[i * per : (i + 1) * per]) for i in range(settings.workers)]


def _label(profile: Mapping[str, object]) -> str:
    knobs = [f"{k}={v}" for k, v in sorted(profile.items()) if k != "operations"]
    scope = profile.get("operations")
    where = f" on {'/'.join(scope)}" if isinstance(scope, list) else ""
    return (",".join(knobs) or "calm") + where
