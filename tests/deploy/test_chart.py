"""The Helm chart without a cluster: linted, rendered with default and production-like values,
every object validated strictly against Kubernetes' schemas, deploy/kubernetes/ kept in step."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.observability.metrics import Metrics
from tests.deploy.chart import (
    CHART,
    MANIFEST,
    MONITORING_API,
    PRODUCTION_VALUES,
    ROOT,
    find,
    objects,
    render,
    render_text,
    run_helm,
)

KUBERNETES_VERSION = "1.33"
"""The oldest Kubernetes the chart is validated against (its kubeVersion admits 1.29 and later)."""
VARIANTS = {"default": [], "production": [PRODUCTION_VALUES]}
ALERTS = {
    "ImagingProxyReadinessLost",
    "ImagingProxyDecisionsUnavailable",
    "ImagingProxyQueueAgeHigh",
    "ImagingProxyThrottled",
    "ImagingProxyUpdateFailures",
    "ImagingProxyBreakGlass",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_passes(variant: str) -> None:
    values = [arg for path in VARIANTS[variant] for arg in ("--values", str(path))]
    result = run_helm("lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_install_renders_with_default_values_and_names_the_secrets() -> None:
    """`helm install imaging-proxy deploy/helm/imaging-proxy`, client side (no cluster here)."""
    result = run_helm("install", "imaging-proxy", str(CHART), "--dry-run=client")
    assert result.returncode == 0, result.stderr
    assert "imaging-proxy-tls: tls.crt, tls.key, ca.crt" in result.stdout  # NOTES.txt
    assert "imaging-proxy-redis: password" in result.stdout


@pytest.mark.parametrize(
    "setting",
    [
        "redis.persistence.appendfsync=sometimes",
        "proxy.ports.grpc=70000",
        "opa.bundle.type=ftp",
        "no.such.value=1",
    ],
)
def test_values_schema_refuses_bad_values(setting: str) -> None:
    result = run_helm("template", "imaging-proxy", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid_kubernetes(variant: str, tmp_path: Path) -> None:
    """Strict: an unknown or misplaced field fails. The Prometheus Operator's objects are
    custom resources, whose schemas kubernetes-validate does not ship: checked below instead."""
    documents = render(VARIANTS[variant], api_versions=[MONITORING_API])
    builtin = [d for d in documents if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    files = []
    for index, document in enumerate(builtin):
        path = tmp_path / f"{index:02d}-{document['kind']}.yaml"
        path.write_text(yaml.safe_dump(document))
        files.append(str(path))
    validate = Path(sys.executable).with_name("kubernetes-validate")
    argv = [str(validate), "--strict", "--quiet", "-k", KUBERNETES_VERSION, *files]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {d["kind"] for d in builtin}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "StatefulSet"} <= kinds
    assert {"NetworkPolicy", "PodDisruptionBudget"} <= kinds


def test_deploy_kubernetes_is_the_chart_rendered_with_default_values() -> None:
    """`make manifests` writes it; edit the chart, then run it."""
    rendered = render_text()
    assert MANIFEST.read_text().split("\n", 1)[1] == rendered, "stale: run `make manifests`"


def test_the_chart_ships_policies_as_they_are_in_policies() -> None:
    """Helm reads files inside the chart only: `make manifests` refreshes its copy."""
    shipped = CHART / "files" / "policies"
    expected = {
        p.relative_to(ROOT / "policies")
        for p in (ROOT / "policies").rglob("*")
        if p.suffix in {".rego", ".json"} and not p.name.endswith("_test.rego")
    }
    copied = {p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()}
    assert copied == expected, "stale: run `make manifests`"
    for relative in expected:
        assert filecmp.cmp(ROOT / "policies" / relative, shipped / relative, shallow=False)


def test_the_opa_sidecar_loads_the_configmap_at_the_policies_own_paths() -> None:
    """No --bundle: the kubelet's hidden folder would carry data.json under its own key."""
    deployment = find(render(), "Deployment", "imaging-proxy")
    spec = deployment["spec"]["template"]["spec"]
    opa = next(c for c in spec["containers"] if c["name"] == "opa")
    assert "--bundle" not in " ".join(opa["args"])
    assert {"--watch", "--ignore=.*"} <= set(opa["args"]) and opa["args"][-1] == "/policies"
    policies = next(v for v in spec["volumes"] if v["name"] == "policies")["configMap"]
    paths = {item["path"] for item in policies["items"]}
    assert {"data.json", "imaging/update.rego", "system/log/mask.rego"} <= paths


def test_redis_keeps_an_append_only_file_on_a_persistent_volume() -> None:
    redis = find(render(), "StatefulSet", "imaging-proxy-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data" and args[args.index("--dir") + 1] == "/data"


def test_production_values_poll_a_signed_bundle_and_reach_redis_over_tls() -> None:
    documents = render([PRODUCTION_VALUES])
    config = yaml.safe_load(find(documents, "ConfigMap", "imaging-proxy-opa")["data"]["opa.yaml"])
    bundle = config["bundles"]["imaging"]
    assert bundle["signing"] == {"keyid": "imaging-proxy"} and config["keys"]["imaging-proxy"]
    assert bundle["polling"] == {"min_delay_seconds": 10, "max_delay_seconds": 30}
    spec = find(documents, "Deployment", "imaging-proxy")["spec"]["template"]["spec"]
    opa = next(c for c in spec["containers"] if c["name"] == "opa")
    assert opa["readinessProbe"]["httpGet"]["path"] == "/health?bundles"
    proxy = next(c for c in spec["containers"] if c["name"] == "imaging-proxy")
    journal = next(e["value"] for e in proxy["env"] if e["name"] == "IMAGING_PROXY_JOURNAL_URL")
    assert journal.startswith("rediss://:$(REDIS_PASSWORD)@") and "ssl_ca_certs=" in journal
    account = find(documents, "ServiceAccount", "imaging-proxy")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert find(documents, "HorizontalPodAutoscaler", "imaging-proxy")
    assert "replicas" not in find(documents, "Deployment", "imaging-proxy")["spec"]


def _families() -> set[str]:
    return {family.name for family in Metrics().registry.collect()}


def _named_metrics(text: str) -> set[str]:
    names = set(re.findall(r"\b(imaging_proxy_[a-z_]+)", text))
    return {re.sub(r"_(total|bucket|count|sum|created)$", "", name) for name in names}


def test_alerts_are_the_six_and_read_metrics_the_proxy_exports() -> None:
    documents = render(api_versions=[MONITORING_API])
    rule = find(documents, "PrometheusRule", "imaging-proxy")
    rules = rule["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == ALERTS
    named = _named_metrics(" ".join(r["expr"] for r in rules))
    assert named and named <= _families(), named - _families()


def test_without_the_prometheus_operator_no_custom_resource_is_rendered() -> None:
    """A bare install on a cluster without its CRDs must not fail."""
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"PrometheusRule", "ServiceMonitor"}


def test_the_dashboard_is_grafana_json_on_exported_metrics() -> None:
    dashboard_map = find(render(), "ConfigMap", "imaging-proxy-dashboard")
    dashboard: dict[str, Any] = json.loads(dashboard_map["data"]["imaging-proxy.json"])
    expressions = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    named = _named_metrics(expressions)
    assert len(dashboard["panels"]) >= 6
    assert named and named <= _families(), named - _families()


def test_objects_render_in_one_namespace_and_name_their_release() -> None:
    for document in objects(render_text()):
        assert document["metadata"]["labels"]["app.kubernetes.io/instance"] == "imaging-proxy"
