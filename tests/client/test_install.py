"""The client distribution as a microservice installs it: the wheel built (from its sdist) out of a
clean clone of the repository at HEAD, installed into a fresh venv that already holds the service's
own top-level packages `service` and `emulator`, then run from a folder outside any checkout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devstack.processes import Child, spawn, wait_for_json

# Building and installing may download build requirements and dependencies on a clean machine.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]

ALLOWED: dict[str, str | None] = {
    "grpcio": None,
    "grpcio-status": None,
    "protobuf": None,
    "jmespath": None,  # --query
    "pyyaml": None,  # --output yaml, --cli-input-yaml
    "cryptography": None,  # names a TLS failure
    "opentelemetry-api": "tracing",
}
"""Everything the client may require, and the extra it may require it under (None: always).
Adding a requirement to client/pyproject.toml means adding it here, on purpose."""

NEVER = {"aioboto3", "botocore", "pydicom", "redis", "opentelemetry-sdk", "dicom-anonymizer"}
NEVER |= {"aiohttp"}
"""The server's dependencies: none of them may come into a service with the client."""

SERVER_PACKAGES = {"service", "emulator", "devstack", "medical_imaging_model"}
SERVER_VERBS = {"serve", "policy", "demo", "emulator"}

SERVICE_PROJECT = {
    "pyproject.toml": """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "orders-service"
version = "1.0.0"

[tool.setuptools]
packages = ["service", "emulator"]
""",
    "service/__init__.py": 'MARKER = "orders-service: service"\n',
    "service/handlers.py": 'MARKER = "orders-service: service.handlers"\n',
    "emulator/__init__.py": 'MARKER = "orders-service: emulator"\n',
    "emulator/bank.py": 'MARKER = "orders-service: emulator.bank"\n',
}
"""A microservice whose own top-level packages are called `service` and `emulator`."""


@dataclass(frozen=True)
class Installed:
    """A fresh venv holding the service's own project, then the client wheel."""

    wheel: Path
    sdist: Path
    version: str
    """The client's version, as the clone's client/pyproject.toml declares it."""
    venv: Path
    outside: Path
    service_files: dict[str, str]
    """The service's `service` and `emulator` files and their SHA-256, before the client came."""

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / argv[0]), *argv[1:]],
            cwd=self.outside,
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("client-install")
    clone = work / "clone"
    head = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
    _run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)])
    _run(["git", "-C", str(clone), "checkout", "--quiet", head])
    dist = work / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(clone / "client")], 600)
    (sdist,) = dist.glob("imaging_proxy_client-*.tar.gz")
    (wheel,) = dist.glob("imaging_proxy_client-*.whl")  # built from the sdist
    version = tomllib.loads((clone / "client" / "pyproject.toml").read_text())["project"]["version"]

    project = work / "orders-service"
    for name, text in SERVICE_PROJECT.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "pip"), "--disable-pip-version-check", "install", "--quiet"]
    _run([*pip, str(project)], 600)
    before = _service_files(venv)
    _run([*pip, str(wheel)], 600)
    outside = work / "outside"
    outside.mkdir()
    return Installed(wheel, sdist, version, venv, outside, before)


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    _check(result)
    return result


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _service_files(venv: Path) -> dict[str, str]:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return {
        path.relative_to(site).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for package in ("service", "emulator")
        for path in sorted((site / package).rglob("*.py"))
    }


def _wheel_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = (n for n in archive.namelist() if n.endswith(f".dist-info/{suffix}"))
        return archive.read(name).decode()


def test_the_services_own_service_and_emulator_are_untouched(installed: Installed) -> None:
    assert installed.service_files, "the service's project was installed first"
    assert _service_files(installed.venv) == installed.service_files, "no file changed or added"
    probe = "import json, service.handlers, emulator.bank; print(json.dumps([service.MARKER, "
    probe += "service.handlers.MARKER, emulator.MARKER, emulator.bank.MARKER]))"
    result = installed.run("python", "-c", probe)
    _check(result)
    assert json.loads(result.stdout) == [
        "orders-service: service",
        "orders-service: service.handlers",
        "orders-service: emulator",
        "orders-service: emulator.bank",
    ]
    _check(installed.run("pip", "check"))


def test_the_wheel_holds_only_imaging_proxy_client(installed: Installed) -> None:
    assert _wheel_text(installed.wheel, "top_level.txt").split() == ["imaging_proxy_client"]
    dist_info = f"imaging_proxy_client-{installed.version}.dist-info"
    record = [line.split(",")[0] for line in _wheel_text(installed.wheel, "RECORD").splitlines()]
    tops = {name.split("/")[0] for name in record}
    assert tops == {"imaging_proxy_client", dist_info}, "no server package, no test material"
    stubs = "imaging_proxy_client/stubs/imaging/metadata/v1/metadata_pb2"
    assert {f"{stubs}.py", f"{stubs}_grpc.py"} <= set(record), "generated at build time"
    typed = {"imaging_proxy_client/py.typed", f"{stubs}.pyi", f"{stubs}_grpc.pyi"}
    assert typed <= set(record), "a service's mypy sees the client's types"
    probe = "import sys, imaging_proxy_client, imaging_proxy_client.cli.main; "
    probe += "print(imaging_proxy_client.__file__); print(*sorted(sys.modules))"
    result = installed.run("python", "-c", probe)
    _check(result)
    where, modules = result.stdout.splitlines()
    assert Path(where).is_relative_to(installed.venv)
    assert not SERVER_PACKAGES & {module.split(".")[0] for module in modules.split()}


