"""Request parameters of the client verbs (sans-IO): shapes, file references, blobs, skeletons.

Mirrors what the AWS CLI v2 does between the command line and botocore: `file://` and `fileb://`
references, JSON or shorthand for structures, `--cli-input-json`/`--cli-input-yaml` merged under
the command line's own options, blobs decoded by `--cli-binary-format`, botocore's validation
report, and `--generate-cli-skeleton`.
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

from service.cli.client_errors import ParamError, ParamValidationError
from service.cli.shorthand import ShorthandParseError, ShorthandParser

Kind = Literal["string", "boolean", "blob", "timestamp", "structure", "union", "list"]
BinaryFormat = Literal["base64", "raw-in-base64-out"]
BINARY_FORMATS: tuple[BinaryFormat, ...] = ("base64", "raw-in-base64-out")


@dataclass(frozen=True)
class Shape:
    """One member of an operation's input or output, as the botocore model describes it."""

    name: str
    kind: Kind
    doc: str = ""
    required: bool = False
    members: tuple[Shape, ...] = ()

    @property
    def cli_name(self) -> str:
        """`latestVersionId` -> `--latest-version-id` (botocore's xform_name)."""
        out = "".join(f"-{c.lower()}" if c.isupper() else c for c in self.name)
        return "--" + out

    def member(self, name: str) -> Shape | None:
        return next((m for m in self.members if m.name == name), None)


FORCE_DOC = (
    "Setting this flag will force the UpdateImageSetMetadata operation for the following "
    "attributes: Tag.StudyInstanceUID, Tag.SeriesInstanceUID, Tag.SOPInstanceUID, and "
    "Tag.StudyID; adding, removing, or updating private tags for an individual SOP Instance."
)
UPDATES_SHAPE = Shape(
    "updateImageSetMetadataUpdates",
    "union",
    "Update image set metadata updates.",
    required=True,
    members=(
        Shape(
            "DICOMUpdates",
            "structure",
            "The object containing removableAttributes and updatableAttributes.",
            members=(
                Shape(
                    "removableAttributes",
                    "blob",
                    "The DICOM tags to be removed from ImageSetMetadata.",
                ),
                Shape(
                    "updatableAttributes",
                    "blob",
                    "The DICOM tags that need to be updated in ImageSetMetadata.",
                ),
            ),
        ),
        Shape(
            "revertToVersionId",
            "string",
            "Specifies the previous image set version ID to revert the current image set back to.",
        ),
    ),
)
UPDATE_INPUT = Shape(
    "input",
    "structure",
    members=(
        Shape("datastoreId", "string", "The data store identifier.", required=True),
        Shape("imageSetId", "string", "The image set identifier.", required=True),
        Shape(
            "latestVersionId", "string", "The latest image set version identifier.", required=True
        ),
        Shape("force", "boolean", FORCE_DOC),
        Shape(
            "includeStudyImageSets",
            "boolean",
            "Flag to apply the metadata updates to all image sets in the same Study as the "
            "requested image set ID.",
        ),
        UPDATES_SHAPE,
    ),
)
WATCH_INPUT = Shape(
    "input",
    "structure",
    members=(
        Shape(
            "operationId",
            "string",
            "The operation to re-attach to, as printed by update-image-set-metadata.",
            required=True,
        ),
    ),
)
IMAGE_SET_STATE_OUTPUT = Shape(
    "output",
    "structure",
    members=(
        Shape("datastoreId", "string"),
        Shape("imageSetId", "string"),
        Shape("latestVersionId", "string"),
        Shape("imageSetState", "string"),
        Shape("imageSetWorkflowStatus", "string"),
        Shape("createdAt", "timestamp"),
        Shape("updatedAt", "timestamp"),
        Shape("message", "string"),
    ),
)
_CHANGE_STRINGS = ("action", "level", "seriesInstanceUid", "sopInstanceUid", "tag", "keyword", "vr")
_CHANGE = Shape(
    "change",
    "structure",
    members=(
        *(Shape(name, "string") for name in _CHANGE_STRINGS),
        Shape("private", "boolean"),
        Shape("requiresForce", "boolean"),
        Shape("categories", "list", members=(Shape("category", "string"),)),
    ),
)
EVALUATION_OUTPUT = Shape(
    "output",
    "structure",
    members=(
        Shape(
            "decision",
            "structure",
            members=(
                Shape("allow", "boolean"),
                Shape("decisionId", "string"),
                Shape("reasons", "list", members=(Shape("reason", "string"),)),
            ),
        ),
        Shape("kind", "string"),
        Shape("force", "boolean"),
        Shape("includeStudyImageSets", "boolean"),
        Shape("revertToVersionId", "string"),
        Shape("changes", "list", members=(_CHANGE,)),
    ),
)


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


