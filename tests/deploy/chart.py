"""The Helm chart as the tests see it: rendered by the pinned helm into a list of objects."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "imaging-proxy"
MANIFEST = ROOT / "deploy" / "kubernetes" / "imaging-proxy.yaml"
PRODUCTION_VALUES = Path(__file__).with_name("production-values.yaml")
RELEASE = "imaging-proxy"
MONITORING_API = "monitoring.coreos.com/v1"
"""The Prometheus Operator's API, as a cluster running it would announce it to Helm."""


def helm() -> str:
    """The pinned helm `make` builds into .tools/bin (`make test` does)."""
    found = shutil.which("helm") or str(ROOT / ".tools" / "bin" / "helm")
    if not Path(found).is_file():
        raise FileNotFoundError("helm not found: `make .tools/bin/helm` builds it")
    return found


def run_helm(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *argv], capture_output=True, text=True, timeout=120)


def render_text(
    values_files: Sequence[Path] = (),
    settings: Mapping[str, str] | None = None,
    api_versions: Sequence[str] = (),
) -> str:
    """`helm template` of the chart as release `imaging-proxy` in namespace default."""
    argv = ["template", RELEASE, str(CHART), "--namespace", "default"]
    for path in values_files:
        argv += ["--values", str(path)]
    for key, value in (settings or {}).items():
        argv += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    for api in api_versions:
        argv += ["--api-versions", api]
    result = run_helm(*argv)
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{result.stderr}")
    return result.stdout


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(
    values_files: Sequence[Path] = (),
    settings: Mapping[str, str] | None = None,
    api_versions: Sequence[str] = (),
) -> list[dict[str, Any]]:
    return objects(render_text(values_files, settings, api_versions))


def find(documents: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)
