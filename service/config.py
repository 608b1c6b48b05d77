"""Configuration: one frozen, typed settings tree, built once at the edge and passed down.

Sources, later ones winning: field defaults, a TOML file (`serve --config`), then explicit
overrides from the command line. No other module reads the environment or files for settings.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSettings:
    """The gRPC listener."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 50051
    """Port to listen on; 0 picks a free one."""
    max_message_bytes: int = 256 * 1024
    """Largest request accepted (two 30,000-byte blobs fit many times over)."""
    grace_seconds: float = 10.0
    """How long open streams may finish on shutdown."""
    max_pending_requests: int = 20_000
    """gRPC core's pending-call backlog; the default (1,000) cancels bursts of streams."""
    keepalive_seconds: float = 30.0
    """Server keepalive ping interval."""
    max_connection_age_seconds: float = 0.0
    """Close connections older than this so load rebalances (0 = never)."""
    metrics_port: int = 0
    """Prometheus metrics port (0 = disabled)."""


@dataclass(frozen=True)
class IdentitySettings:
    """How callers prove who they are."""

    insecure_dev_identity: bool = False
    """Trust the `x-dev-principal` metadata value. For local development only."""
    tls_cert: str = ""
    """Server certificate (PEM); enables TLS on the listener."""
    tls_key: str = ""
    """Server private key (PEM)."""
    client_ca: str = ""
    """CA bundle for client certificates; when set, client certificates are required (mTLS)."""
    spiffe_cn_fallback: bool = False
    """Use the subject CN as principal when a client certificate has no SPIFFE URI SAN."""
    jwt_public_keys: tuple[str, ...] = ()
    """PEM public keys that may sign bearer tokens."""
    jwt_jwks_file: str = ""
    """A JWKS file with the keys that may sign bearer tokens."""
    jwt_issuer: str = ""
    """Required `iss` claim."""
    jwt_audience: str = ""
    """Required `aud` claim."""
    jwt_roles_claim: str = "roles"
    """Claim holding the caller's roles."""
    jwt_principal_claim: str = "sub"
    """Claim holding the caller's principal."""
    jwt_leeway_seconds: float = 30.0
    """Clock skew tolerated on exp/nbf."""


@dataclass(frozen=True)
class OpaSettings:
    """The Open Policy Agent server that decides."""

    url: str = "http://127.0.0.1:8181"
    """OPA's base URL (https:// for TLS)."""
    decision_path: str = "imaging.update.decision"
    """The rule queried, as a dotted path under `data`."""
    timeout_seconds: float = 0.5
    """Longest wait for a decision; past it the request is refused (fail closed)."""
    token: str = ""
    """Bearer token for OPA's authentication, if enabled."""
    client_cert: str = ""
    """Client certificate (PEM) for TLS to OPA."""
    client_key: str = ""
    """Client key (PEM) for TLS to OPA."""
    send_values: bool = False
    """Include attribute values in the policy input (off: PHI minimisation)."""
    health_interval_seconds: float = 2.0
    """How often OPA's health is checked for grpc.health."""


@dataclass(frozen=True)
class BackendSettings:
    """AWS HealthImaging (or the local emulator)."""

    endpoint_url: str = ""
    """Override the AWS endpoint (the emulator); empty means AWS itself."""
    region: str = "us-east-1"
    """AWS region."""
    account_id: str = ""
    """Account whose quotas apply (budgets are per account + region); empty = 'default'."""
    max_pool_connections: int = 100
    """HTTP connections kept to HealthImaging."""
    connect_timeout_seconds: float = 5.0
    """TCP connect timeout per call."""
    read_timeout_seconds: float = 30.0
    """Read timeout per call."""


@dataclass(frozen=True)
class WatchSettings:
    """Following an update until it finishes."""

    first_poll_seconds: float = 1.0
    """First GetImageSet poll after a submit, until the typical update duration is known."""
    initial_interval_seconds: float = 0.25
    """Poll interval after a poll that saw a change (it grows while nothing changes)."""
    max_interval_seconds: float = 3.0
    """Longest poll interval (the interval grows while nothing changes)."""
    jitter: float = 0.2
    """Random fraction added to each interval so pollers do not align."""
    heartbeat_seconds: float = 5.0
    """Longest silence on a status stream; a heartbeat is sent after it."""
    timeout_seconds: float = 900.0
    """Give up watching an update after this long (WatchUpdate can pick it up later)."""


