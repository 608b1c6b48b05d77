"""Local stack: `imaging-proxy serve` children, each with its own settings file and log."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.processes import Child
from devstack.servers import PROXY_COMMAND, start_proxy
from devstack.settings import Sections, write_toml


@dataclass(frozen=True)
class ProxyProcess:
    """One running `imaging-proxy serve`."""

    child: Child
    port: int
    """Its gRPC port on 127.0.0.1."""
    log_dir: Path
    metrics_port: int = 0
    """Its Prometheus port, when the starter chose one (0: not known)."""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, an OOM kill, a lost node)."""
        self.child.kill()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the proxy's own shutdown order runs."""
        self.child.stop(timeout)

    def metrics(self) -> str:
        """Its Prometheus text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    @property
    def audit_path(self) -> Path:
        """Its audit trail (`start_proxy` names it after the child's log)."""
        return self.log_dir / f"{self.child.name}.audit.jsonl"

    def audit_records(self) -> list[dict[str, Any]]:
        """Its audit records so far (a line still being written is left for the next read)."""
        if not self.audit_path.exists():
            return []
        lines = self.audit_path.read_text().split("\n")[:-1]
        return [json.loads(line) for line in lines]

    def log_events(self) -> list[dict[str, Any]]:
        """Its structured log lines (JSON objects) so far."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events


def launch_proxy(
    log_dir: Path,
    args: Sequence[str],
    settings: Sections | None = None,
    env: Mapping[str, str] | None = None,
    *,
    name: str = "proxy",
    command: Sequence[str] = PROXY_COMMAND,
    metrics_port: int = 0,
) -> ProxyProcess:
    """`imaging-proxy serve ARGS [--config log_dir/imaging-proxy.toml]`, logging into `log_dir`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config: list[str] = []
    if settings is not None:
        config = ["--config", str(write_toml(log_dir / "imaging-proxy.toml", settings))]
    child, port = start_proxy(log_dir, [*config, *args], env, name=name, command=command)
    return ProxyProcess(child, port, log_dir, metrics_port)
