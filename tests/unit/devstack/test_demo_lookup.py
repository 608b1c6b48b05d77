"""The demo outside a checkout: where OPA and the policies come from, and the banner's commands."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from devstack import demo, servers

READY: dict[str, object] = {
    "endpoint": "127.0.0.1:50051",
    "opaUrl": "http://127.0.0.1:8181",
    "emulatorUrl": "http://127.0.0.1:40000",
    "datastoreId": "12345678901234567890123456789012",
    "imageSetIds": ["a" * 32],
    "exampleImageSetIds": ["ea92b0d8838c72a3f25d00d13616f87e"],
    "policies": "/somewhere/policies",
    "logDir": "/tmp/logs",
}


def _no_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(servers, "REPO_ROOT", tmp_path / "not-a-checkout")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def test_missing_opa_names_all_three_places(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_checkout(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError) as raised:
        servers.find_opa()
    assert all(place in str(raised.value) for place in ("--opa PATH", "PATH", ".tools/bin/opa"))


def test_explicit_opa_wins_and_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on_path = tmp_path / "bin" / "opa"
    on_path.parent.mkdir()
    on_path.write_text("")
    monkeypatch.setenv("PATH", str(on_path.parent))
    on_path.chmod(0o755)
    chosen = tmp_path / "opa-1.22"
    chosen.write_text("")
    assert servers.find_opa(chosen) == str(chosen)
    assert servers.find_opa() == str(on_path)
    with pytest.raises(FileNotFoundError, match="--opa"):
        servers.find_opa(tmp_path / "missing")


def test_checkout_opa_is_the_last_resort(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_checkout(monkeypatch, tmp_path)
    built = tmp_path / "not-a-checkout" / ".tools" / "bin" / "opa"
    built.parent.mkdir(parents=True)
    built.write_text("")
    assert servers.find_opa() == str(built)


def test_without_a_checkout_the_installed_policies_are_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An editable install has no packaged copy (tests/e2e/test_wheel.py checks a real wheel's).
    _no_checkout(monkeypatch, tmp_path)
    packaged = Path(servers.__file__).parent / "policies"
    if packaged.is_dir():
        assert servers.find_policies() == packaged
    else:
        with pytest.raises(FileNotFoundError, match="--policies DIR"):
            servers.find_policies()


def test_a_checkout_uses_its_own_policies() -> None:
    assert servers.find_policies() == servers.REPO_ROOT / "policies"


def test_banner_aws_command_reaches_the_emulator_as_pasted() -> None:
    banner = demo._banner(READY)
    command = banner.split("any credentials do):\n")[1].split("\n\n")[0]
    words = shlex.split(command.replace("\\\n", " "))
    environment = dict(word.split("=", 1) for word in words if "=" in word and "--" not in word)
    assert environment["AWS_DISABLE_HOST_PREFIX_INJECTION"] == "true"
    assert set(servers.EMULATOR_AWS_ENV) <= set(environment)
    aws = words[words.index("aws") :]
    assert aws[:3] == ["aws", "medical-imaging", "get-image-set"]
    assert aws[aws.index("--endpoint-url") + 1] == READY["emulatorUrl"]
    assert aws[aws.index("--datastore-id") + 1] == READY["datastoreId"]
    assert aws[aws.index("--image-set-id") + 1] == "ea92b0d8838c72a3f25d00d13616f87e"


def test_banner_names_the_policies_it_watches() -> None:
    assert "/somewhere/policies (reloaded when they change)" in demo._banner(READY)
