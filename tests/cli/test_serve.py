"""Server verbs (`serve.py`) as typed: `emulator` takes its own options, bad settings exit 253;
the command's `--version` and the verbs the server adds through its entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from imaging_proxy_client.cli.main import build_parser

from devstack.processes import free_port
from devstack.servers import EMULATOR_AWS_ENV, start_proxy
from service.cli.serve import settings_from_args

COMMAND = [sys.executable, "-m", "imaging_proxy_client.cli.main"]


def test_version_names_both_distributions_of_the_checkout() -> None:
    done = subprocess.run([*COMMAND, "--version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[:2] == ["imaging-proxy-client/0.1.0", "imaging-proxy/0.1.0"], done.stdout
    assert words[2].startswith("Python/")


def test_the_servers_verbs_join_the_clients_command() -> None:
    done = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")}
    assert {"update-image-set-metadata", "serve", "policy", "demo", "emulator"} <= listed


@pytest.mark.parametrize(("argv", "loads_the_server"), [(["list-updates"], False), ([], True)])
def test_a_client_verb_loads_none_of_the_servers_verbs(
    argv: list[str], loads_the_server: bool
) -> None:
    script = (
        "import sys; from imaging_proxy_client.cli.main import build_parser\n"
        f"build_parser({argv!r})\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(roots & {'service', 'devstack', 'emulator'}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (done.stdout.strip() != "[]") is loads_the_server, done.stdout


def test_a_verb_that_takes_no_extra_arguments_refuses_them() -> None:
    done = subprocess.run([*COMMAND, "serve", "--no-such-option"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unrecognized arguments: --no-such-option" in done.stderr


def test_the_redis_urls_come_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGING_PROXY_JOURNAL_URL", "redis://:secret@127.0.0.1:6379/0")
    monkeypatch.setenv("IMAGING_PROXY_BUDGET_URL", "redis://:other@127.0.0.1:6379/1")
    parser = build_parser(["serve"])
    settings = settings_from_args(parser.parse_args(["serve"]))
    assert settings.journal.url == "redis://:secret@127.0.0.1:6379/0"
    assert settings.budget.url == "redis://:other@127.0.0.1:6379/1"
    given = parser.parse_args(["serve", "--journal", "redis://127.0.0.1:6380/2"])
    assert settings_from_args(given).journal.url == "redis://127.0.0.1:6380/2"


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
        ('[audit]\nformat = "xml"\n', 'audit.format: expected "json" or "fhir"'),
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
    [line] = [json.loads(line) for line in done.stderr.splitlines()]  # one line, and JSON
    assert line["event"] == "bad_configuration" and message in line["error"]


def test_serve_refuses_an_audit_trail_it_cannot_write(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "audit.jsonl"
    done = subprocess.run(
        [*COMMAND, "serve", "--insecure-dev-identity", "--audit-path", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **EMULATOR_AWS_ENV},
    )
    assert done.returncode == 253
    last = json.loads(done.stderr.splitlines()[-1])
    assert last["event"] == "cannot_start" and last["error"].startswith("audit.path: cannot")


def _serve_argv(tmp_path: Path, name: str, ports: dict[str, int]) -> list[str]:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        "[server]\n"
        + "".join(f"{key} = {value}\n" for key, value in ports.items())
        + f'[journal]\ndata_dir = "{tmp_path / name}"\n'
    )
    return [
        "--config",
        str(config),
        "--insecure-dev-identity",
        "--endpoint-url",
        "http://127.0.0.1:9",
    ]


@pytest.mark.parametrize("key", ["port", "health_port", "metrics_port"])
def test_a_second_serve_on_a_port_in_use_exits_253_naming_it(tmp_path: Path, key: str) -> None:
    """SO_REUSEPORT is off: the second process does not silently share the first one's port."""
    taken = {"port": free_port(), "health_port": free_port(), "metrics_port": free_port()}
    first, _ = start_proxy(tmp_path, _serve_argv(tmp_path, "first", taken))
    try:
        ports = {"port": 0, key: taken[key]}
        done = subprocess.run(
            [*COMMAND, "serve", *_serve_argv(tmp_path, "second", ports)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **EMULATOR_AWS_ENV},
        )
        assert first.running
    finally:
        first.stop()
    assert done.returncode == 253, done.stderr
    assert f"server.{key}: cannot listen on 127.0.0.1:{taken[key]}" in done.stderr
    assert "Traceback" not in done.stderr
    assert all(json.loads(line) for line in done.stderr.splitlines())  # every line is JSON
    assert "serving" not in done.stdout + done.stderr
