"""Dockerfile and deploy/ cannot be built here (no Docker engine): check them by construction."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.core.config import Settings
from service.core.config_loader import load_settings
from service.transport.health import LIVENESS, READINESS

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
NAME = "imaging-proxy"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists() -> None:
    sources = [
        part
        for op, args in _instructions()
        if op == "COPY" and "--from=" not in args
        for part in args.split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the build context"
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert missing == []


def test_every_packaged_package_is_copied() -> None:
    """The server's packages, and the client's distribution folder whole."""
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {pattern.rstrip("*") for pattern in found["find"]["include"]}
    copied = {args.split()[0].rstrip("/") for op, args in _instructions() if op == "COPY"}
    assert packages | {"client"} <= copied


def test_entry_point_is_the_installed_console_script() -> None:
    """`imaging-proxy` is the client's script; the server adds `serve` to it."""
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entrypoints = [args for op, args in _instructions() if op == "ENTRYPOINT"]
    assert entrypoints == ['["imaging-proxy"]']
    assert "imaging-proxy" in client["scripts"]
    assert "serve" in server["entry-points"]["imaging_proxy.verbs"]


def test_final_stage_runs_as_non_root_without_build_tools() -> None:
    instructions = _instructions()
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected"
    final = instructions[stages[-1] :]
    users = [args for op, args in final if op == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    final_runs = " ".join(args for op, args in final if op == "RUN")
    for tool in ("pip install", "apt-get install", "gcc", "grpc_tools"):
        assert tool not in final_runs
    assert any(op == "FROM" and "slim" in args for op, args in final)


def test_stubs_are_generated_in_the_image_by_the_wheel_build() -> None:
    """The image installs both distributions, so client/setup.py generates the stubs from
    protos/ and setup.py copies policies/."""
    sources = {
        part
        for op, args in _instructions()
        if op == "COPY" and "--from=" not in args
        for part in args.split()[:-1]
    }
    assert {"setup.py", "MANIFEST.in", "protos/", "policies/", "client/"} <= sources
    runs = [args + " " for op, args in _instructions() if op == "RUN"]
    assert any("pip install ./client . " in run for run in runs)


@pytest.mark.parametrize(
    "path",
    [DEPLOY / "docker-compose.yml", DEPLOY / "kubernetes" / "imaging-proxy.yaml"],
    ids=lambda p: p.name,
)
def test_deploy_manifests_parse_and_probe_grpc_health(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents
    text = path.read_text()
    assert "opa" in text and "redis" in text
    assert "grpc" in text and ("readinessProbe" in text or "healthcheck" in text)


def _deploy_settings() -> Settings:
    return load_settings(DEPLOY / "imaging-proxy.toml")


def _proxy_container() -> dict[str, Any]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "imaging-proxy.yaml").read_text())
    deployment = next(
        doc for doc in documents if doc["kind"] == "Deployment" and doc["metadata"]["name"] == NAME
    )
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return dict(next(c for c in containers if c["name"] == NAME))


def test_deploy_settings_open_a_separate_plaintext_health_port() -> None:
    server = _deploy_settings().server
    assert server.health_port not in (0, server.port, server.metrics_port)


def test_kubernetes_liveness_never_reads_readiness() -> None:
    container, port = _proxy_container(), _deploy_settings().server.health_port
    assert container["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS}
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": READINESS}
    assert {"name": "health", "containerPort": port} in container["ports"]


def test_compose_healthcheck_reads_readiness_on_the_health_port() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    check = " ".join(compose["services"][NAME]["healthcheck"]["test"])
    assert f"'127.0.0.1:{_deploy_settings().server.health_port}'" in check
    assert f"service='{READINESS}'" in check


def test_operations_doc_names_what_the_deploy_files_probe() -> None:
    health = (ROOT / "docs" / "OPERATIONS.md").read_text().split("**Health.**")[1]
    for name in (LIVENESS, READINESS, "health_port", "health_failures"):
        assert f"`{name}`" in health.split("**Logs worth")[0], name


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def _kubernetes(kind: str, name: str) -> dict[str, Any]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "imaging-proxy.yaml").read_text())
    return dict(next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name))


