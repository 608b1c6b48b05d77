"""The demo's contract by server reflection alone, through the real grpcurl and ghz binaries."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests.support.stack import Stack, patient_name_update

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "imaging.metadata.v1.MetadataUpdateService"
PRINCIPAL = "demo-admin"


def tool(name: str) -> str:
    """A Go tool `make tools` pins into .tools/bin (or the one on PATH)."""
    found = shutil.which(name) or REPO_ROOT / ".tools" / "bin" / name
    if not Path(found).exists():
        pytest.fail(f"{name} not found: `make tools` installs the pinned version")
    return str(found)


def grpcurl(stack: Stack, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [tool("grpcurl"), "-plaintext", "-H", f"x-dev-principal: {PRINCIPAL}"]
    argv += [*(("-d", "@") if data is not None else ()), stack.endpoint, *args]
    return subprocess.run(argv, input=data, capture_output=True, text=True, timeout=60)


def described(stack: Stack, symbol: str) -> str:
    completed = grpcurl(stack, "describe", symbol)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def evaluate_json(stack: Stack) -> str:
    request = patient_name_update(stack, stack.take_image_set(), "DOE^REFLECTED")
    return json_format.MessageToJson(request)


def test_grpcurl_lists_the_services(stack: Stack) -> None:
    listed = grpcurl(stack, "list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    methods = grpcurl(stack, "list", SERVICE).stdout.split()
    assert f"{SERVICE}.EvaluateUpdate" in methods


def test_grpcurl_describes_a_method(stack: Stack) -> None:
    """The symbol grpcio-reflection alone cannot resolve (grpc/grpc#34743)."""
    text = described(stack, f"{SERVICE}.EvaluateUpdate")
    assert f"{SERVICE}.EvaluateUpdate is a method" in text
    assert "rpc EvaluateUpdate ( .imaging.metadata.v1.UpdateImageSetMetadataRequest )" in text


def test_grpcurl_describes_the_service_a_message_and_a_field(stack: Stack) -> None:
    assert "rpc UpdateImageSetMetadata" in described(stack, SERVICE)
    message = described(stack, "imaging.metadata.v1.DICOMUpdates")
    assert "optional bytes updatable_attributes = 1;" in message
    field = described(stack, "imaging.metadata.v1.DICOMUpdates.updatable_attributes")
    assert "is a field" in field


def test_an_unknown_method_stays_unknown(stack: Stack) -> None:
    completed = grpcurl(stack, "describe", f"{SERVICE}.NoSuchMethod")
    assert completed.returncode != 0
    assert "Symbol not found" in completed.stderr


def test_grpcurl_calls_a_method_by_reflection(stack: Stack) -> None:
    completed = grpcurl(stack, f"{SERVICE}/EvaluateUpdate", data=evaluate_json(stack))
    assert completed.returncode == 0, completed.stderr
    answer: dict[str, Any] = json.loads(completed.stdout)
    assert answer["decision"]["allow"] is True
    assert [change["keyword"] for change in answer["changes"]] == ["PatientName"]


def test_ghz_runs_by_reflection(stack: Stack, tmp_path: Path) -> None:
    """No --proto nor --protoset: ghz reads the contract from the server, as a user's would."""
    data = tmp_path / "evaluate.json"
    data.write_text(evaluate_json(stack))
    argv = [tool("ghz"), "--insecure", "--call", f"{SERVICE}/EvaluateUpdate"]
    argv += ["--data-file", str(data), "--metadata", json.dumps({"x-dev-principal": PRINCIPAL})]
    argv += ["-n", "20", "-c", "2", "--format", "json", stack.endpoint]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    summary: dict[str, Any] = json.loads(completed.stdout)
    assert summary["count"] == 20
    assert summary["statusCodeDistribution"] == {"OK": 20}


def readme_ghz_command() -> list[str]:
    """The ghz command README.md shows, as its words (continuation lines joined)."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("ghz "))
    command = ""
    for line in lines[start:]:
        command += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    return shlex.split(command)


def ghz_summary(argv: list[str]) -> dict[str, Any]:
    completed = subprocess.run(
        [*argv, "--format", "json"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert completed.returncode == 0, completed.stderr
    summary: dict[str, Any] = json.loads(completed.stdout)
    return summary


def test_the_readmes_ghz_command_runs_as_printed(stack: Stack) -> None:
    """Its request file is shipped, and ghz's default 50 at once from one caller all succeed."""
    words = readme_ghz_command()
    assert words[-1] == "127.0.0.1:50051" and "--data-file" in words
    summary = ghz_summary([tool("ghz"), *words[1:-1], stack.endpoint])
    assert summary["statusCodeDistribution"] == {"OK": summary["count"]}
    assert summary["count"] == int(words[words.index("-n") + 1])


def test_a_busy_caller_at_32_at_once_is_slowed_not_refused(stack: Stack, tmp_path: Path) -> None:
    """Issue 18: ghz -c 32 from one principal got 739 of 2,000 RESOURCE_EXHAUSTED; now none."""
    data = tmp_path / "evaluate.json"
    data.write_text(evaluate_json(stack))
    argv = [tool("ghz"), "--insecure", "--call", f"{SERVICE}/EvaluateUpdate"]
    argv += ["--data-file", str(data), "--metadata", json.dumps({"x-dev-principal": PRINCIPAL})]
    summary = ghz_summary([*argv, "-c", "32", "-n", "320", stack.endpoint])
    assert summary["statusCodeDistribution"] == {"OK": 320}
