"""deploy/iam-policy.json: only the HealthImaging actions the proxy calls, on data stores only."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _operations_called() -> set[str]:
    """Every HealthImaging operation in service/: by name (`_call("X")`) or by botocore's
    snake_case client method (`self._client.get_x(`)."""
    text = (ROOT / "service" / "backend" / "healthimaging.py").read_text()
    named = set(re.findall(r'_call\("(\w+)"', text))
    methods = re.findall(r"self\._client\.([a-z][a-z_]+)\(", text)  # not _make_api_call
    camel = {"".join(part.title() for part in method.split("_")) for method in methods}
    return named | camel


def test_the_iam_policy_allows_exactly_the_operations_the_proxy_calls() -> None:
    policy = json.loads((ROOT / "deploy" / "iam-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {f"medical-imaging:{op}" for op in _operations_called()}
    assert {s["Effect"] for s in policy["Statement"]} == {"Allow"}


def test_the_iam_policy_names_data_stores_and_their_image_sets_only() -> None:
    policy = json.loads((ROOT / "deploy" / "iam-policy.json").read_text())
    resources = [r for s in policy["Statement"] for r in s["Resource"]]
    pattern = r"arn:aws:medical-imaging:REGION:ACCOUNT_ID:datastore/DATASTORE_ID(/imageset/\*)?"
    assert resources and all(re.fullmatch(pattern, r) for r in resources)
