"""Request parameters of the client verbs (sans-IO): file references, structures, blobs.

Mirrors what the AWS CLI v2 does between the command line and botocore: `file://` and `fileb://`
references, JSON or shorthand for structures, `--cli-input-json`/`--cli-input-yaml` merged under
the command line's own options, and blobs decoded by `--cli-binary-format`. The shapes they are
validated against are in `shapes.py`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from imaging_proxy_client.cli.errors import ParamError, ParamValidationError
from imaging_proxy_client.cli.parameters.shapes import UPDATE_INPUT, prune, validate
from imaging_proxy_client.cli.parameters.shorthand import ShorthandParseError, ShorthandParser

BinaryFormat = Literal["base64", "raw-in-base64-out"]
BINARY_FORMATS: tuple[BinaryFormat, ...] = ("base64", "raw-in-base64-out")


@dataclass(frozen=True)
class DicomUpdates:
    """The two attribute documents, as the raw bytes HealthImaging receives (after base64)."""

    updatable_attributes: bytes | None
    removable_attributes: bytes | None


@dataclass(frozen=True)
class UpdateParams:
    """A validated UpdateImageSetMetadata (or EvaluateUpdate) request."""

    datastore_id: str
    image_set_id: str
    latest_version_id: str
    force: bool
    include_study_image_sets: bool
    dicom_updates: DicomUpdates | None
    revert_to_version_id: str | None


# --- file references ------------------------------------------------------------------------


def load_paramfile(value: str) -> str | bytes | None:
    """The contents of a `file://` (text) or `fileb://` (bytes) reference, None for plain values."""
    for prefix, mode in (("fileb://", "rb"), ("file://", "r")):
        if value.startswith(prefix):
            return _read_file(value, prefix, mode)
    return None


def _read_file(value: str, prefix: str, mode: str) -> str | bytes:
    path = os.path.expandvars(os.path.expanduser(value[len(prefix) :]))
    try:
        with open(path, mode) as handle:
            contents: str | bytes = handle.read()
    except UnicodeDecodeError:
        raise _ResourceLoadingError(
            f"Unable to load paramfile ({path}), text contents could not be decoded.  If this is "
            "a binary file, please use the fileb:// prefix instead of the file:// prefix."
        ) from None
    except OSError as exc:
        raise _ResourceLoadingError(f"Unable to load paramfile {value}: {exc}") from None
    return contents


class _ResourceLoadingError(Exception):
    pass


def resolve_argument(cli_name: str, value: str) -> str | bytes:
    """An option's value with a leading `file://` / `fileb://` reference replaced by the file."""
    try:
        loaded = load_paramfile(value)
    except _ResourceLoadingError as exc:
        raise ParamError(cli_name, str(exc)) from None
    return value if loaded is None else loaded


# --- structures: JSON or shorthand ----------------------------------------------------------


def parse_structure(cli_name: str, raw: str | bytes) -> dict[str, Any]:
    """A structure option's value: JSON when it starts with `{`, else shorthand syntax."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if text.strip().startswith(("{", "[")):
        return _parse_json_object(cli_name, raw)
    try:
        return ShorthandParser(_shorthand_file).parse(text)
    except ShorthandParseError as exc:
        raise ParamError(cli_name, str(exc)) from None
    except _ResourceLoadingError as exc:
        raise ParamError(cli_name, str(exc)) from None


def _shorthand_file(value: str) -> str | bytes | None:
    return load_paramfile(value)


def _parse_json_object(cli_name: str, raw: str | bytes) -> dict[str, Any]:
    # The JSON itself is not echoed (the AWS CLI does): it holds attribute values.
    try:
        loaded = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise ParamError(cli_name, f"Invalid JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise ParamError(cli_name, "Invalid JSON: expected a JSON object")
    return loaded


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f'duplicate key "{key}"')
        out[key] = value
    return out


def load_cli_input(json_value: str | None, yaml_value: str | None) -> dict[str, Any]:
    """The parameters given with `--cli-input-json` or `--cli-input-yaml` (inline or file://)."""
    if json_value is not None and yaml_value is not None:
        raise ParamError(
            "--cli-input-json", "This argument may not be specified along with --cli-input-yaml."
        )
    if json_value is not None:
        return _parse_json_object(
            "--cli-input-json", resolve_argument("--cli-input-json", json_value)
        )
    if yaml_value is not None:
        return _parse_yaml_object(resolve_argument("--cli-input-yaml", yaml_value))
    return {}


def _parse_yaml_object(raw: str | bytes) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamError("--cli-input-yaml", f"Invalid YAML{where}") from None
    if not isinstance(loaded, dict):
        raise ParamError("--cli-input-yaml", "Invalid YAML: expected a mapping")
    return loaded


def merge_input(command_line: Mapping[str, Any], cli_input: Mapping[str, Any]) -> dict[str, Any]:
    """Options given on the command line override the same top-level keys of the input file."""
    merged = dict(cli_input)
    merged.update(command_line)
    return merged


# --- blobs ----------------------------------------------------------------------------------


def decode_blob(value: str | bytes, path: str, binary_format: BinaryFormat) -> bytes:
    """A blob's bytes: bytes (fileb://, YAML !!binary) as they are, strings per the format."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if binary_format == "raw-in-base64-out":
        return value.encode("utf-8")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParamValidationError([_invalid_base64(path, value)]) from None


def _invalid_base64(path: str, value: str) -> str:
    hint = " (it looks like raw JSON)" if value.lstrip().startswith("{") else ""
    return (
        f"Invalid base64 for parameter {path}{hint}; the value is not shown, it may hold "
        "patient data. With the default --cli-binary-format base64, a blob given as a string "
        "must be base64: pass raw JSON with --cli-binary-format raw-in-base64-out, or read the "
        "bytes from a file with fileb://."
    )


def update_params(params: Mapping[str, Any], binary_format: BinaryFormat) -> UpdateParams:
    """Validated parameters -> the request, blobs decoded."""
    params = prune(params, UPDATE_INPUT)
    validate(params, UPDATE_INPUT)
    updates = params["updateImageSetMetadataUpdates"]
    dicom = updates.get("DICOMUpdates")
    return UpdateParams(
        datastore_id=params["datastoreId"],
        image_set_id=params["imageSetId"],
        latest_version_id=params["latestVersionId"],
        force=bool(params.get("force", False)),
        include_study_image_sets=bool(params.get("includeStudyImageSets", False)),
        dicom_updates=None if dicom is None else _dicom_updates(dicom, binary_format),
        revert_to_version_id=updates.get("revertToVersionId"),
    )


def _dicom_updates(dicom: Mapping[str, Any], binary_format: BinaryFormat) -> DicomUpdates:
    prefix = "updateImageSetMetadataUpdates.DICOMUpdates."

    def blob(name: str) -> bytes | None:
        value = dicom.get(name)
        return None if value is None else decode_blob(value, prefix + name, binary_format)

    return DicomUpdates(blob("updatableAttributes"), blob("removableAttributes"))
