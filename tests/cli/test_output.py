"""Output formats and --query against golden files, cross-checked with the AWS CLI's formatters.

Regenerate the golden files with `UPDATE_GOLDEN=1 pytest tests/cli/test_output.py` and review
the diff: the cross-checks below keep them equal to what awscli itself prints.
"""

from __future__ import annotations

import io
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

import jmespath
import pytest
from awscli.formatter import JSONFormatter, TableFormatter  # type: ignore[import-untyped]
from awscli.text import format_text as aws_format_text  # type: ignore[import-untyped]
from google.protobuf import timestamp_pb2
from imaging_proxy_client.cli.errors import ConfigError, ParamError
from imaging_proxy_client.cli.printing import output
from imaging_proxy_client.cli.printing.output import OutputSettings
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

GOLDEN = Path(__file__).parent / "golden"


def stamp(seconds: float) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


STATE = metadata_pb2.ImageSetState(
    datastore_id="12345678901234567890123456789012",
    image_set_id="ea92b0d8838c72a3f25d00d13616f87e",
    latest_version_id="2",
    image_set_state="ACTIVE",
    image_set_workflow_status="UPDATED",
    created_at=stamp(1680027126.436),
    updated_at=stamp(1680042257.908),
)
EVALUATION = metadata_pb2.Evaluation(
    decision=metadata_pb2.Decision(
        allow=False,
        decision_id="4dfa5ab8-0086-4c7c-8d65-0c901d36f136",
        reasons=["force requires role imaging-admin", "private tags require role private-tags"],
    ),
    kind="dicom_updates",
    force=True,
    changes=[
        metadata_pb2.AttributeChange(
            action="update",
            level="instance",
            series_uid="1.3.6.1.4.1.5962.99.1.3633258862.2104868982.1369432891697.3656.0",
            instance_uid="1.3.6.1.4.1.5962.99.1.3633258862.2104868982.1369432891697.3659.0",
            tag="001910F9",
            vr="DS",
            private=True,
            requires_force=True,
            categories=["private"],
        ),
        metadata_pb2.AttributeChange(
            action="update",
            level="patient",
            tag="00100010",
            keyword="PatientName",
            vr="PN",
            categories=["patient_identity"],
        ),
    ],
)
CASES = {
    "state": ("UpdateImageSetMetadata", output.image_set_state(STATE)),
    "evaluation": ("EvaluateUpdate", output.evaluation(EVALUATION)),
}
QUERIES = {
    "none": None,
    "status": "imageSetWorkflowStatus",
    "projection": "{version: latestVersionId, state: imageSetState}",
    "tags": "changes[].[tag, level, requiresForce]",
}
COMBINATIONS = (
    [("state", "none", fmt) for fmt in ("json", "text", "table", "yaml")]
    + [("evaluation", "none", fmt) for fmt in ("json", "text", "table", "yaml")]
    + [
        ("state", "status", "text"),
        ("state", "status", "json"),
        ("state", "projection", "table"),
        ("state", "projection", "yaml"),
        ("evaluation", "tags", "text"),
        ("evaluation", "tags", "table"),
    ]
)


def settings(
    fmt: output.OutputFormat, query: str | None, color: output.Color = "off"
) -> OutputSettings:
    return OutputSettings(fmt, output.compile_query(query), color, pager="")


def golden(name: str, text: str) -> str:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    return path.read_text()


def test_response_fields_are_the_seeds_output_section_in_model_order() -> None:
    assert output.image_set_state(STATE) == {
        "datastoreId": "12345678901234567890123456789012",
        "imageSetId": "ea92b0d8838c72a3f25d00d13616f87e",
        "latestVersionId": "2",
        "imageSetState": "ACTIVE",
        "imageSetWorkflowStatus": "UPDATED",
        "createdAt": 1680027126.436,
        "updatedAt": 1680042257.908,
    }


def test_message_appears_only_when_present() -> None:
    failed = metadata_pb2.ImageSetState(image_set_workflow_status="UPDATE_FAILED", message="bad VR")
    assert output.image_set_state(failed)["message"] == "bad VR"
    assert "createdAt" not in output.image_set_state(failed)


def test_json_timestamps_are_epoch_seconds_as_on_the_seeds_pages() -> None:
    text = output.render(
        CASES["state"][1], "UpdateImageSetMetadata", settings("json", None), False, 80
    )
    assert '"updatedAt": 1680042257.908' in text


@pytest.mark.parametrize(("case", "query", "fmt"), COMBINATIONS)
def test_golden(case: str, query: str, fmt: output.OutputFormat) -> None:
    title, data = CASES[case]
    text = output.render(data, title, settings(fmt, QUERIES[query]), False, 80)
    assert text == golden(f"{case}-{query}.{fmt}", text)


def aws_args(query: str | None, color: str = "off") -> Namespace:
    return Namespace(query=jmespath.compile(query) if query else None, color=color)


@pytest.mark.parametrize(("case", "query", "fmt"), [c for c in COMBINATIONS if c[2] != "yaml"])
def test_same_as_the_aws_cli(case: str, query: str, fmt: str) -> None:
    title, data = CASES[case]
    expression = QUERIES[query]
    ours = output.render(data, title, settings(fmt, expression), False, 80)  # type: ignore[arg-type]
    assert ours == aws_render(fmt, title, data, expression)


def aws_render(fmt: str, title: str, data: Any, query: str | None) -> str:
    stream = io.StringIO()
    if fmt == "json":
        JSONFormatter(aws_args(query))(title, dict(data), stream)
    elif fmt == "table":
        TableFormatter(aws_args(query))(title, dict(data), stream)
    else:
        aws_format_text(jmespath.search(query, data) if query else data, stream)
    return stream.getvalue()


def test_table_colours_are_the_aws_cli_colours() -> None:
    title, data = CASES["state"]
    ours = output.render(data, title, settings("table", None, "on"), False, 80)
    assert "\x1b[1m\x1b[34mUPDATED\x1b[0m" in ours
    assert output.render(data, title, settings("table", None, "auto"), False, 80) == golden(
        "state-none.table", ""
    )


def test_a_bad_query_is_a_syntax_error() -> None:
    with pytest.raises(ParamError) as raised:
        output.compile_query("[?")
    assert raised.value.exit_code == 252


def test_output_from_the_environment_and_its_errors() -> None:
    assert output.resolve_output(None, {"AWS_DEFAULT_OUTPUT": "table"}) == "table"
    assert output.resolve_output("yaml", {"AWS_DEFAULT_OUTPUT": "table"}) == "yaml"
    with pytest.raises(ConfigError) as raised:
        output.resolve_output(None, {"AWS_DEFAULT_OUTPUT": "xml"})
    assert raised.value.exit_code == 253
    with pytest.raises(ParamError):
        output.resolve_output("xml", {})
