"""Volumes as the kubelet writes them (its AtomicWriter), and `$(VAR)` expansion as it does it.

A ConfigMap or Secret volume is a timestamped hidden folder holding the files, a `..data`
symlink to it, and one top-level symlink per entry through `..data`. An update writes a new
folder and renames a new `..data` over the old one (atomic); files are never rewritten in place.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

DATA = "..data"


def volume_files(source: Mapping[str, Any], data: Mapping[str, bytes]) -> dict[str, bytes]:
    """The files of a configMap/secret volume: every key, or its `items` (key → path) only."""
    items = source.get("items")
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items}


def object_data(document: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's or Secret's keys and their bytes."""
    binary = {k: base64.b64decode(v) for k, v in (document.get("binaryData") or {}).items()}
    if document["kind"] == "Secret":
        data = {k: base64.b64decode(v) for k, v in (document.get("data") or {}).items()}
        text = {k: v.encode() for k, v in (document.get("stringData") or {}).items()}
        return {**data, **text}
    return {**{k: v.encode() for k, v in (document.get("data") or {}).items()}, **binary}


def write_volume(mount: Path, files: Mapping[str, bytes], mode: int, group: int | None) -> Path:
    """Write (or update) the volume at `mount` the kubelet's way; the new hidden folder."""
    mount.mkdir(parents=True, exist_ok=True)
    folder = mount / datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    while folder.exists():  # two writes within a microsecond
        folder = folder.with_name(folder.name + "0")
    for relative, content in files.items():
        path = folder / PurePosixPath(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
        if group is not None:
            os.chown(path, 0, group)
    for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        os.chmod(directory, 0o755)
    old = os.readlink(mount / DATA) if (mount / DATA).is_symlink() else None
    staged = mount / "..data_tmp"
    staged.unlink(missing_ok=True)
    staged.symlink_to(folder.name)
    staged.rename(mount / DATA)  # the atomic swap
    tops = {PurePosixPath(relative).parts[0] for relative in files}
    for entry in mount.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()  # a key the update removed
    for top in tops:
        link = mount / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{top}")
    if old is not None:
        shutil.rmtree(mount / old)
    return folder


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in env values, command and args: a known variable is
    replaced, an unknown reference is left as written, and `$$` is a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def container_env(
    container: Mapping[str, Any], objects: Mapping[tuple[str, str], Mapping[str, bytes]]
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: in order, each value expanded
    against those before it; `valueFrom` read from the named Secret or ConfigMap."""
    env: dict[str, str] = {}
    for variable in container.get("env") or []:
        if "value" in variable:
            env[variable["name"]] = expand(variable["value"], env)
            continue
        source = variable["valueFrom"]
        kind, ref = (
            ("Secret", source["secretKeyRef"])
            if "secretKeyRef" in source
            else ("ConfigMap", source["configMapKeyRef"])
        )
        env[variable["name"]] = objects[(kind, ref["name"])][ref["key"]].decode()
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args, expanded (an image's ENTRYPOINT comes first when `command` is absent)."""
    return [expand(part, env) for part in [*(container.get("command") or []), *container["args"]]]


def mounts(
    pod: Mapping[str, Any], container: Mapping[str, Any]
) -> Sequence[tuple[str, Mapping[str, Any]]]:
    """(mountPath, volume) of each of the container's mounts."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return [(m["mountPath"], volumes[m["name"]]) for m in container.get("volumeMounts") or []]