def test_the_replicas_share_the_redis_that_compose_and_kubernetes_start() -> None:
    journal = _deploy_settings().journal
    assert journal.url.startswith(("redis://", "rediss://")) and not journal.data_dir
    host = urlsplit(journal.url).hostname
    compose = _compose()["services"]
    assert host in compose and host in compose[NAME]["depends_on"]
    # Kubernetes: serve reads the journal's URL from the env the chart builds (the password comes
    # from a Secret), never from its arguments, which the process list shows.
    container = _proxy_container()
    assert not any("JOURNAL" in arg or arg == "--journal" for arg in container["args"])
    url = next(e["value"] for e in container["env"] if e["name"] == "IMAGING_PROXY_JOURNAL_URL")
    assert url.startswith("redis://:$(REDIS_PASSWORD)@")
    k8s_host, k8s_port = urlsplit(url).hostname, urlsplit(url).port
    service_ports = _kubernetes("Service", str(k8s_host))["spec"]["ports"]
    assert k8s_port in [p["port"] for p in service_ports]


def _chart_settings() -> Settings:
    """The imaging-proxy.toml the chart renders into its ConfigMap."""
    config = _kubernetes("ConfigMap", f"{NAME}-config")["data"]["imaging-proxy.toml"]
    return load_settings_text(config)


def load_settings_text(text: str) -> Settings:
    sections = tomllib.loads(text)
    return load_settings(None, sections)


def test_tls_files_are_where_compose_and_kubernetes_mount_them() -> None:
    for identity in (_deploy_settings().identity, _chart_settings().identity):
        paths = [Path(p) for p in (identity.tls_cert, identity.tls_key, identity.client_ca)]
        folder = {str(p.parent) for p in paths}
        assert len(folder) == 1
    deploy_identity = _deploy_settings().identity
    assert (
        f"./tls:{Path(deploy_identity.tls_cert).parent}:ro"
        in _compose()["services"][NAME]["volumes"]
    )
    mounts = {m["name"]: m["mountPath"] for m in _proxy_container()["volumeMounts"]}
    assert mounts["tls"] == str(paths[0].parent)
    secret_command = (ROOT / "docs" / "DEPLOY.md").read_text()
    for path in paths:
        assert f"--from-file=deploy/tls/{path.name}" in secret_command
    assert os.access(DEPLOY / "tls" / "make-certs.sh", os.X_OK)


def test_every_documented_tls_path_is_one_deploy_uses() -> None:
    identity = _deploy_settings().identity
    used = {identity.tls_cert, identity.tls_key, identity.client_ca}
    for doc in ("README.md", "docs/OPERATIONS.md", "docs/IDENTITY.md"):
        named = set(
            re.findall(r"/etc/imaging-proxy/[\w/.-]+\.(?:crt|key)", (ROOT / doc).read_text())
        )
        assert named and named <= used, (doc, named - used)


def test_only_the_api_is_reachable_from_outside_the_pod_or_host() -> None:
    server = _deploy_settings().server
    published = _compose()["services"][NAME]["ports"]
    assert f"{server.port}:{server.port}" in published
    assert f"127.0.0.1:{server.metrics_port}:{server.metrics_port}" in published
    assert not any(str(server.health_port) in entry for entry in published)
    service_ports = _kubernetes("Service", NAME)["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["grpc"]
    named = {p["name"]: p["containerPort"] for p in _proxy_container()["ports"]}
    assert named == {
        "grpc": server.port,
        "health": server.health_port,
        "metrics": server.metrics_port,
    }


def test_the_kubernetes_policy_configmap_carries_every_policy_and_the_log_mask() -> None:
    """Every policy but the tests, at its own path (e.g. system/log/mask.rego: without it OPA
    logs JWT claims)."""
    deployment = _kubernetes("Deployment", NAME)["spec"]["template"]["spec"]
    volume = next(v for v in deployment["volumes"] if v["name"] == "policies")["configMap"]
    configmap = _kubernetes("ConfigMap", volume["name"])["data"]
    policies = {
        path.relative_to(ROOT / "policies").as_posix(): path.read_text()
        for path in (ROOT / "policies").rglob("*")
        if path.suffix in {".rego", ".json"} and not path.name.endswith("_test.rego")
    }
    shipped = {item["path"]: configmap[item["key"]] for item in volume["items"]}
    assert {k: v.rstrip("\n") for k, v in shipped.items()} == {
        k: v.rstrip("\n") for k, v in policies.items()
    }
