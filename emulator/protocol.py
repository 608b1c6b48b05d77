"""The REST-JSON wire format, driven by botocore's `medical-imaging` service model (server side)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from botocore.model import OperationModel, Shape, StructureShape

from emulator.exceptions import ValidationException

# ---------------------------------------------------------------- requests


def parse_request(
    op: OperationModel,
    uri_params: Mapping[str, str],
    query: Mapping[str, list[str]],
    body: bytes,
) -> dict[str, Any]:
    """Wire request → parameters keyed by member name, validated against the model."""
    shape = op.input_shape
    if shape is None:
        return {}
    params: dict[str, Any] = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri" and wire in uri_params:
            params[name] = uri_params[wire]
        elif location == "querystring" and wire in query:
            params[name] = _query_value(member, query[wire], name)
    params.update(_body_params(shape, body))
    validate(shape, params, "")
    return params


def _query_value(shape: Shape, values: list[str], name: str) -> Any:
    if shape.type_name == "list":
        return values
    raw = values[-1]
    if shape.type_name == "boolean":
        if raw not in ("true", "false"):
            raise ValidationException(f"{name} must be true or false")
        return raw == "true"
    if shape.type_name == "integer":
        try:
            return int(raw)
        except ValueError:
            raise ValidationException(f"{name} must be an integer") from None
    return raw


def _body_params(shape: StructureShape, body: bytes) -> dict[str, Any]:
    payload = shape.serialization.get("payload")
    if payload is not None:
        member = shape.members[payload]
        if member.type_name == "blob":
            return {payload: body}
        doc = _load_json(body)
        return {} if doc is None else {payload: _from_json(member, doc, payload)}
    body_members = {
        n: m for n, m in shape.members.items() if m.serialization.get("location") is None
    }
    if not body_members:
        return {}
    doc = _load_json(body) or {}
    if not isinstance(doc, dict):
        raise ValidationException("request body must be a JSON object")
    return {n: _from_json(m, doc[n], n) for n, m in body_members.items() if n in doc}


def _load_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValidationException("request body is not valid JSON") from None


def _from_json(shape: Shape, value: Any, path: str) -> Any:
    """JSON value → Python value: blobs are base64 on the wire, timestamps epoch seconds."""
    kind = shape.type_name
    if value is None:
        return None
    if kind == "structure":
        if not isinstance(value, dict):
            raise ValidationException(f"{path} must be an object")
        members = shape.members  # type: ignore[attr-defined]
        unknown = sorted(set(value) - set(members))
        if unknown:
            raise ValidationException(f"{path} has unknown members: {', '.join(unknown)}")
        return {k: _from_json(members[k], v, f"{path}.{k}") for k, v in value.items()}
    if kind == "list":
        if not isinstance(value, list):
            raise ValidationException(f"{path} must be a list")
        return [_from_json(shape.member, v, f"{path}[]") for v in value]  # type: ignore[attr-defined]
    if kind == "map":
        if not isinstance(value, dict):
            raise ValidationException(f"{path} must be an object")
        return {str(k): _from_json(shape.value, v, f"{path}.{k}") for k, v in value.items()}  # type: ignore[attr-defined]
    return _scalar_from_json(kind, value, path)


def _scalar_from_json(kind: str, value: Any, path: str) -> Any:
    if kind == "blob":
        try:
            return base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationException(f"{path} is not valid base64") from None
    if kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationException(f"{path} must be epoch seconds")
        return float(value)
    expected: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "boolean": bool,
        "integer": int,
        "long": int,
        "double": (int, float),
        "float": (int, float),
    }
    wanted = expected.get(kind)
    if wanted is not None and not isinstance(value, wanted):
        raise ValidationException(f"{path} has the wrong type")
    return value


# ---------------------------------------------------------------- validation


def validate(shape: Shape, value: Any, path: str) -> None:
    """The model's constraints (required, union, min/max, pattern, enum), enforced server side."""
    if value is None:
        return
    kind = shape.type_name
    if kind == "structure":
        _validate_structure(shape, value, path)  # type: ignore[arg-type]
    elif kind == "list":
        _check_range(shape, len(value), path, "length")
        for item in value:
            validate(shape.member, item, f"{path}[]")  # type: ignore[attr-defined]
    elif kind == "map":
        for item in value.values():
            validate(shape.value, item, path)  # type: ignore[attr-defined]
    elif kind in ("string", "blob"):
        _check_range(shape, len(value), path, "length")
        _check_string(shape, value, path)
    elif kind in ("integer", "long"):
        _check_range(shape, value, path, "value")


def _validate_structure(shape: StructureShape, value: dict[str, Any], path: str) -> None:
    prefix = f"{path}." if path else ""
    missing = [n for n in shape.required_members if value.get(n) is None]
    if missing:
        raise ValidationException(f"missing required parameter {prefix}{missing[0]}")
    present = [n for n, v in value.items() if v is not None]
    if shape.metadata.get("union") and len(present) != 1:
        raise ValidationException(f"{path or shape.name} must set exactly one member")
    for name in present:
        validate(shape.members[name], value[name], f"{prefix}{name}")


def _check_range(shape: Shape, measured: int, path: str, what: str) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and measured < low:
        raise ValidationException(f"{path} {what} must be at least {low}")
    if high is not None and measured > high:
        raise ValidationException(f"{path} {what} must be at most {high}")


def _check_string(shape: Shape, value: Any, path: str) -> None:
    if not isinstance(value, str):
        return
    pattern = shape.metadata.get("pattern")
    if pattern is not None and _compiled(pattern).fullmatch(value) is None:
        raise ValidationException(f"{path} does not match the pattern {pattern}")
    enum: list[str] = shape.metadata.get("enum", [])
    if enum and value not in enum:
        raise ValidationException(f"{path} must be one of {', '.join(enum)}")


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    # The model's patterns are Java-flavoured; `\p{ASCII}` is the only construct Python lacks.
    return re.compile(pattern.replace(r"\p{ASCII}", r"[\x00-\x7f]"), re.DOTALL)


# ---------------------------------------------------------------- responses


def serialize_response(
    op: OperationModel, result: Mapping[str, Any]
) -> tuple[dict[str, str], bytes]:
    """Result keyed by member name → (headers, body) as the model lays them out."""
    shape = op.output_shape
    if shape is None:
        return {"Content-Type": "application/json"}, b"{}"
    headers = {"Content-Type": "application/json"}
    for name, member in shape.members.items():
        if member.serialization.get("location") == "header" and result.get(name) is not None:
            headers[member.serialization["name"]] = str(result[name])
    payload = shape.serialization.get("payload")
    if payload is not None and shape.members[payload].type_name == "blob":
        return headers, bytes(result[payload])
    doc = {
        n: _to_json(m, result[n])
        for n, m in shape.members.items()
        if m.serialization.get("location") is None and result.get(n) is not None
    }
    return headers, json.dumps(doc).encode()


def _to_json(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if kind == "structure":
        members = shape.members  # type: ignore[attr-defined]
        return {k: _to_json(members[k], v) for k, v in value.items() if v is not None}
    if kind == "list":
        return [_to_json(shape.member, v) for v in value]  # type: ignore[attr-defined]
    if kind == "map":
        return {k: _to_json(shape.value, v) for k, v in value.items()}  # type: ignore[attr-defined]
    if kind == "blob":
        return base64.b64encode(value).decode()
    if kind == "timestamp":
        return round(value, 3)  # AWS answers with millisecond epoch seconds
    return value
