"""Child processes for the demo and the tests: a real OPA server, the emulator, the proxy."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_opa() -> str:
    """The OPA binary: on PATH, else the one `make` installs into .tools/bin."""
    found = shutil.which("opa") or REPO_ROOT / ".tools" / "bin" / "opa"
    if not Path(found).exists():
        raise FileNotFoundError("OPA not found: run `make run` (installs it into .tools/bin)")
    return str(found)


def find_policies() -> Path:
    for candidate in (Path.cwd() / "policies", REPO_ROOT / "policies"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no policies/ directory found")


@dataclass
class Child:
    """A started child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(
    name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Child:
    log_path = log_dir / f"{name}.log"
    log_file: IO[bytes] = log_path.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
    )
    return Child(name, process, log_path)


def wait_until(check: Callable[[], bool], child: Child, timeout: float = 60.0) -> None:
    """Poll `check` until it passes; fail early with the child's log if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            tail = child.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{tail}")
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} not ready after {timeout:g} s (log: {child.log_path})")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except urllib.error.URLError:
        return False


def start_opa(log_dir: Path, port: int, policies: Path | None = None) -> Child:
    argv = [
        find_opa(),
        "run",
        "--server",
        "--addr",
        f"127.0.0.1:{port}",
        "--set",
        "decision_logs.console=true",
        str(policies or find_policies()),
    ]
    child = spawn("opa", argv, log_dir)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), child)
    return child


def start_emulator(log_dir: Path, port: int, extra_args: Sequence[str] = ()) -> tuple[Child, Any]:
    """The emulator as a child; returns it and the ready document it wrote."""
    ready_file = log_dir / "emulator-ready.json"
    ready_file.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ready-file",
        str(ready_file),
        *extra_args,
    ]
    child = spawn("emulator", argv, log_dir)
    wait_until(lambda: bool(read_json(ready_file)), child)
    return child, read_json(ready_file)


def start_proxy(log_dir: Path, args: Sequence[str], env: Mapping[str, str]) -> tuple[Child, int]:
    """`imaging-proxy serve` as a child; returns it and the port it listens on."""
    ready_file = log_dir / "proxy-ready.json"
    ready_file.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "service.cli.main",
        "serve",
        "--ready-file",
        str(ready_file),
        *args,
    ]
    child = spawn("proxy", argv, log_dir, env)
    wait_until(lambda: bool(read_json(ready_file)), child)
    return child, int(read_json(ready_file)["port"])


def read_json(path: Path) -> Any:
    """A JSON document another process writes (raises OSError/ValueError until it is complete)."""
    return json.loads(path.read_text())


def write_json_atomically(path: Path, document: object) -> None:
    """Readers polling for `path` never see it half written."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2))
    temporary.replace(path)