@dataclass(frozen=True)
class AdmissionSettings:
    """The fair queue allowed updates wait in for their turn to be submitted."""

    max_queued: int = 10_000
    """Updates waiting across all callers; beyond it RESOURCE_EXHAUSTED with RetryInfo."""
    max_queued_per_principal: int = 1_000
    """Updates waiting for one caller, so one noisy service cannot fill the whole queue."""
    max_in_flight_per_datastore: int = 100
    """Submitted, unfinished updates per data store (HealthImaging's concurrent-update quota)."""
    deadline_margin_seconds: float = 1.0
    """Time a submit needs before the caller's deadline; a later start is refused, not made."""
    position_interval_seconds: float = 1.0
    """Shortest time between two `queued` events of one stream (positions and estimates)."""


@dataclass(frozen=True)
class BudgetSettings:
    """Token buckets keeping HealthImaging calls under the account's quotas (per account+region)."""

    enabled: bool = True
    """False: no budgets; only for a backend without quotas (the emulator with --no-quotas)."""
    url: str = ""
    """Redis URL of a budget shared by replicas; empty = the journal's Redis, else in-process."""
    update_rate: float = 0.25
    """UpdateImageSetMetadata calls per second (the documented default quota)."""
    update_burst: float = 1.0
    """UpdateImageSetMetadata burst."""
    get_image_set_rate: float = 25.0
    """GetImageSet calls per second."""
    get_image_set_burst: float = 50.0
    """GetImageSet burst."""
    headroom: float = 0.9
    """Fraction of each quota the proxy uses, so network jitter never pushes a call over it."""
    decrease_factor: float = 0.5
    """On a ThrottlingException the rate is multiplied by this (AIMD's decrease)."""
    increase_step: float = 0.05
    """Each successful call gives back this fraction of the quota (AIMD's additive increase)."""
    min_fraction: float = 0.05
    """The rate never shrinks below this fraction of the quota."""
    backoff_seconds: float = 1.0
    """Pause after a first throttle; doubles with each further one, jittered."""
    max_backoff_seconds: float = 30.0
    """Longest pause after throttles."""


@dataclass(frozen=True)
class JournalSettings:
    """Where operations and idempotency keys are recorded before they are acknowledged."""

    url: str = ""
    """Empty: SQLite in `data_dir`; `redis://host:port/db`: shared by every replica."""
    data_dir: str = ""
    """Directory of the SQLite journal; empty = in memory (nothing survives a restart)."""
    idempotency_ttl_seconds: float = 86_400.0
    """How long an idempotency key maps to its operation."""
    retention_seconds: float = 7 * 86_400.0
    """How long a finished operation stays re-attachable."""
    lease_seconds: float = 10.0
    """Redis: a replica silent this long is gone; its unfinished operations are taken over."""
    key_prefix: str = "imaging-proxy"
    """Redis: prefix of every key and channel."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, passed down explicitly."""

    server: ServerSettings = field(default_factory=ServerSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    opa: OpaSettings = field(default_factory=OpaSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)


def load_settings(
    path: Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> Settings:
    """Build settings from defaults, an optional TOML file, then overrides (section → fields)."""
    sections: dict[str, dict[str, Any]] = {}
    if path is not None:
        with path.open("rb") as handle:
            sections = {k: dict(v) for k, v in tomllib.load(handle).items()}
    for name, values in (overrides or {}).items():
        sections.setdefault(name, {}).update(values)
    unknown = set(sections) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ValueError(f"unknown settings section(s): {', '.join(sorted(unknown))}")
    built = {f.name: _build(f.type, sections.get(f.name, {})) for f in dataclasses.fields(Settings)}
    return Settings(**built)


def _build(type_name: Any, values: Mapping[str, Any]) -> Any:
    cls = {c.__name__: c for c in _SECTIONS}[
        type_name if isinstance(type_name, str) else type_name.__name__
    ]
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown setting(s) in [{cls.__name__}]: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


_SECTIONS: tuple[type, ...] = (
    ServerSettings,
    IdentitySettings,
    OpaSettings,
    BackendSettings,
    WatchSettings,
    AdmissionSettings,
    BudgetSettings,
    JournalSettings,
)