# --- validation (botocore's ParamValidator, without echoing values) -------------------------


def validate(params: Mapping[str, Any], shape: Shape) -> None:
    """Raise ParamValidationError with every problem, worded as botocore words them."""
    problems: list[str] = []
    _validate_structure(params, shape, "", problems)
    if problems:
        raise ParamValidationError(problems)


def prune(value: Any, shape: Shape) -> Any:
    """Drop members left unset in a skeleton: nulls, and empty union members (`""`, `{}`)."""
    if not isinstance(value, dict) or shape.kind not in ("structure", "union"):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        member = shape.member(key)
        if item is None or (shape.kind == "union" and item in ("", {})):
            continue
        out[key] = item if member is None else prune(item, member)
    return out


def _validate(value: Any, shape: Shape, path: str, problems: list[str]) -> None:
    if shape.kind in ("structure", "union"):
        _validate_structure(value, shape, path, problems)
    elif shape.kind == "string" and not isinstance(value, str):
        problems.append(_invalid_type(path, value, "<class 'str'>"))
    elif shape.kind == "boolean" and not isinstance(value, bool):
        problems.append(_invalid_type(path, value, "<class 'bool'>"))
    elif shape.kind == "blob" and not isinstance(value, str | bytes | bytearray):
        valid = "<class 'bytes'>, <class 'bytearray'>, file-like object"
        problems.append(_invalid_type(path, value, valid))


def _invalid_type(path: str, value: Any, valid: str) -> str:
    return f"Invalid type for parameter {path}, type: {type(value)}, valid types: {valid}"


def _validate_structure(value: Any, shape: Shape, path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(_invalid_type(path or "input", value, "<class 'dict'>"))
        return
    names = [m.name for m in shape.members]
    for member in shape.members:
        if member.required and member.name not in value:
            problems.append(f'Missing required parameter in {path or "input"}: "{member.name}"')
    for key, item in value.items():
        found = shape.member(key)
        if found is None:
            allowed = ", ".join(names)
            problems.append(
                f'Unknown parameter in {path or "input"}: "{key}", must be one of: {allowed}'
            )
        else:
            _validate(item, found, f"{path}.{key}" if path else key, problems)
    if shape.kind == "union":
        _validate_union(value, shape, path, problems)


def _validate_union(value: dict[str, Any], shape: Shape, path: str, problems: list[str]) -> None:
    keys = ", ".join(m.name for m in shape.members)
    set_count = sum(1 for m in shape.members if value.get(m.name) is not None)
    if set_count > 1:
        problems.append(
            f"Invalid number of parameters set for tagged union structure {path}. "
            f"Can only set one of the following keys: {keys}."
        )
    elif set_count == 0:
        problems.append(
            f"Must set one of the following keys for tagged union structure {path}: {keys}."
        )


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


# --- skeletons ------------------------------------------------------------------------------


def input_skeleton(shape: Shape) -> dict[str, Any]:
    """`--generate-cli-skeleton input`: every member with a placeholder, as botocore makes it."""
    return {m.name: _placeholder(m, use_names=False) for m in shape.members}


def output_skeleton(shape: Shape) -> dict[str, Any]:
    """`--generate-cli-skeleton output`: a sample response whose strings are the member names."""
    return {m.name: _placeholder(m, use_names=True) for m in shape.members}


def _placeholder(shape: Shape, use_names: bool) -> Any:
    if shape.kind in ("structure", "union"):
        return {m.name: _placeholder(m, use_names) for m in shape.members}
    if shape.kind == "list":
        return [_placeholder(m, use_names) for m in shape.members]
    placeholders: dict[str, Any] = {
        "string": shape.name if use_names else "",
        "boolean": True,
        "blob": None,
        "timestamp": 0.0,
    }
    return placeholders[shape.kind]


def yaml_input_skeleton(shape: Shape) -> str:
    """`--generate-cli-skeleton yaml-input`: the input skeleton as YAML, each member documented."""
    return "".join(_yaml_lines(member, 0) for member in shape.members)


def _yaml_lines(shape: Shape, depth: int) -> str:
    indent = "  " * depth
    doc = ("[REQUIRED] " if shape.required else "") + shape.doc
    if shape.kind in ("structure", "union"):
        nested = "".join(_yaml_lines(m, depth + 1) for m in shape.members)
        return f"{indent}{shape.name}:  # {doc}\n{nested}"
    value = {"string": "''", "boolean": "true", "blob": "null"}[shape.kind]
    return f"{indent}{shape.name}: {value}  # {doc}\n"
