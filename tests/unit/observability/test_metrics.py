"""The metrics registry: OPERATIONS.md lists exactly its families; decisions are counted by a
bounded outcome and reason; the oldest waiting request's age per stage; build and process info."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from prometheus_client import generate_latest

from service.admission.fairness import Flows
from service.admission.stages import FairStage
from service.core.config import LimitSettings
from service.core.errors import PermissionDenied
from service.observability.metrics import Metrics
from service.policy.decision_gate import Gate
from tests.unit.policy.test_decision_gate import DATASTORE, EDITOR, IMAGE_SET, NOBODY, Opa

OPERATIONS = Path(__file__).parents[3] / "docs" / "OPERATIONS.md"


def exposed_families(metrics: Metrics) -> set[str]:
    """The names `/metrics` declares (`# TYPE name kind`), without prometheus-client's
    `_created` timestamps of unlabelled histograms."""
    text = generate_latest(metrics.registry).decode()
    names = re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
    return {name for name in names if not name.endswith("_created")}


def documented_families() -> set[str]:
    """The first column of OPERATIONS.md's "Every metric family" table, labels dropped."""
    section = OPERATIONS.read_text().split("### Every metric family", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    cells = [row.split("|")[1] for row in rows]
    return {re.sub(r"\{.*", "", name) for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def test_operations_md_lists_exactly_the_families_the_registry_exposes() -> None:
    exposed = exposed_families(Metrics())
    assert documented_families() == exposed
    assert {"imaging_proxy_build_info", "process_cpu_seconds_total", "python_info"} <= exposed


def decisions(metrics: Metrics) -> FairStage:
    return FairStage("decisions", 16, Flows(100), metrics)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_the_oldest_request_being_decided_has_an_age_and_none_is_zero() -> None:
    metrics = Metrics()
    opa = Opa({EDITOR.principal: frozenset({"metadata-editor"})})
    gate = Gate(opa.lookup, LimitSettings(), decisions(metrics), metrics)
    age = {"stage": "deciding"}
    assert value(metrics, "imaging_proxy_oldest_waiting_seconds", **age) == 0.0
    async with gate.entry(EDITOR, DATASTORE, IMAGE_SET):
        await asyncio.sleep(0.05)
        waited = value(metrics, "imaging_proxy_oldest_waiting_seconds", **age)
        assert waited is not None and waited > 0
    assert value(metrics, "imaging_proxy_oldest_waiting_seconds", **age) == 0.0


async def test_a_no_role_refusal_is_a_denied_decision_with_its_own_reason() -> None:
    metrics = Metrics()
    gate = Gate(Opa({}).lookup, LimitSettings(), decisions(metrics), metrics)
    for _ in range(2):
        try:
            async with gate.entry(NOBODY, DATASTORE, IMAGE_SET):
                pass
        except PermissionDenied:
            pass
    labels = {"outcome": "denied", "reason": "no_role"}
    assert value(metrics, "imaging_proxy_decisions_total", **labels) == 2.0


def test_build_info_names_the_version() -> None:
    version = value(Metrics(), "imaging_proxy_build_info")
    text = generate_latest(Metrics().registry).decode()
    assert version is None  # an info metric's sample carries labels
    assert re.search(
        r'^imaging_proxy_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M
    )
