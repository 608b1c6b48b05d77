"""Local stack: child processes, their logs, readiness waiting and shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from service.cli.readyfile import read_json


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A started child process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL: no shutdown code runs (a crash, an OOM kill, a lost node)."""
        self.process.kill()
        self.process.wait(timeout)


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start `argv` (in `cwd`, default: ours) with stdout and stderr appended to
    `log_dir/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file: IO[bytes] = log_path.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
    )
    log_file.close()  # the child holds its own copy
    return Child(name, process, log_path)


def stop_all(children: Iterable[Child], timeout: float = 10.0) -> None:
    """Stop children in the reverse of their start order (proxies before what they call)."""
    for child in reversed(list(children)):
        child.stop(timeout)


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


def wait_for_json(path: Path, child: Child, timeout: float = 60.0) -> Any:
    """The JSON document `child` writes to `path` once it is ready (e.g. its ready file)."""
    wait_until(lambda: bool(read_json(path)), child, timeout)
    return read_json(path)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except urllib.error.URLError:
        return False


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port` (raises OSError if not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
