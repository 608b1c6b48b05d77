"""Configuration: one frozen, typed settings tree, built once at the edge and passed down.

Sources, later ones winning: field defaults, a TOML file (`serve --config`), then explicit
overrides from the command line. No other module reads the environment or files for settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take (checked when settings are built)."""

    low: float
    high: float = math.inf
    low_included: bool = True

    def admits(self, value: float) -> bool:
        above = value >= self.low if self.low_included else value > self.low
        return above and value <= self.high

    def describe(self) -> str:
        low = f"{'≥' if self.low_included else '>'} {self.low:g}"
        return low if self.high == math.inf else f"from {self.low:g} to {self.high:g}"


Port = Annotated[int, Range(0, 65_535)]
Count = Annotated[int, Range(1)]
Seconds = Annotated[float, Range(0, low_included=False)]
SecondsOrZero = Annotated[float, Range(0)]  # 0 switches the behaviour off
Rate = Annotated[float, Range(0, low_included=False)]
Fraction = Annotated[float, Range(0, 1)]


@dataclass(frozen=True)
class ServerSettings:
    """The gRPC listener."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Port = 50051
    """Port to listen on; 0 picks a free one."""
    max_message_bytes: Count = 256 * 1024
    """Largest request accepted (two 30,000-byte blobs fit many times over)."""
    grace_seconds: SecondsOrZero = 10.0
    """How long open streams may finish on shutdown."""
    max_pending_requests: Count = 20_000
    """gRPC core's pending-call backlog; the default (1,000) cancels bursts of streams."""
    keepalive_seconds: Seconds = 30.0
    """Server keepalive ping interval."""
    max_connection_age_seconds: SecondsOrZero = 0.0
    """Close connections older than this so load rebalances (0 = never)."""
    metrics_port: Port = 0
    """Prometheus metrics port (0 = disabled)."""
    health_port: Port = 0
    """Plaintext port serving only grpc.health.v1, for orchestrator probes that cannot present a
    client certificate (Kubernetes gRPC probes, compose healthchecks); 0 = disabled."""

    def grpc_options(self) -> list[tuple[str, Any]]:
        """gRPC core's channel arguments for the listener (also the benchmarks' trivial server,
        which must pay the same per-stream and per-message costs)."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.server.max_pending_requests", self.max_pending_requests),
            ("grpc.server.max_pending_requests_hard_limit", self.max_pending_requests * 3),
            ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),  # a second process on the port is an error, not a twin
        ]
        if self.max_connection_age_seconds > 0:
            age_ms = int(self.max_connection_age_seconds * 1000)
            options.append(("grpc.max_connection_age_ms", age_ms))
        return options


@dataclass(frozen=True)
class JwtIssuerSettings:
    """One identity provider (`[[identity.jwt_issuers]]`): the only keys that may sign a token
    whose `iss` names it, and the claims such a token must carry."""

    issuer: str = ""
    """The `iss` its tokens carry (and the principal's namespace, `jwt:<issuer>#<sub>`)."""
    jwks_file: str = ""
    """A JWKS file with its signing keys."""
    jwks_url: str = ""
    """Its JWKS endpoint, fetched once at start (PyJWKClient)."""
    public_keys: tuple[str, ...] = ()
    """PEM public keys (or certificates) of its signing keys."""
    audiences: tuple[str, ...] = ()
    """The `aud` values accepted from it (one must match); required."""
    max_lifetime_seconds: Seconds = 3600.0
    """Longest token lifetime accepted: `exp - iat`, and `exp - now` for a token without `iat`."""
    leeway_seconds: SecondsOrZero = 30.0
    """Clock skew tolerated on exp/nbf/iat."""
    principal_claim: str = "sub"
    """Claim holding the caller's principal."""
    roles_claim: str = "roles"
    """Claim holding the caller's roles."""


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
    jwt_issuers: tuple[JwtIssuerSettings, ...] = ()
    """The identity providers whose bearer tokens are accepted, each with its own keys."""
    jwt_public_keys: tuple[str, ...] = ()
    """One issuer in flat form: PEM public keys that may sign bearer tokens (needs jwt_issuer)."""
    jwt_jwks_file: str = ""
    """One issuer in flat form: a JWKS file with its signing keys (needs jwt_issuer)."""
    jwt_issuer: str = ""
    """One issuer in flat form: the `iss` its keys sign for."""
    jwt_audience: str = ""
    """One issuer in flat form: the required `aud` claim."""
    jwt_roles_claim: str = "roles"
    """One issuer in flat form: claim holding the caller's roles."""
    jwt_principal_claim: str = "sub"
    """One issuer in flat form: claim holding the caller's principal."""
    jwt_leeway_seconds: SecondsOrZero = 30.0
    """One issuer in flat form: clock skew tolerated on exp/nbf/iat."""
    jwt_max_lifetime_seconds: Seconds = 3600.0
    """One issuer in flat form: longest token lifetime accepted."""

    def issuers(self) -> tuple[JwtIssuerSettings, ...]:
        """Every configured issuer: the flat `jwt_*` keys (if any) as one, then the tables."""
        flat = self.jwt_issuer or self.jwt_public_keys or self.jwt_jwks_file or self.jwt_audience
        if not flat:
            return self.jwt_issuers
        single = JwtIssuerSettings(
            issuer=self.jwt_issuer,
            jwks_file=self.jwt_jwks_file,
            public_keys=self.jwt_public_keys,
            audiences=(self.jwt_audience,) if self.jwt_audience else (),
            max_lifetime_seconds=self.jwt_max_lifetime_seconds,
            leeway_seconds=self.jwt_leeway_seconds,
            principal_claim=self.jwt_principal_claim,
            roles_claim=self.jwt_roles_claim,
        )
        return (single, *self.jwt_issuers)


@dataclass(frozen=True)
class OpaSettings:
    """The Open Policy Agent server that decides."""

    url: str = "http://127.0.0.1:8181"
    """OPA's base URL (https:// for TLS)."""
    decision_path: str = "imaging.update.decision"
    """The rule queried, as a dotted path under `data`."""
    timeout_seconds: Seconds = 0.5
    """Longest wait for a decision; past it the request is refused (fail closed)."""
    token: str = ""
    """Bearer token for OPA's authentication, if enabled."""
    client_cert: str = ""
    """Client certificate (PEM) for TLS to OPA."""
    client_key: str = ""
    """Client key (PEM) for TLS to OPA."""
    ca_file: str = ""
    """CA bundle (PEM) that OPA's certificate must chain to; empty: the system's roots."""
    send_values: bool = False
    """Include attribute values in the policy input (off: PHI minimisation)."""
    health_interval_seconds: Seconds = 2.0
    """How often OPA's (and HealthImaging's) reachability is probed for readiness."""
    health_timeout_seconds: Seconds = 2.0
    """Longest wait for OPA's GET /health (its own timeout, not a decision's)."""
    health_failures: Count = 2
    """Consecutive failed probes before readiness goes NOT_SERVING."""

    def __post_init__(self) -> None:
        # TLS material for a plaintext URL would be silently unused: say so instead.
        for name in ("ca_file", "client_cert", "client_key"):
            if getattr(self, name) and not self.url.startswith("https://"):
                raise ValueError(f"opa.{name} is set but opa.url is not https://: TLS is off")


@dataclass(frozen=True)
class BackendSettings:
    """AWS HealthImaging (or the local emulator)."""

    endpoint_url: str = ""
    """Override the AWS endpoint (the emulator); empty means AWS itself."""
    region: str = "us-east-1"
    """AWS region."""
    account_id: str = ""
    """Account whose quotas apply (budgets are per account + region); empty = 'default'."""
    max_pool_connections: Count = 100
    """HTTP connections kept to HealthImaging."""
    connect_timeout_seconds: Seconds = 5.0
    """TCP connect timeout per call."""
    read_timeout_seconds: Seconds = 30.0
    """Read timeout per call."""


@dataclass(frozen=True)
class WatchSettings:
    """Following an update until it finishes."""

    first_poll_seconds: Seconds = 1.0
    """First GetImageSet poll after a submit, until the typical update duration is known."""
    initial_interval_seconds: Seconds = 0.25
    """Poll interval after a poll that saw a change (it grows while nothing changes)."""
    max_interval_seconds: Seconds = 3.0
    """Longest poll interval (the interval grows while nothing changes)."""
    jitter: Fraction = 0.2
    """Random fraction added to each interval so pollers do not align."""
    heartbeat_seconds: Seconds = 5.0
    """Longest silence on a status stream; a heartbeat is sent after it."""
    timeout_seconds: Seconds = 900.0
    """Give up watching an update after this long (WatchUpdate can pick it up later)."""


@dataclass(frozen=True)
class LimitSettings:
    """Work a caller may ask of the proxy before the policy has decided (issue 10)."""

    max_payload_bytes: Count = 10_240
    """Both attribute documents together; HealthImaging's payload quota (L-A880A4C2, 10 KB)."""
    max_changes: Count = 500
    """Attribute changes (and removed series/instances) in one update document."""
    role_cache_seconds: SecondsOrZero = 5.0
    """How long a caller's roles on a data store (asked of OPA) are reused to refuse no-grant
    callers before any other work."""
    retry_after_seconds: Seconds = 1.0
    """RetryInfo sent when a caller's queues are full, its deadline passed while it waited to be
    decided, or it holds too many open streams."""
    max_streams_per_principal: Count = 1_000
    """UpdateImageSetMetadata and WatchUpdate streams one caller holds open at once (per
    process); beyond it RESOURCE_EXHAUSTED with RetryInfo."""


@dataclass(frozen=True)
class AdmissionSettings:
    """The fair queues of every shared stage (decisions, reference reads, writes, polls)."""

    max_queued: Count = 10_000
    """Updates waiting for a write across all callers; beyond it RESOURCE_EXHAUSTED + RetryInfo."""
    max_queued_per_principal: Count = 1_000
    """Everything one caller has waiting, at every stage together (requests to be decided,
    reference reads, updates waiting for a write); beyond it RESOURCE_EXHAUSTED + RetryInfo, so
    one noisy service cannot fill the queues."""
    max_deciding: Count = 16
    """Requests normalised and decided at once (all callers); the others wait their caller's
    turn."""
    max_in_flight_per_datastore: Count = 100
    """Submitted, unfinished updates per data store (HealthImaging's concurrent-update quota)."""
    deadline_margin_seconds: SecondsOrZero = 1.0
    """Time a submit needs before the caller's deadline; a later start is refused, not made."""
    position_interval_seconds: SecondsOrZero = 1.0
    """Shortest time between two `queued` events of one stream (positions and estimates)."""


@dataclass(frozen=True)
class BudgetSettings:
    """Token buckets keeping HealthImaging calls under the account's quotas (per account+region)."""

    enabled: bool = True
    """False: no budgets; only for a backend without quotas (the emulator with --no-quotas)."""
    url: str = ""
    """Redis URL of a budget shared by replicas; empty = the journal's Redis, else in-process."""
    update_rate: Rate = 0.25
    """UpdateImageSetMetadata calls per second (the documented default quota)."""
    update_burst: Rate = 1.0
    """UpdateImageSetMetadata burst."""
    get_image_set_rate: Rate = 25.0
    """GetImageSet calls per second."""
    get_image_set_burst: Rate = 50.0
    """GetImageSet burst."""
    headroom: Fraction = 0.9
    """Fraction of each quota the proxy uses, so network jitter never pushes a call over it."""
    decrease_factor: Fraction = 0.5
    """On a ThrottlingException the rate is multiplied by this (AIMD's decrease)."""
    increase_step: Fraction = 0.05
    """Each successful call gives back this fraction of the quota (AIMD's additive increase)."""
    min_fraction: Fraction = 0.05
    """The rate never shrinks below this fraction of the quota."""
    backoff_seconds: Seconds = 1.0
    """Pause after a first throttle; doubles with each further one, jittered."""
    max_backoff_seconds: Seconds = 30.0
    """Longest pause after throttles."""


@dataclass(frozen=True)
class JournalSettings:
    """Where operations and idempotency keys are recorded before they are acknowledged."""

    url: str = ""
    """Empty: SQLite in `data_dir`; `redis://host:port/db`: shared by every replica."""
    data_dir: str = ""
    """Directory of the SQLite journal; empty = in memory (nothing survives a restart)."""
    idempotency_ttl_seconds: Seconds = 86_400.0
    """How long an idempotency key maps to its operation."""
    retention_seconds: Seconds = 7 * 86_400.0
    """How long a finished operation stays re-attachable."""
    lease_seconds: Seconds = 10.0
    """Redis: a replica silent this long is gone; its unfinished operations are taken over."""
    key_prefix: str = "imaging-proxy"
    """Redis: prefix of every key and channel."""
    encryption_keys: tuple[str, ...] = ()
    """Keys that encrypt journal records, each "<key id>:<base64 of 32 bytes>" (AES-256-GCM);
    the first encrypts, every one decrypts (rotation). Empty: records are stored in clear."""


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry traces (docs/OPERATIONS.md, "Tracing"); off: nothing of the SDK is loaded."""

    enabled: bool = False
    """Export spans of every RPC, OPA query, HealthImaging call and update stage."""
    exporter: Literal["otlp", "console"] = "otlp"
    """Where spans go: an OTLP/gRPC collector, or stderr as one JSON object per span (local use)."""
    endpoint: str = "http://127.0.0.1:4317"
    """The OTLP/gRPC collector spans are exported to."""
    export_timeout_seconds: Seconds = 2.0
    """Longest one export may take, retries included; also bounds the flush at shutdown when
    the collector is down."""
    insecure: bool = True
    """Plaintext OTLP (a collector beside the proxy); false: TLS with the system's CAs."""
    sample_ratio: Fraction = 1.0
    """Fraction of new traces kept; a caller's sampled trace is always continued."""


@dataclass(frozen=True)
class AuditSettings:
    """The audit trail (docs/AUDIT.md): one record per decision, submit, finish and cancel."""

    path: str = "-"
    """File the records are appended to, one per line; "-" = standard output (the logs go to
    standard error, so the two never mix)."""
    format: Literal["json", "fhir"] = "json"
    """"json": records as docs/audit.schema.json describes them; "fhir": FHIR R5 AuditEvent."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs, passed down explicitly."""

    server: ServerSettings = field(default_factory=ServerSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    opa: OpaSettings = field(default_factory=OpaSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
