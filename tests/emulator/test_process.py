"""`python -m emulator` as a real process: ready file, seeding, `seed` verb, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulator.conftest import DEMO_DATASTORE, boto3_client, sample

EMULATOR = [sys.executable, "-m", "emulator"]


def _wait_for_json(path: Path, process: subprocess.Popen[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise TimeoutError("the emulator never wrote its ready file")


@pytest.fixture(scope="module")
def demo_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[str], Any]]:
    """The demo's seeding: CT_small and MR_small, non-primary, in the CLI examples' data store."""
    ready_file = tmp_path_factory.mktemp("process") / "ready.json"
    argv = [
        *EMULATOR,
        "--host", "127.0.0.1",
        "--port", "0",
        "--seed", str(sample("CT_small.dcm")),
        "--seed", str(sample("MR_small.dcm")),
        "--datastore-id", DEMO_DATASTORE,
        "--non-primary",
        "--update-delay", "0",
        "--no-quotas",
        "--ready-file", str(ready_file),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, _wait_for_json(ready_file, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_ready_file_names_url_datastore_and_one_image_set_per_study(
    demo_process: tuple[subprocess.Popen[str], Any],
) -> None:
    _, ready = demo_process
    assert ready["url"].startswith("http://127.0.0.1:")
    assert ready["datastoreId"] == DEMO_DATASTORE
    assert len(ready["imageSetIds"]) == 2
    client = boto3_client(ready["url"])
    for image_set_id in ready["imageSetIds"]:
        got = client.get_image_set(datastoreId=DEMO_DATASTORE, imageSetId=image_set_id)
        assert (got["isPrimary"], got["imageSetState"]) == (False, "ACTIVE")


def test_seed_verb_imports_into_the_running_emulator(
    demo_process: tuple[subprocess.Popen[str], Any],
) -> None:
    _, ready = demo_process
    result = subprocess.run(
        [
            *EMULATOR,
            "seed",
            "--url",
            ready["url"],
            "--datastore-id",
            DEMO_DATASTORE,
            str(sample("CT_small.dcm")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["datastoreId"] == DEMO_DATASTORE and len(created["imageSetIds"]) == 1
    got = boto3_client(ready["url"]).get_image_set(
        datastoreId=DEMO_DATASTORE, imageSetId=created["imageSetIds"][0]
    )
    assert got["isPrimary"] is True


def test_seed_verb_prints_documents_without_a_server() -> None:
    result = subprocess.run(
        [*EMULATOR, "seed", "--print", str(sample("MR_small.dcm"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (document,) = json.loads(result.stdout).values()
    assert document["Patient"]["DICOM"]["PatientID"] == "4MR1"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_it_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    ready_file = tmp_path / "ready.json"
    argv = [*EMULATOR, "--port", "0", "--ready-file", str(ready_file)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = _wait_for_json(ready_file, process)
        assert len(ready["datastoreId"]) == 32 and ready["imageSetIds"] == []
        process.send_signal(sig)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_missing_seed_path_is_reported(tmp_path: Path) -> None:
    result = subprocess.run(
        [*EMULATOR, "--port", "0", "--seed", str(tmp_path / "nothing-here")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr
