"""Local stack: the four servers as children (OPA, the emulator, the proxy, redis-server)."""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from devstack.processes import (
    Child,
    accepts,
    free_port,
    http_ok,
    spawn,
    wait_for_json,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EMULATOR_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "emulator",
    "AWS_SECRET_ACCESS_KEY": "emulator",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""Fake credentials: the emulator ignores signatures; botocore still wants something to sign."""
PROXY_COMMAND = ("-m", "imaging_proxy_client.cli.main")
"""How `python` runs `imaging-proxy`; a wrapper (a profiler) goes in front of it."""
OPA_DOWNLOAD = "https://www.openpolicyagent.org/docs#running-opa"


def find_opa(explicit: str | Path | None = None) -> str:
    """The OPA binary: `explicit` (`demo --opa`), else `opa` on PATH, else a checkout's
    .tools/bin/opa (where `make` installs it)."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"OPA not found at --opa {explicit}")
        return str(explicit)
    checkout = REPO_ROOT / ".tools" / "bin" / "opa"
    found = shutil.which("opa") or (str(checkout) if checkout.is_file() else None)
    if found is None:
        raise FileNotFoundError(
            "OPA not found: give --opa PATH, put `opa` on PATH, or build .tools/bin/opa in a "
            f"checkout (`make run` does); release binaries: {OPA_DOWNLOAD}"
        )
    return found


def find_policies() -> Path:
    """The policy folder: a checkout's policies/, else the copy the wheel ships as package data."""
    checkout = REPO_ROOT / "policies"
    if checkout.is_dir():
        return checkout
    packaged = files("devstack").joinpath("policies")
    if isinstance(packaged, Path) and packaged.is_dir():  # an installed wheel is a folder
        return packaged
    raise FileNotFoundError("no policies found: give --policies DIR")


def start_opa(
    log_dir: Path,
    port: int,
    policies: Sequence[Path] = (),
    args: Sequence[str] = (),
    *,
    decision_log: bool = True,
    http_health: bool = True,
    opa: str | Path | None = None,
) -> Child:
    """A real OPA server on 127.0.0.1:`port` loading `policies` (default: `find_policies()`),
    reloading them when they change (--watch: a grant added to data.json needs no restart).

    `opa` is the binary (default: `find_opa()`). Ready when /health answers 200, or
    (`http_health=False`, e.g. OPA serving TLS, whose HTTP probe would need client settings)
    when it accepts TCP connections.
    """
    argv = [find_opa(opa), "run", "--server", "--watch", "--addr", f"127.0.0.1:{port}", *args]
    if decision_log:
        argv += ["--set", "decision_logs.console=true"]
    loaded = [str(path) for path in policies] or [str(find_policies())]
    child = spawn("opa", [*argv, *loaded], log_dir)
    if http_health:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), child)
    else:
        wait_until(lambda: accepts(port), child)
    return child


@dataclass(frozen=True)
class EmulatorProcess:
    """A running `python -m emulator` and what its ready file says."""

    child: Child
    url: str
    datastore_id: str
    image_set_ids: tuple[str, ...]


def start_emulator(log_dir: Path, args: Sequence[str] = (), port: int = 0) -> EmulatorProcess:
    """The emulator on 127.0.0.1:`port` (0: any free port) with these options."""
    ready_file = log_dir / "emulator-ready.json"
    ready_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "emulator", "--host", "127.0.0.1", "--port", str(port)]
    child = spawn("emulator", [*argv, "--ready-file", str(ready_file), *args], log_dir)
    ready = wait_for_json(ready_file, child)
    return EmulatorProcess(child, ready["url"], ready["datastoreId"], tuple(ready["imageSetIds"]))


def start_proxy(
    log_dir: Path,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    name: str = "proxy",
    command: Sequence[str] = PROXY_COMMAND,
) -> tuple[Child, int]:
    """`imaging-proxy serve ARGS` as a child (run by `python COMMAND`); it and its gRPC port."""
    ready_file = log_dir / "proxy-ready.json"
    ready_file.unlink(missing_ok=True)
    audit = ["--audit-path", str(log_dir / f"{name}.audit.jsonl")]  # `args` may name another
    argv = [sys.executable, *command, "serve", "--ready-file", str(ready_file), *audit, *args]
    child = spawn(name, argv, log_dir, {**EMULATOR_AWS_ENV, **(env or {})})
    return child, int(wait_for_json(ready_file, child)["port"])


def start_redis(log_dir: Path, name: str = "redis") -> tuple[Child, str]:
    """A fresh redis-server on 127.0.0.1 without persistence; it and its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise FileNotFoundError("redis-server not found: `make redis` installs it")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = spawn(name, argv, log_dir)
    wait_until(lambda: _pong(port), child)
    return child, f"redis://127.0.0.1:{port}/0"


def _pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
