"""The two wheels as a new user gets them: the client (client/) and the server (the root), each
built by `python -m build` (sdist, then the wheel from it), installed together into a fresh venv and
run from a folder outside the checkout, so nothing is imported from the working tree."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
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
HARNESS = {"emulator", "devstack", "tests"}
"""What the production packages (service) never import."""


@dataclass(frozen=True)
class Installed:
    """A fresh venv holding only the two wheels and their dependencies, and a folder outside
    the tree."""

    wheel: Path
    """The server's."""
    client_wheel: Path
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
    dist = work / "dist"
    for source in (ROOT / "client", ROOT):
        build = [sys.executable, "-m", "build", "--outdir", str(dist), str(source)]
        _check(subprocess.run(build, capture_output=True, text=True, timeout=300))
    (client_wheel,) = dist.glob("imaging_proxy_client-*.whl")  # each built from its sdist
    (wheel,) = dist.glob("imaging_proxy-*.whl")
    venv = work / "venv"
    _check(
        subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    )
    # Both files named: the server's `imaging-proxy-client` requirement is this client wheel.
    install = [str(venv / "bin" / "pip"), "install", "--quiet", str(client_wheel), str(wheel)]
    _check(subprocess.run(install, capture_output=True, text=True, timeout=600))
    outside = work / "outside"
    outside.mkdir()
    return Installed(wheel, client_wheel, venv / "bin", outside)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _version(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def test_server_wheel_carries_policies_and_data_and_no_client_or_test_material(
    installed: Installed,
) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist") or []
    policies = {p.relative_to(ROOT).as_posix() for p in (ROOT / "policies").rglob("*.*")}
    assert {f"devstack/{policy}" for policy in policies} <= names
    assert any(n.startswith("medical_imaging_model/data/") for n in names)
    assert "emulator/__main__.py" in names
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"service", "devstack", "emulator", "medical_imaging_model"}
    assert not [n for n in names if re.search(r"(^|/)(tests?|pki)(/|\.py$)", n)], "no test PKI"
    assert not [n for n in names if n.endswith((".pem", ".key", ".crt"))]
    client = f"imaging-proxy-client=={_version(ROOT / 'client' / 'pyproject.toml')}"
    assert client in requires, "the server runs on exactly the client it was released with"
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if r.startswith("grpcio-tools")], "a build dependency only"


def test_client_wheel_carries_the_generated_stubs(installed: Installed) -> None:
    with zipfile.ZipFile(installed.client_wheel) as wheel:
        names = set(wheel.namelist())
    stubs = "imaging_proxy_client/stubs/imaging/metadata/v1/metadata_pb2"
    assert {f"{stubs}.py", f"{stubs}_grpc.py"} <= names


def test_service_never_imports_the_emulator_or_the_harness(installed: Installed) -> None:
    """Every import statement in the wheel's service/ (including those inside functions), then
    what importing the composition root and the server's verbs really loads."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        sources = {n: wheel.read(n) for n in wheel.namelist() if re.match(r"service/.*\.py$", n)}
    assert "service/app.py" in sources
    imported = {(name, top) for name, source in sources.items() for top in _imports(source)}
    assert {(name, top) for name, top in imported if top in HARNESS} == set()
    probe = "import service.app, service.cli.serve, service.cli.policy"
    result = installed.run("python", "-X", "importtime", "-c", probe)
    _check(result)
    loaded = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "service.app" in loaded
    assert {module for module in loaded if module.split(".")[0] in HARNESS} == set()


def _imports(source: bytes) -> set[str]:
    """The top-level packages a module's absolute import statements name."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_imports_come_from_the_venv(installed: Installed) -> None:
    probe = "import emulator, service; "
    probe += "from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2 as pb; "
    probe += "print(pb.__file__, service.__file__, emulator.__file__)"
    result = installed.run("python", "-c", probe)
    _check(result)
    for where in result.stdout.split():
        assert Path(where).is_relative_to(installed.bin.parent)


def test_version_names_both_distributions(installed: Installed) -> None:
    result = installed.run("imaging-proxy", "--version")
    _check(result)
    products = dict(part.split("/", 1) for part in result.stdout.split())
    assert products["imaging-proxy-client"] == _version(ROOT / "client" / "pyproject.toml")
    assert products["imaging-proxy"] == _version(ROOT / "pyproject.toml")


def test_one_command_has_the_client_and_the_server_verbs(installed: Installed) -> None:
    result = installed.run("imaging-proxy", "--help")
    _check(result)
    listed = set(re.findall(r"^    (\S+)", result.stdout, re.MULTILINE))
    assert {"update-image-set-metadata", "evaluate-update", "serve", "policy", "demo"} <= listed
    assert "emulator" in listed
    assert "not loaded" not in result.stderr, "every verb's entry point loads"


@pytest.mark.parametrize(
    "verb", [[], ["serve"], ["emulator"], ["demo"], ["policy"]], ids=lambda v: str(v)
)
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