def test_the_sdist_carries_the_protos_and_no_generated_stubs(installed: Installed) -> None:
    with tarfile.open(installed.sdist) as sdist:
        names = {name.split("/", 1)[-1] for name in sdist.getnames()}
    assert {"README.md", "protos/imaging/metadata/v1/metadata.proto"} <= names
    assert not [name for name in names if "_pb2" in name]


def test_requirements_are_ranges_from_the_allowed_list(installed: Installed) -> None:
    metadata = Parser().parsestr(_wheel_text(installed.wheel, "METADATA"))
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    assert {"grpcio", "grpcio-status", "protobuf"} <= {r.name for r in requirements}
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in ALLOWED, f"{requirement} is not on the allowed list"
        extra = ALLOWED[name]
        marker = None if requirement.marker is None else str(requirement.marker)
        assert marker == (None if extra is None else f'extra == "{extra}"'), str(requirement)
        operators = {spec.operator for spec in requirement.specifier}
        assert operators and not operators & {"==", "==="}, f"{requirement}: a range, not a pin"


def test_no_server_dependency_comes_in(installed: Installed) -> None:
    result = installed.run("pip", "list", "--format", "json")
    _check(result)
    names = {canonicalize_name(package["name"]) for package in json.loads(result.stdout)}
    assert {"imaging-proxy-client", "orders-service"} <= names
    assert names & NEVER == set()
    assert "imaging-proxy" not in names


def test_version_names_the_client_and_not_the_server(installed: Installed) -> None:
    result = installed.run("imaging-proxy", "--version")
    _check(result)
    products = dict(part.split("/", 1) for part in result.stdout.split())
    assert products["imaging-proxy-client"] == installed.version
    assert "imaging-proxy" not in products


def test_help_lists_the_client_verbs_only(installed: Installed) -> None:
    result = installed.run("imaging-proxy", "--help")
    _check(result)
    listed = set(re.findall(r"^    (\S+)", result.stdout, re.MULTILINE))
    assert {"update-image-set-metadata", "evaluate-update", "watch-update"} <= listed
    assert {"list-updates", "cancel-update", "approve-update"} <= listed
    assert listed & SERVER_VERBS == set()
    refused = installed.run("imaging-proxy", "serve")
    assert refused.returncode == 2 and "invalid choice: 'serve'" in refused.stderr


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`imaging-proxy demo` from the checkout (the server), for the installed client to call."""
    ready_file = tmp_path / "demo-ready.json"
    argv = [sys.executable, "-m", "imaging_proxy_client.cli.main", "demo", "--port", "0"]
    argv += ["--ready-file", str(ready_file), "--image-sets", "1", "--no-quotas"]
    child: Child = spawn("demo", argv, tmp_path, cwd=tmp_path)
    try:
        ready = wait_for_json(ready_file, child, timeout=120)
        yield {
            "endpoint": str(ready["endpoint"]),
            "datastore": str(ready["datastoreId"]),
            "image_set": str(ready["imageSetIds"][0]),
        }
    finally:
        child.stop(timeout=30)


LIBRARY_UPDATE = """\
import json, sys
from imaging_proxy_client import Credentials, SyncMetadataUpdateClient

endpoint, datastore, image_set, version = sys.argv[1:]
document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "LIBRARY^INSTALLED"}}}
credentials = Credentials.insecure(dev_principal="demo-admin")
with SyncMetadataUpdateClient(endpoint, credentials=credentials) as client:
    evaluation = client.evaluate(datastore, image_set, version, updatable=document)
    state = client.update(datastore, image_set, version, updatable=document)
print(json.dumps({"allow": evaluation.allow, "status": state.workflow_status}))
"""


def test_the_installed_cli_and_library_update_the_demos_image_set(
    installed: Installed, demo: dict[str, str]
) -> None:
    updates = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "CLI^INSTALLED"}}}
    argv = ["imaging-proxy", "update-image-set-metadata", "--endpoint-url", demo["endpoint"]]
    argv += ["--dev-principal", "demo-admin", "--datastore-id", demo["datastore"]]
    argv += ["--image-set-id", demo["image_set"], "--latest-version-id", "1"]
    argv += ["--cli-binary-format", "raw-in-base64-out", "--update-image-set-metadata-updates"]
    argv += [json.dumps({"DICOMUpdates": {"updatableAttributes": json.dumps(updates)}})]
    result = installed.run(*argv)
    _check(result)
    state = json.loads(result.stdout)
    assert state["imageSetWorkflowStatus"] == "UPDATED"
    version = str(state["latestVersionId"])
    assert version == "2"

    endpoint, datastore, image_set = demo["endpoint"], demo["datastore"], demo["image_set"]
    result = installed.run("python", "-c", LIBRARY_UPDATE, endpoint, datastore, image_set, version)
    _check(result)
    assert json.loads(result.stdout) == {"allow": True, "status": "UPDATED"}
