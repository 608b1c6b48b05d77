"""The real AWS CLI runs the documented update-image-set-metadata examples against the emulator."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.examples import (
    EXAMPLE_SERIES,
    EXAMPLE_SERIES_7,
    EXAMPLE_SOP_7,
    IMAGE_SET_A,
    IMAGE_SET_B,
    rewind_examples,
    seed_examples,
)
from tests.emulator.conftest import (
    DEMO_DATASTORE,
    Emulator,
    metadata,
    settled,
)

AWS = Path(sys.executable).parent / "aws"
# The documented output of every example (values differ, the shape must not).
DOCUMENTED_OUTPUT = {
    "latestVersionId": "2",
    "imageSetWorkflowStatus": "UPDATING",
    "updatedAt": 1680042257.908,
    "imageSetId": IMAGE_SET_A,
    "imageSetState": "LOCKED",
    "createdAt": 1680027126.436,
    "datastoreId": DEMO_DATASTORE,
}
EXAMPLES_DIR = Path(__file__).parent / "cli_examples"


@dataclass(frozen=True)
class Example:
    """One example of the v2 reference page; `updates` is its metadata-updates.json, verbatim."""

    number: int
    image_set_id: str
    updates: str
    latest_version: str = "1"
    force: bool = False

    def updates_argument(self) -> str:
        if self.updates.startswith("{"):
            return self.updates  # example 4 passes its JSON inline
        return f"file://{EXAMPLES_DIR / self.updates}"


V2_EXAMPLES = [
    Example(1, IMAGE_SET_A, "example1.json"),
    Example(2, IMAGE_SET_A, "example2.json"),
    Example(3, IMAGE_SET_A, "example3.json"),
    Example(4, IMAGE_SET_B, '{"revertToVersionId": "1"}', latest_version="3"),
    Example(5, IMAGE_SET_B, "example5.json", force=True),
    Example(6, IMAGE_SET_B, "example6.json", force=True),
    Example(7, IMAGE_SET_B, "example7.json", force=True),
]
V1_BASE64 = Example(0, IMAGE_SET_A, "v1-base64.json")


def aws(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "emulator",
        "AWS_SECRET_ACCESS_KEY": "emulator",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    command = [
        str(AWS),
        "medical-imaging",
        *args,
        "--endpoint-url",
        emulator.url,
        "--output",
        "json",
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def update_args(example: Example) -> list[str]:
    args = [
        "update-image-set-metadata",
        "--datastore-id", DEMO_DATASTORE,
        "--image-set-id", example.image_set_id,
        "--latest-version-id", example.latest_version,
    ]  # fmt: skip
    if example.force:
        args.append("--force")
    return [*args, "--update-image-set-metadata-updates", example.updates_argument()]


def assert_documented_shape(output: dict[str, Any], example: Example) -> None:
    assert set(output) == set(DOCUMENTED_OUTPUT)
    for key, documented in DOCUMENTED_OUTPUT.items():
        assert type(output[key]) is type(documented), key
    expected_version = str(int(example.latest_version) + 1)
    assert (output["imageSetId"], output["datastoreId"], output["latestVersionId"]) == (
        example.image_set_id,
        DEMO_DATASTORE,
        expected_version,
    )
    assert (output["imageSetState"], output["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING")


def test_awscli_v1_has_no_cli_binary_format_option(emulator: Emulator) -> None:
    """AWS CLI 1.x already sends blob strings raw (what v2 calls raw-in-base64-out)."""
    result = aws(emulator, "list-datastores", "--cli-binary-format", "raw-in-base64-out")
    assert result.returncode != 0
    assert "Unknown options: --cli-binary-format" in result.stderr


@pytest.mark.parametrize("example", V2_EXAMPLES, ids=lambda e: f"example{e.number}")
def test_v2_page_example(
    emulator: Emulator, client: Any, example_dicom: Path, example: Example
) -> None:
    emulator.reset_and_seed([example_dicom], image_set_id=example.image_set_id)
    if example.latest_version == "3":
        _advance_to_version_3(client, example.image_set_id)
    result = aws(emulator, *update_args(example))
    assert result.returncode == 0, result.stderr
    assert_documented_shape(json.loads(result.stdout), example)
    final = settled(client, DEMO_DATASTORE, example.image_set_id)
    assert final["imageSetWorkflowStatus"] == "UPDATED", final.get("message")
    _check_effect(example.number, metadata(client, DEMO_DATASTORE, example.image_set_id))


def test_v1_page_base64_example(emulator: Emulator, client: Any, example_dicom: Path) -> None:
    """AWS CLI 1.x base64-encodes the already-base64 string again; the emulator accepts that."""
    example = V1_BASE64
    emulator.reset_and_seed([example_dicom], image_set_id=IMAGE_SET_A)
    result = aws(emulator, *update_args(example))
    assert result.returncode == 0, result.stderr
    assert_documented_shape(json.loads(result.stdout), example)
    settled(client, DEMO_DATASTORE, IMAGE_SET_A)
    assert (
        metadata(client, DEMO_DATASTORE, IMAGE_SET_A)["Patient"]["DICOM"]["PatientName"] == "MX^MX"
    )


def test_cli_reads_back_the_versions(emulator: Emulator, client: Any, example_dicom: Path) -> None:
    emulator.reset_and_seed([example_dicom], image_set_id=IMAGE_SET_B)
    _advance_to_version_3(client, IMAGE_SET_B)
    result = aws(
        emulator,
        "list-image-set-versions",
        "--datastore-id",
        DEMO_DATASTORE,
        "--image-set-id",
        IMAGE_SET_B,
    )
    assert result.returncode == 0, result.stderr
    versions = json.loads(result.stdout)["imageSetPropertiesList"]
    assert [v["versionId"] for v in versions] == ["3", "2", "1"]
    assert {"ImageSetWorkflowStatus", "imageSetState", "versionId", "imageSetId"} <= set(
        versions[0]
    )
    got = aws(
        emulator,
        "get-image-set",
        "--datastore-id",
        DEMO_DATASTORE,
        "--image-set-id",
        IMAGE_SET_B,
        "--version-id",
        "1",
    )
    assert json.loads(got.stdout)["imageSetWorkflowStatus"] == "CREATED"


def _advance_to_version_3(client: Any, image_set_id: str) -> None:
    for version, name in (("1", "FIRST^NAME"), ("2", "SECOND^NAME")):
        document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
        client.update_image_set_metadata(
            datastoreId=DEMO_DATASTORE,
            imageSetId=image_set_id,
            latestVersionId=version,
            updateImageSetMetadataUpdates={
                "DICOMUpdates": {"updatableAttributes": json.dumps(document)}
            },
        )
        settled(client, DEMO_DATASTORE, image_set_id)


def _check_effect(number: int, doc: dict[str, Any]) -> None:
    series = doc["Study"]["Series"]
    instance = series[EXAMPLE_SERIES]["Instances"].get(EXAMPLE_SERIES, {})
    checks: dict[int, Callable[[], bool]] = {
        1: lambda: doc["Patient"]["DICOM"]["PatientName"] == "MX^MX",
        2: lambda: "StudyDescription" not in doc["Study"]["DICOM"],
        3: lambda: EXAMPLE_SERIES not in series[EXAMPLE_SERIES]["Instances"],
        4: lambda: doc["Patient"]["DICOM"]["PatientName"] == "CompressedSamples^CT1",
        5: lambda: (
            (instance["DICOM"]["001910F9"], instance["DICOMVRs"]["001910F9"]) == ("97", "DS")
        ),
        6: lambda: instance["DICOM"]["00091001"] == "GE_GENESIS_DD",
        7: lambda: list(series[EXAMPLE_SERIES_7]["Instances"]) == [EXAMPLE_SOP_7[:-1] + "9"],
    }
    assert checks[number](), f"example {number} did not change the metadata as documented"


@pytest.fixture
def page_image_sets(emulator: Emulator, tmp_path: Path) -> list[str]:
    """A clean account holding the demo's seeds for the page (`devstack.examples`)."""
    emulator.admin("POST", "reset")
    return seed_examples(emulator, DEMO_DATASTORE, tmp_path / "page")


