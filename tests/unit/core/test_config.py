"""Settings are type- and range-checked when built, and every refusal names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from service.core.config import Settings
from service.core.config_loader import load_settings


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("server", {"port": "fifty"}, "server.port: expected a number"),
        ("server", {"port": 50062.5}, "server.port: expected a whole number"),
        ("server", {"port": 70_000}, "server.port: must be from 0 to 65535"),
        ("server", {"metrics_port": -1}, "server.metrics_port: must be from 0 to 65535"),
        ("opa", {"timeout_seconds": -3}, "opa.timeout_seconds: must be > 0"),
        ("opa", {"timeout_seconds": 0}, "opa.timeout_seconds: must be > 0"),
        ("opa", {"timeout_seconds": True}, "opa.timeout_seconds: expected a number"),
        ("opa", {"url": 8181}, "opa.url: expected a string"),
        ("budget", {"headroom": 1.5}, "budget.headroom: must be from 0 to 1"),
        ("budget", {"enabled": "yes"}, "budget.enabled: expected true or false"),
        ("admission", {"max_queued": 0}, "admission.max_queued: must be ≥ 1"),
        ("limits", {"max_payload_bytes": float("inf")}, "limits.max_payload_bytes: expected a"),
        ("identity", {"jwt_public_keys": "k.pem"}, "identity.jwt_public_keys: expected a list"),
        ("server", {"prot": 1}, "unknown setting(s) in [server]: prot"),
        ("limits", {"max_streams_per_principal": 0}, "limits.max_streams_per_principal: must be"),
        ("identity", {"jwt_issuers": {"issuer": "a"}}, "identity.jwt_issuers: expected an array"),
        ("identity", {"jwt_issuers": ["a"]}, "identity.jwt_issuers[0]: expected a table"),
        (
            "identity",
            {"jwt_issuers": [{"issuer": "a", "aud": ["x"]}]},
            "unknown setting(s) in [identity.jwt_issuers[0]]: aud",
        ),
        (
            "identity",
            {"jwt_issuers": [{"issuer": "a"}, {"max_lifetime_seconds": 0}]},
            "identity.jwt_issuers[1].max_lifetime_seconds: must be > 0",
        ),
        (
            "identity",
            {"jwt_issuers": [{"audiences": "x"}]},
            "identity.jwt_issuers[0].audiences: expected a list",
        ),
    ],
)
def test_bad_values_are_refused_with_their_key(
    section: str, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        load_settings(None, {section: values})
    assert str(refused.value).startswith(message)


def test_good_values_from_a_file(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[server]\nport = 0\ngrace_seconds = 0\n[identity]\njwt_public_keys = ["a.pem"]\n'
        "[opa]\ntimeout_seconds = 1\n[budget]\nheadroom = 1\n"
    )
    settings = load_settings(config)
    assert settings.server.port == 0
    assert settings.server.grace_seconds == 0
    assert settings.identity.jwt_public_keys == ("a.pem",)
    assert settings.opa.timeout_seconds == 1


def test_issuers_as_toml_tables_and_in_flat_form(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[identity]\njwt_issuer = "https://a"\njwt_jwks_file = "a.json"\n'
        'jwt_audience = "proxy"\n\n'
        '[[identity.jwt_issuers]]\nissuer = "https://b"\npublic_keys = ["b.pem"]\n'
        'audiences = ["proxy", "api://proxy"]\nmax_lifetime_seconds = 600\n'
    )
    a, b = load_settings(config).identity.issuers()
    assert (a.issuer, a.jwks_file, a.audiences, a.max_lifetime_seconds) == (
        "https://a",
        "a.json",
        ("proxy",),
        3600.0,
    )
    assert (b.issuer, b.public_keys, b.audiences, b.max_lifetime_seconds) == (
        "https://b",
        ("b.pem",),
        ("proxy", "api://proxy"),
        600,
    )


def test_every_default_passes_its_own_checks() -> None:
    defaults = Settings()
    overrides = {
        section.name: dataclasses.asdict(getattr(defaults, section.name))
        for section in dataclasses.fields(Settings)
    }
    assert load_settings(None, overrides) == defaults


@pytest.mark.parametrize("name", ["ca_file", "client_cert", "client_key"])
def test_tls_settings_for_a_plaintext_opa_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"opa.{name} is set but opa.url is not https"):
        load_settings(overrides={"opa": {"url": "http://opa:8181", name: "/etc/opa/x.pem"}})
    https = load_settings(overrides={"opa": {"url": "https://opa:8181", name: "/etc/opa/x.pem"}})
    assert getattr(https.opa, name) == "/etc/opa/x.pem"
