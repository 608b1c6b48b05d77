"""`imaging-proxy policy` against a real OPA started without policies (OPA run without bundles):
push the shipped policies, read them back, report status; an absent OPA is reported unhealthy."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import free_port
from devstack.servers import start_opa

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"


def policy(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "imaging_proxy_client.cli.main", "policy", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def empty_opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("empty-opa")
    (work / "nothing").mkdir()
    port = free_port()
    opa = start_opa(work, port, [work / "nothing"], decision_log=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        opa.stop()


def test_push_then_pull_round_trips_the_shipped_policies_and_data(
    empty_opa: str, tmp_path: Path
) -> None:
    before = policy("status", "--opa-url", empty_opa, "--wait", "10")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["data"] == {"imaging": False}

    pushed = policy("push", str(POLICIES), "--opa-url", empty_opa)
    assert pushed.returncode == 0, pushed.stderr
    names = json.loads(pushed.stdout)["pushed"]
    assert "policy imaging/update.rego" in names and "data imaging" in names
    assert not [n for n in names if n.endswith("_test.rego")]

    with urllib.request.urlopen(f"{empty_opa}/v1/data/imaging/grants") as response:
        grants = json.load(response)["result"]
    assert grants == json.loads((POLICIES / "data.json").read_text())["imaging"]["grants"]

    pulled = policy("pull", str(tmp_path / "pulled"), "--opa-url", empty_opa)
    assert pulled.returncode == 0, pulled.stderr
    for rego in POLICIES.rglob("*.rego"):
        copy = tmp_path / "pulled" / rego.relative_to(POLICIES)
        assert copy.is_file() != rego.name.endswith("_test.rego"), copy
        if copy.is_file():
            assert copy.read_text() == rego.read_text()
    assert json.loads((tmp_path / "pulled" / "data.json").read_text()) == json.loads(
        (POLICIES / "data.json").read_text()
    )

    after = json.loads(policy("status", "--opa-url", empty_opa).stdout)
    assert after["healthy"] and after["data"] == {"imaging": True}
    assert "imaging/caller.rego" in after["policies"]


def test_status_of_an_absent_opa_is_unhealthy_with_its_own_exit_code() -> None:
    result = policy("status", "--opa-url", f"http://127.0.0.1:{free_port()}", "--wait", "0.5")
    assert result.returncode == 3
    assert json.loads(result.stdout) == {"healthy": False}


def test_a_missing_folder_is_named() -> None:
    result = policy("push", "no-such-folder", "--opa-url", "http://127.0.0.1:1")
    assert result.returncode == 1 and "no-such-folder is not a folder" in result.stderr