def test_cli_read_calls_and_an_update_on_the_page_image_sets(
    emulator: Emulator, client: Any, page_image_sets: list[str], tmp_path: Path
) -> None:
    """The four read calls and an update, as the README shows them, with the real AWS CLI."""
    target = ["--datastore-id", DEMO_DATASTORE, "--image-set-id", IMAGE_SET_A]
    got = aws(emulator, "get-image-set", *target)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["imageSetState"] == "ACTIVE"
    fetched = aws(emulator, "get-image-set-metadata", *target, str(tmp_path / "m.json.gz"))
    assert fetched.returncode == 0, fetched.stderr
    document = json.loads(gzip.decompress((tmp_path / "m.json.gz").read_bytes()))
    assert document["Study"]["DICOM"]["StudyDescription"] == "CHEST"
    assert len(document["Study"]["Series"][EXAMPLE_SERIES]["Instances"]) == 2
    found = aws(emulator, "search-image-sets", "--datastore-id", DEMO_DATASTORE)
    assert found.returncode == 0, found.stderr
    listed = {s["imageSetId"] for s in json.loads(found.stdout)["imageSetsMetadataSummaries"]}
    assert listed == {IMAGE_SET_A, IMAGE_SET_B}
    updated = aws(emulator, *update_args(V2_EXAMPLES[0]))
    assert updated.returncode == 0, updated.stderr
    settled(client, DEMO_DATASTORE, IMAGE_SET_A)
    versions = aws(emulator, "list-image-set-versions", *target)
    assert versions.returncode == 0, versions.stderr
    listing = json.loads(versions.stdout)["imageSetPropertiesList"]
    assert [v["versionId"] for v in listing] == ["2", "1"]
    operations = [r["operation"] for r in emulator.requests()]
    assert operations[:4] == [
        "GetImageSet",
        "GetImageSetMetadata",
        "SearchImageSets",
        "UpdateImageSetMetadata",
    ]


def test_rewind_puts_the_page_image_set_back_at_version_1(
    emulator: Emulator, client: Any, page_image_sets: list[str]
) -> None:
    """How one demo runs every example: each names version 1, so the admin rewinds."""
    emulator.set_faults(update_stall_rate=1.0)  # the update stays LOCKED until released
    first = aws(emulator, *update_args(V2_EXAMPLES[0]))
    assert first.returncode == 0, first.stderr
    with pytest.raises(urllib.error.HTTPError) as locked:
        rewind_examples(emulator, DEMO_DATASTORE)
    assert locked.value.code == 409
    emulator.set_faults()
    assert emulator.release_stalled() == 1
    settled(client, DEMO_DATASTORE, IMAGE_SET_A)
    stale = aws(emulator, *update_args(V2_EXAMPLES[1]))
    assert "ConflictException" in stale.stderr
    rewind_examples(emulator, DEMO_DATASTORE)
    assert metadata(client, DEMO_DATASTORE, IMAGE_SET_A)["Patient"]["DICOM"]["PatientName"] == (
        "CompressedSamples^CT1"
    )
    again = aws(emulator, *update_args(V2_EXAMPLES[1]))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["latestVersionId"] == "2"
    settled(client, DEMO_DATASTORE, IMAGE_SET_A)
