"""Dockerfile and deploy/ cannot be built here (no Docker engine): check them by construction."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


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


def test_entry_point_is_the_installed_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoints = [args for op, args in _instructions() if op == "ENTRYPOINT"]
    assert entrypoints == ['["imaging-proxy"]']
    assert "imaging-proxy" in scripts


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


def test_stubs_are_generated_in_the_image_from_the_proto() -> None:
    build_runs = " ".join(args for op, args in _instructions() if op == "RUN")
    assert "grpc_tools.protoc" in build_runs
    for proto in ROOT.glob("protos/**/*.proto"):
        assert proto.relative_to(ROOT / "protos").as_posix() in build_runs


@pytest.mark.parametrize("path", sorted((ROOT / "deploy").rglob("*.y*ml")), ids=lambda p: p.name)
def test_deploy_manifests_parse_and_probe_grpc_health(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents
    text = path.read_text()
    assert "opa" in text and "redis" in text and "--bundle" in text
    assert "grpc" in text and ("readinessProbe" in text or "healthcheck" in text)
