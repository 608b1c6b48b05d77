"""Checks raw JSON response bodies against the model's output shapes (botocore parses leniently)."""

from __future__ import annotations

import base64
import json
from typing import Any

from botocore.model import OperationModel, Shape, StructureShape

_SCALARS: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "long": int,
    "timestamp": (int, float),
    "double": (int, float),
    "float": (int, float),
    "blob": str,
}


def problems_in_body(op: OperationModel, body: bytes) -> list[str]:
    shape = op.output_shape
    if shape is None or shape.serialization.get("payload"):
        return []
    return problems(shape, json.loads(body or b"{}"), op.name, body_only=True)


def problems(shape: Shape, value: Any, path: str, *, body_only: bool = False) -> list[str]:
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        return _structure(shape, value, path, body_only)
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for item in value for p in problems(shape.member, item, f"{path}[]")]  # type: ignore[attr-defined]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        return [p for k, v in value.items() for p in problems(shape.value, v, f"{path}.{k}")]  # type: ignore[attr-defined]
    return _scalar(shape, value, path)


def _structure(shape: StructureShape, value: Any, path: str, body_only: bool) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object"]
    body_members = {
        n: m
        for n, m in shape.members.items()
        if not (body_only and m.serialization.get("location"))
    }
    found = [f"{path}.{k}: not in the model" for k in value if k not in body_members]
    found += [
        f"{path}.{n}: required but missing"
        for n in shape.required_members
        if n in body_members and n not in value
    ]
    for name, member_value in value.items():
        if name in body_members:
            found += problems(body_members[name], member_value, f"{path}.{name}")
    return found


def _scalar(shape: Shape, value: Any, path: str) -> list[str]:
    expected = _SCALARS.get(shape.type_name)
    if expected is None:
        return []
    if not isinstance(value, expected) or (
        shape.type_name != "boolean" and isinstance(value, bool)
    ):
        return [f"{path}: expected {shape.type_name}"]
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        return [f"{path}: {value!r} is not one of the enum values"]
    if shape.type_name == "blob":
        base64.b64decode(str(value), validate=True)
    return []
