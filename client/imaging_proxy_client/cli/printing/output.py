"""Printing responses as the AWS CLI does: `--output json|text|table|yaml`, `--query`, `--color`.

The text layout is ported from awscli/text.py (aws-cli 1.46, Copyright Amazon.com, Inc. or its
affiliates, Apache License 2.0); the table from awscli/table.py (see table.py). YAML is the AWS
CLI v2's block style, keys in response order.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal

import jmespath
import jmespath.exceptions
import yaml
from google.protobuf import timestamp_pb2

from imaging_proxy_client.cli.errors import ConfigError, ParamError
from imaging_proxy_client.cli.printing.table import ColorStyler, MultiTable, Styler, build_table
from imaging_proxy_client.stubs.imaging.metadata.v1 import metadata_pb2

OutputFormat = Literal["json", "text", "table", "yaml", "yaml-stream"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("json", "text", "table", "yaml", "yaml-stream")
Color = Literal["on", "off", "auto"]


@dataclass(frozen=True)
class OutputSettings:
    """How a response is printed."""

    output: OutputFormat
    """The formatting style (`--output`, else AWS_DEFAULT_OUTPUT, else json)."""
    query: jmespath.parser.ParsedResult | None
    """A compiled `--query` JMESPath expression applied before formatting."""
    color: Color
    """Table colours: on, off, or auto (on when stdout is a terminal)."""
    pager: str
    """A pager command for terminal output; empty for none (`--no-cli-pager`)."""


def compile_query(expression: str | None) -> jmespath.parser.ParsedResult | None:
    if expression is None:
        return None
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ParamError("--query", f"Bad value for --query {expression}: {exc}") from None


def resolve_output(option: str | None, environ: Mapping[str, str]) -> OutputFormat:
    """`--output`, else AWS_DEFAULT_OUTPUT (scripts written for the AWS CLI set it), else json."""
    if option is not None:
        return _as_format(option)
    from_env = environ.get("AWS_DEFAULT_OUTPUT", "json")
    if from_env not in OUTPUT_FORMATS:
        raise ConfigError(
            f"Unknown output type: {from_env} (from AWS_DEFAULT_OUTPUT); "
            f"valid values: {', '.join(OUTPUT_FORMATS)}"
        )
    return _as_format(from_env)


def _as_format(value: str) -> OutputFormat:
    for known in OUTPUT_FORMATS:
        if value == known:
            return known
    raise ParamError("--output", f"Unknown output type: {value}")


def resolve_pager(no_cli_pager: bool, environ: Mapping[str, str]) -> str:
    """AWS_PAGER, then PAGER; none by default since these responses are a few lines long."""
    if no_cli_pager:
        return ""
    return environ.get("AWS_PAGER", environ.get("PAGER", ""))


# --- rendering ------------------------------------------------------------------------------


def render(data: Any, title: str, settings: OutputSettings, is_tty: bool, width: int) -> str:
    """The text printed for `data` (the query applied first), "" when there is nothing to print."""
    if settings.query is not None:
        data = settings.query.search(data)
    if settings.output == "json":
        return "" if data == {} else json.dumps(data, indent=4, ensure_ascii=False) + "\n"
    if settings.output in ("yaml", "yaml-stream"):
        return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True)
    if settings.output == "table":
        return _render_table(data, title, settings.color, is_tty, width)
    return format_text(data)


def _render_table(data: Any, title: str, color: Color, is_tty: bool, width: int) -> str:
    colored = color == "on" or (color == "auto" and is_tty)
    table = MultiTable(width, ColorStyler() if colored else Styler())
    if not build_table(table, title, data):
        return ""
    lines: list[str] = []
    table.render(_ListStream(lines))
    return "".join(lines)


class _ListStream:
    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def write(self, text: str) -> None:
        self._lines.append(text)


def print_response(
    data: Any, title: str, settings: OutputSettings, stream: IO[str] | None = None
) -> None:
    """Print to stdout (through the pager when one is set and stdout is a terminal)."""
    out = sys.stdout if stream is None else stream
    is_tty = out.isatty()
    width = shutil.get_terminal_size((80, 24)).columns if is_tty else 80
    text = render(data, title, settings, is_tty, width)
    if settings.pager and is_tty:
        _page(text, settings.pager)
        return
    out.write(text)
    out.flush()


def _page(text: str, pager: str) -> None:
    try:
        process = subprocess.Popen(shlex.split(pager), stdin=subprocess.PIPE, text=True)
    except OSError as exc:
        raise ConfigError(
            "Unable to redirect output to pager. Received the following error when opening "
            f"pager:\n{exc}\n\nSet AWS_PAGER to an empty value or pass --no-cli-pager."
        ) from None
    process.communicate(text)


# --- text (awscli/text.py) ------------------------------------------------------------------


def format_text(data: Any) -> str:
    lines: list[str] = []
    _format_text(data, lines, None, None)
    return "".join(lines)


def _format_text(item: Any, out: list[str], identifier: str | None, keys: list[str] | None) -> None:
    if isinstance(item, dict):
        _format_dict(keys, item, identifier, out)
    elif isinstance(item, list):
        _format_list(item, identifier, out)
    else:
        out.append(f"{_text_scalar(item)}\n")


def _text_scalar(value: Any) -> str:
    return str(value)


def _format_list(item: list[Any], identifier: str | None, out: list[str]) -> None:
    if not item:
        return
    if any(isinstance(el, dict) for el in item):
        all_keys = sorted(
            {
                k
                for d in item
                if isinstance(d, dict)
                for k, v in d.items()
                if not isinstance(v, dict | list)
            }
        )
        for element in item:
            _format_text(element, out, identifier, all_keys)
    elif any(isinstance(el, list) for el in item):
        scalars = [el for el in item if not isinstance(el, dict | list)]
        if scalars:
            _format_scalar_list(scalars, identifier, out)
        for non_scalar in (el for el in item if isinstance(el, dict | list)):
            _format_text(non_scalar, out, identifier, None)
    else:
        _format_scalar_list(item, identifier, out)


def _format_scalar_list(elements: list[Any], identifier: str | None, out: list[str]) -> None:
    if identifier is not None:
        out.extend(f"{identifier.upper()}\t{_text_scalar(item)}\n" for item in elements)
    else:
        out.append("\t".join(_text_scalar(item) for item in elements) + "\n")


def _format_dict(
    keys: list[str] | None, item: dict[str, Any], identifier: str | None, out: list[str]
) -> None:
    scalars, non_scalars = _partition_dict(item, keys)
    if scalars:
        if identifier is not None:
            scalars.insert(0, identifier.upper())
        out.append("\t".join(scalars) + "\n")
    for new_identifier, non_scalar in non_scalars:
        _format_text(non_scalar, out, new_identifier, None)


def _partition_dict(
    item: dict[str, Any], keys: list[str] | None
) -> tuple[list[str], list[tuple[str, Any]]]:
    scalar: list[str] = []
    non_scalar: list[tuple[str, Any]] = []
    if keys is None:
        for key, value in sorted(item.items()):
            if isinstance(value, dict | list):
                non_scalar.append((key, value))
            else:
                scalar.append(_text_scalar(value))
    else:
        scalar.extend(_text_scalar(item.get(key, "")) for key in keys)
        non_scalar.extend((k, item[k]) for k in sorted(set(item) - set(keys)))
    return scalar, non_scalar


# --- responses: protobuf -> the AWS JSON shape ----------------------------------------------


def epoch_seconds(stamp: timestamp_pb2.Timestamp) -> float:
    """A timestamp as the AWS CLI prints HealthImaging's: epoch seconds, millisecond precision."""
    return round(stamp.seconds + stamp.nanos / 1e9, 3)


