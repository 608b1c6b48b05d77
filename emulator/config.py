"""The emulator's settings: frozen dataclasses built once from a TOML file and CLI flags."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from emulator.state import Progression, Trigger


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests per second, bursts of up to `burst`."""

    rate: float
    burst: float


# HealthImaging's documented per-account throttling limits (devguide "throttling limits").
DEFAULT_TPS: Mapping[str, RateLimit] = MappingProxyType(
    {
        "UpdateImageSetMetadata": RateLimit(0.25, 1),
        "CopyImageSet": RateLimit(0.25, 1),
        "DeleteImageSet": RateLimit(0.25, 1),
        "GetImageSet": RateLimit(25, 50),
        "GetImageSetMetadata": RateLimit(50, 100),
        "ListImageSetVersions": RateLimit(25, 50),
        "SearchImageSets": RateLimit(25, 50),
        "GetImageFrame": RateLimit(1000, 2000),
        "StartDICOMImportJob": RateLimit(1, 2),
        "GetDICOMImportJob": RateLimit(25, 50),
        "ListDICOMImportJobs": RateLimit(25, 50),
        "CreateDatastore": RateLimit(0.25, 1),
        "GetDatastore": RateLimit(25, 50),
        "ListDatastores": RateLimit(25, 50),
        "DeleteDatastore": RateLimit(0.25, 1),
    }
)


@dataclass(frozen=True)
class Quotas:
    """Service quotas, enforced like HealthImaging's defaults unless raised."""

    enforce: bool = True
    """False turns every quota below off."""
    tps: Mapping[str, RateLimit] = field(default_factory=lambda: DEFAULT_TPS)
    """Per-operation token buckets (ThrottlingException when empty)."""
    concurrent_updates_per_datastore: int = 100
    """LOCKED-by-update image sets per data store (ServiceQuotaExceededException above)."""
    concurrent_copies_per_datastore: int = 100
    """Copies in progress per data store."""
    max_update_payload_bytes: int = 10_240
    """Both attribute blobs together: the default payload quota (L-A880A4C2, 10 KB)."""


@dataclass(frozen=True)
class Faults:
    """Injected failures; replaced at run time through PUT /_emulator/faults."""

    throttle_rate: float = 0.0
    """Fraction of API calls answered 429 ThrottlingException."""
    error_rate: float = 0.0
    """Fraction of API calls answered 500 InternalServerException."""
    latency_ms: float = 0.0
    """Fixed latency added to every API call."""
    jitter_ms: float = 0.0
    """Extra latency, uniform in [0, jitter_ms]."""
    drop_rate: float = 0.0
    """Fraction of API calls whose connection is closed without an answer."""
    update_failure_rate: float = 0.0
    """Fraction of accepted updates that end UPDATE_FAILED."""
    update_stall_rate: float = 0.0
    """Fraction of accepted updates that stay LOCKED/UPDATING until released."""
    answer_drop_rate: float = 0.0
    """Fraction of calls applied, whose connection is then closed without the answer (a write
    that landed although its caller saw a network failure)."""
    answer_delay_ms: float = 0.0
    """Calls are applied at once, then their answer is held this long (on top of latency)."""
    read_lag_ms: float = 0.0
    """GetImageSet and GetImageSetMetadata without a version show the version before the
    latest until the latest is this old (a read that lags a write)."""
    operations: tuple[str, ...] = ()
    """Restrict the per-call faults to these operations; empty means every operation."""

    def applies_to(self, operation: str) -> bool:
        return not self.operations or operation in self.operations


@dataclass(frozen=True)
class Progressions:
    """When each kind of asynchronous work completes (the state table's timing)."""

    update: Progression = field(default_factory=Progression)
    copy: Progression = field(default_factory=Progression)
    delete: Progression = field(default_factory=Progression)
    import_job: Progression = field(default_factory=Progression)
    datastore: Progression = field(default_factory=lambda: Progression(Trigger.IMMEDIATE, 0))


