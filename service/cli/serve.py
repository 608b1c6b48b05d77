"""The `serve` verb: the proxy itself (an `imaging_proxy.verbs` entry point of the server)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import structlog

from service.core.config import Settings
from service.core.config_loader import load_settings
from service.core.errors import StartupError

JOURNAL_URL_ENV = "IMAGING_PROXY_JOURNAL_URL"
BUDGET_URL_ENV = "IMAGING_PROXY_BUDGET_URL"


def add_serve_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = verbs.add_parser("serve", help="run the proxy", description=_SERVE_HELP)
    _add_serve_options(serve)
    serve.set_defaults(run=run_serve)


_SERVE_HELP = """Run the policy-enforcing gRPC proxy. Settings come from --config (TOML; sections
[server], [identity], [opa], [backend], [limits], [watch], [admission], [budget], [journal],
[tracing], [audit] as in service/core/config.py) overridden by options. Logs are JSON lines on
standard
error; the audit trail goes to [audit] path (default: standard output).
AWS credentials and region come from the usual AWS sources (environment, profile, instance role)."""


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", type=Path, help="TOML settings file")
    add("--host", help="listen address (default 127.0.0.1)")
    add("--port", type=int, help="listen port (default 50051; 0 = any free port)")
    add("--ready-file", type=Path, help='write {"port": P} here once serving')
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    add(
        "--audit-path",
        help='append audit records to this file ("-" = standard output, the default)',
    )
    add("--opa-url", help="OPA base URL (default http://127.0.0.1:8181)")
    add("--opa-timeout", type=float, help="seconds to wait for a decision before refusing")
    add("--endpoint-url", help="HealthImaging endpoint override (e.g. the emulator)")
    add("--region", help="AWS region (default us-east-1)")
    add(
        "--insecure-dev-identity",
        action="store_true",
        default=None,
        help="trust the x-dev-principal metadata as the caller: local development only",
    )
    add("--tls-cert", help="server certificate (PEM): enables TLS")
    add("--tls-key", help="server private key (PEM)")
    add("--client-ca", help="CA bundle for client certificates: requires mTLS")
    add("--jwt-public-key", action="append", help="PEM public key of --jwt-issuer (repeatable)")
    add("--jwt-jwks-file", help="JWKS file with the signing keys of --jwt-issuer")
    add("--jwt-issuer", help="the iss those keys sign for (more issuers: [[identity.jwt_issuers]])")
    add("--jwt-audience", help="required aud claim of --jwt-issuer's tokens")
    add("--watch-timeout", type=float, help="seconds to follow an update before giving up")
    add("--data-dir", help="directory of the SQLite journal (operations survive restarts)")
    # From the environment too: a URL with a password in argv is in every process listing.
    add(
        "--journal",
        default=os.environ.get(JOURNAL_URL_ENV),
        help="journal URL: redis://host:port/db shares operations between replicas "
        f"(default: ${JOURNAL_URL_ENV})",
    )
    add(
        "--budget",
        default=os.environ.get(BUDGET_URL_ENV),
        help="Redis URL of the shared quota budgets (default: "
        f"${BUDGET_URL_ENV}, else the journal's Redis)",
    )
    add(
        "--no-budget",
        dest="budget_enabled",
        action="store_false",
        default=None,
        help="do not pace calls to HealthImaging (only for an emulator without quotas)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Options given on the command line override the config file."""
    mapping: dict[str, dict[str, str]] = {
        "server": {"host": "host", "port": "port", "metrics_port": "metrics_port"},
        "audit": {"path": "audit_path"},
        "opa": {"url": "opa_url", "timeout_seconds": "opa_timeout"},
        "backend": {"endpoint_url": "endpoint_url", "region": "region"},
        "watch": {"timeout_seconds": "watch_timeout"},
        "journal": {"data_dir": "data_dir", "url": "journal"},
        "budget": {"url": "budget", "enabled": "budget_enabled"},
        "identity": {
            "insecure_dev_identity": "insecure_dev_identity",
            "tls_cert": "tls_cert",
            "tls_key": "tls_key",
            "client_ca": "client_ca",
            "jwt_public_keys": "jwt_public_key",
            "jwt_jwks_file": "jwt_jwks_file",
            "jwt_issuer": "jwt_issuer",
            "jwt_audience": "jwt_audience",
        },
    }
    overrides: dict[str, dict[str, Any]] = {}
    for section, fields in mapping.items():
        for field_name, arg in fields.items():
            value = getattr(args, arg, None)
            if value is not None:
                overrides.setdefault(section, {})[field_name] = (
                    tuple(value) if isinstance(value, list) else value
                )
    return load_settings(args.config, overrides)


def run_serve(args: argparse.Namespace) -> int:
    from service import app
    from service.cli.readyfile import write_json_atomically
    from service.observability import logs

    logs.configure(args.log_level)
    log = structlog.get_logger("imaging_proxy.serve")  # JSON on stderr, like every other line
    try:
        settings = settings_from_args(args)
    except (ValueError, OSError) as exc:
        log.error("bad_configuration", error=str(exc))
        return 253
    if settings.identity.insecure_dev_identity:
        log.warning(
            "insecure_dev_identity",
            message="callers are whoever x-dev-principal says: "
            "never use this outside local development",
        )

    def ready(port: int) -> None:
        if args.ready_file:
            write_json_atomically(args.ready_file, {"port": port})

    try:
        _run(app.run(settings, ready))
    except (ValueError, StartupError) as exc:  # refused configuration, a port in use
        log.error("cannot_start", error=str(exc))
        return 253
    return 0


def _run(coroutine: Any) -> None:
    import uvloop  # imported here: the client verbs never need it

    uvloop.run(coroutine)
