"""The wheel as a new user gets it: built by `python -m build`, installed into a fresh venv, run
from a folder outside the checkout, so nothing is imported from the working tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.polling import eventually_sync
from devstack.processes import Child, free_port, spawn, wait_for_json
from devstack.servers import EMULATOR_AWS_ENV, find_opa
from service.transport.health import LIVENESS

# Building and installing may download the build requirements and dependencies on a clean
# machine: more than the suite's 300 s default.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DATASTORE = "12345678901234567890123456789012"
NEWCOMER = "dev:demo-newcomer"


@dataclass(frozen=True)
class Installed:
    """A fresh venv holding only the wheel and its dependencies, and a folder outside the tree."""

    wheel: Path
    bin: Path
    outside: Path

    def run(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            cwd=self.outside,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def spawn(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Child:
        command = [str(self.bin / "imaging-proxy"), *argv]
        return spawn(name, command, self.outside / "logs", env, cwd=self.outside)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(ROOT)]
    _check(subprocess.run(build, capture_output=True, text=True, timeout=300))
    (wheel,) = (work / "dist").glob("imaging_proxy-*.whl")  # built from the sdist
    venv = work / "venv"
    _check(
        subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    )
    install = [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)]
    _check(subprocess.run(install, capture_output=True, text=True, timeout=600))
    outside = work / "outside"
    outside.mkdir()
    return Installed(wheel, venv / "bin", outside)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_wheel_carries_generated_stubs_policies_and_data(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist") or []
    stubs = "client/imaging_proxy_client/stubs/imaging/metadata/v1/metadata_pb2"
    assert {f"{stubs}.py", f"{stubs}_grpc.py"} <= names
    policies = {p.relative_to(ROOT).as_posix() for p in (ROOT / "policies").rglob("*.*")}
    assert {f"devstack/{policy}" for policy in policies} <= names
    assert any(n.startswith("medical_imaging_model/data/") for n in names)
    assert "emulator/__main__.py" in names
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if r.startswith("grpcio-tools")], "a build dependency only"


def test_imports_come_from_the_venv(installed: Installed) -> None:
    result = installed.run(
        "python", "-c", "import imaging_proxy_client.stubs, emulator; print(service.__file__)"
    )
    _check(result)
    assert Path(result.stdout.strip()).is_relative_to(installed.bin.parent)


@pytest.mark.parametrize("verb", [[], ["serve"], ["emulator"], ["demo"]], ids=lambda v: str(v))
def test_help_works(installed: Installed, verb: list[str]) -> None:
    result = installed.run("imaging-proxy", *verb, "--help")
    _check(result)
    assert "usage:" in result.stdout


def test_serve_answers_a_health_check(installed: Installed) -> None:
    ready_file = installed.outside / "serve-ready.json"
    nobody = f"http://127.0.0.1:{free_port()}"  # OPA need not answer for liveness
    argv = ["serve", "--insecure-dev-identity", "--opa-url", nobody, "--endpoint-url", nobody]
    argv += ["--port", "0", "--ready-file", str(ready_file)]
    serve = installed.spawn("serve", *argv, env=EMULATOR_AWS_ENV)
    try:
        port = wait_for_json(ready_file, serve)["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            reply = check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        serve.stop()


@pytest.fixture
def demo(installed: Installed) -> Iterator[tuple[Child, dict[str, object], Path]]:
    """The installed demo on its packaged policies, with OPA named by --opa and its own TMPDIR."""
    temporary = installed.outside / "tmp"
    temporary.mkdir(exist_ok=True)
    ready_file = installed.outside / "demo-ready.json"
    argv = ["demo", "--port", "0", "--ready-file", str(ready_file), "--opa", find_opa()]
    argv += ["--image-sets", "1", "--no-quotas"]
    child = installed.spawn("demo", *argv, env={"TMPDIR": str(temporary), "PATH": "/usr/bin:/bin"})
    try:
        yield child, wait_for_json(ready_file, child, timeout=120), temporary
    finally:
        child.stop(timeout=30)


def test_demo_runs_from_the_wheel_watches_policies_and_cleans_up(
    demo: tuple[Child, dict[str, object], Path], installed: Installed
) -> None:
    child, ready, temporary = demo
    policies = Path(str(ready["policies"]))
    assert policies.is_relative_to(installed.bin.parent), "the packaged policies"
    assert [p.name for p in temporary.iterdir()] == [Path(str(ready["logDir"])).name]

    data = json.loads((policies / "data.json").read_text())
    data["imaging"]["grants"][DATASTORE][NEWCOMER] = ["metadata-editor"]
    (policies / "data.json.tmp").write_text(json.dumps(data))
    (policies / "data.json.tmp").replace(policies / "data.json")
    eventually_sync(lambda: _grants(str(ready["opaUrl"])), until=lambda g: NEWCOMER in g)

    child.process.send_signal(signal.SIGTERM)
    assert child.process.wait(30) == 0
    assert list(temporary.iterdir()) == [], "the demo's temporary folder is removed"


def _grants(opa_url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{opa_url}/v1/data/imaging/grants/{DATASTORE}") as response:
        return dict(json.load(response)["result"])


def test_demo_names_a_missing_policy_folder(installed: Installed) -> None:
    temporary = installed.outside / "tmp-failed"
    temporary.mkdir()
    argv = ["imaging-proxy", "demo", "--policies", "no-such-folder", "--port", "0"]
    result = installed.run(*argv, env={"TMPDIR": str(temporary)})
    assert result.returncode == 1
    assert "--policies no-such-folder is not a folder" in result.stderr
    assert list(temporary.iterdir()) == [], "nothing started, nothing kept"
