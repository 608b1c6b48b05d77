"""The client verbs' operation shapes (sans-IO): botocore's validation report and skeletons.

The input and output members of UpdateImageSetMetadata, WatchUpdate and EvaluateUpdate as the
AWS CLI's botocore model describes them; `validate` words its problems as botocore's
ParamValidator does (without echoing values) and the skeletons are `--generate-cli-skeleton`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from imaging_proxy_client.cli.errors import ParamValidationError

Kind = Literal["string", "boolean", "blob", "timestamp", "structure", "union", "list", "integer"]


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
LIST_INPUT = Shape(
    "input",
    "structure",
    members=(
        Shape("principal", "string", "Only this caller's operations (default: all you may see)."),
        Shape("datastoreId", "string", "Only operations on this data store."),
        Shape("imageSetId", "string", "Only operations on this image set."),
        Shape("state", "string", "Only operations in this state (queued, submitted, ...)."),
        Shape("maxResults", "integer", "Operations per page: 1 to 1000 (default 100)."),
        Shape("nextToken", "string", "The nextToken of the previous page."),
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