def image_set_state(state: metadata_pb2.ImageSetState) -> dict[str, Any]:
    """The UpdateImageSetMetadata response fields, in the model's order; absent ones omitted."""
    out: dict[str, Any] = {
        "datastoreId": state.datastore_id,
        "imageSetId": state.image_set_id,
        "latestVersionId": state.latest_version_id,
        "imageSetState": state.image_set_state,
    }
    if state.image_set_workflow_status:
        out["imageSetWorkflowStatus"] = state.image_set_workflow_status
    if state.HasField("created_at"):
        out["createdAt"] = epoch_seconds(state.created_at)
    if state.HasField("updated_at"):
        out["updatedAt"] = epoch_seconds(state.updated_at)
    if state.message:
        out["message"] = state.message
    return out


def evaluation(result: metadata_pb2.Evaluation) -> dict[str, Any]:
    """The EvaluateUpdate dry run: the policy decision and the normalised change list."""
    out: dict[str, Any] = {
        "decision": {
            "allow": result.decision.allow,
            "decisionId": result.decision.decision_id,
            "reasons": list(result.decision.reasons),
        },
        "kind": result.kind,
        "force": result.force,
        "includeStudyImageSets": result.include_study_image_sets,
    }
    if result.revert_to_version_id:
        out["revertToVersionId"] = result.revert_to_version_id
    out["changes"] = [_change(c) for c in result.changes]
    if result.policy_input:
        out["policyInput"] = json.loads(result.policy_input)
    return out


def _change(change: metadata_pb2.AttributeChange) -> dict[str, Any]:
    return {
        "action": change.action,
        "level": change.level,
        "seriesInstanceUid": change.series_uid,
        "sopInstanceUid": change.instance_uid,
        "tag": change.tag,
        "keyword": change.keyword,
        "vr": change.vr,
        "private": change.private,
        "requiresForce": change.requires_force,
        "categories": list(change.categories),
    }
