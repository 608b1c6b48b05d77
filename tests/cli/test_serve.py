"""Server verbs (`serve.py`) as typed: `emulator` takes its own options, bad settings exit 253."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "service.cli.main"]


def test_emulator_help_lists_its_options() -> None:
    done = subprocess.run([*COMMAND, "emulator", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout
    assert "--seed" in done.stdout


def test_emulator_starts_on_a_free_port(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [*COMMAND, "emulator", "--port", "0", "--ready-file", str(ready), "--no-quotas"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), process.stderr.read() if process.poll() is not None else "timeout"
        assert json.loads(ready.read_text())["url"].startswith("http://127.0.0.1:")
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[server]\nport = "fifty"\n', "server.port: expected a number"),
        ("[server]\nport = 50062.5\n", "server.port: expected a whole number"),
        ("[opa]\ntimeout_seconds = -3\n", "opa.timeout_seconds: must be > 0"),
    ],
)
def test_serve_refuses_bad_settings_without_a_traceback(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(toml)
    done = subprocess.run(
        [*COMMAND, "serve", "--config", str(config), "--insecure-dev-identity"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 253
    assert message in done.stderr
    assert "Traceback" not in done.stderr