@dataclass(frozen=True)
class Settings:
    """Everything the emulator needs to run."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8080
    """TCP port (0 picks a free one)."""
    seeds: tuple[Path, ...] = ()
    """DICOM files or folders imported at start, one image set per StudyInstanceUID."""
    datastore_id: str | None = None
    """Id of the seeded data store (random when None)."""
    seed_primary: bool = True
    """Whether seeded image sets are primary."""
    import_primary: bool = True
    """Whether import jobs create primary image sets (unless the study already has one)."""
    ready_file: Path | None = None
    """Written with the URL and ids once the server answers."""
    region: str = "us-east-1"
    """Region used in ARNs."""
    account_id: str = "123456789012"
    """Account used in ARNs."""
    content_checks: str = "async"
    """'async': updates that do not fit the current metadata end UPDATE_FAILED; 'sync': 400."""
    lenient_base64_blobs: bool = True
    """Accept attribute blobs that are base64 text of the JSON (AWS CLI v1 double encoding)."""
    import_folders: Mapping[str, Path] = field(default_factory=dict)
    """S3 URI prefix → local folder read by StartDICOMImportJob."""
    progressions: Progressions = Progressions()
    faults: Faults = Faults()
    quotas: Quotas = Quotas()
    random_seed: int | None = None
    """Seed for the fault dice (reproducible runs)."""


_SCALAR_SETTINGS = frozenset(
    {"host", "port", "datastore_id", "seed_primary", "import_primary", "region", "account_id"}
    | {"content_checks", "random_seed", "lenient_base64_blobs"}
)


def load_toml(path: Path) -> Settings:
    """A TOML file (top level or an [emulator] table) → Settings."""
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    return from_mapping(raw.get("emulator", raw))


def from_mapping(raw: Mapping[str, Any]) -> Settings:
    scalars = {k: v for k, v in raw.items() if k in _SCALAR_SETTINGS}
    settings = Settings(**scalars)
    if "seeds" in raw:
        settings = dataclasses.replace(settings, seeds=tuple(Path(p) for p in raw["seeds"]))
    if "update_delay" in raw:
        settings = with_update_delay(settings, float(raw["update_delay"]))
    return dataclasses.replace(
        settings,
        import_folders={k: Path(v) for k, v in raw.get("import_folders", {}).items()},
        progressions=_progressions(settings.progressions, raw.get("progression", {})),
        faults=faults_from_mapping(raw.get("faults", {})),
        quotas=_quotas(raw.get("quotas", {})),
    )


def with_update_delay(settings: Settings, seconds: float) -> Settings:
    """The same delay for updates, copies, deletes and imports (0 = immediate)."""
    step = (
        Progression(Trigger.SECONDS, seconds) if seconds > 0 else Progression(Trigger.IMMEDIATE, 0)
    )
    progressions = dataclasses.replace(
        settings.progressions, update=step, copy=step, delete=step, import_job=step
    )
    return dataclasses.replace(settings, progressions=progressions)


def _progressions(base: Progressions, raw: Mapping[str, Any]) -> Progressions:
    changes = {
        kind: Progression(Trigger(spec.get("trigger", "seconds")), float(spec.get("value", 0)))
        for kind, spec in raw.items()
    }
    return dataclasses.replace(base, **changes)


def faults_from_mapping(raw: Mapping[str, Any]) -> Faults:
    known = {f.name for f in dataclasses.fields(Faults)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown fault setting: {unknown[0]}")
    rates: dict[str, Any] = {k: float(v) for k, v in raw.items() if k != "operations"}
    faults = dataclasses.replace(Faults(), **rates)
    return dataclasses.replace(faults, operations=tuple(str(o) for o in raw.get("operations", ())))


def _quotas(raw: Mapping[str, Any]) -> Quotas:
    tps = dict(DEFAULT_TPS)
    for operation, spec in raw.get("tps", {}).items():
        tps[operation] = RateLimit(float(spec["rate"]), float(spec["burst"]))
    scalars = {k: v for k, v in raw.items() if k != "tps"}
    return Quotas(tps=MappingProxyType(tps), **scalars)
