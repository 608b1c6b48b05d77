"""The AWS CLI page's update-image-set-metadata examples, as printed, through our CLI on the demo.

Each command is the page's text with `aws medical-imaging` replaced by `imaging-proxy`, plus only
`--endpoint-url` and a principal; its `metadata-updates.json` is the page's, in the working
folder. The demo seeds the page's data store, image sets, series and instances. Every example
but 4 names version 1, so each test first rewinds the two image sets to version 1.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.admin import EmulatorAdmin
from devstack.examples import (
    DEMO_DATASTORE_ID,
    EXAMPLE_SERIES,
    EXAMPLE_SERIES_7,
    EXAMPLE_SOP_7,
    IMAGE_SET_A,
    IMAGE_SET_B,
    rewind_examples,
)
from tests.e2e.conftest import Stack, image_set_metadata

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).with_name("imaging-proxy"))
PAGE_FILES = Path(__file__).parents[1] / "emulator" / "cli_examples"
"""Each example's metadata-updates.json, verbatim from the page."""
OUTPUT_KEYS = {
    "latestVersionId",
    "imageSetWorkflowStatus",
    "updatedAt",
    "imageSetId",
    "imageSetState",
    "createdAt",
    "datastoreId",
}
"""The keys of every example's printed Output."""


@dataclass(frozen=True)
class PageExample:
    """One example: the command as the page prints it, its file, and the version it reaches."""

    name: str
    command: str
    updates_file: str | None
    documented_version: str


EXAMPLES = [
    PageExample(
        "v2-1",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id ea92b0d8838c72a3f25d00d13616f87e \
    --latest-version-id 1 \
    --cli-binary-format raw-in-base64-out \
    --update-image-set-metadata-updates file://metadata-updates.json""",
        "example1.json",
        "2",
    ),
    PageExample(
        "v2-2",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id ea92b0d8838c72a3f25d00d13616f87e \
    --latest-version-id 1 \
    --cli-binary-format raw-in-base64-out \
    --update-image-set-metadata-updates file://metadata-updates.json""",
        "example2.json",
        "2",
    ),
    PageExample(
        "v2-3",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id ea92b0d8838c72a3f25d00d13616f87e \
    --latest-version-id 1 \
    --cli-binary-format raw-in-base64-out \
    --update-image-set-metadata-updates file://metadata-updates.json""",
        "example3.json",
        "2",
    ),
    PageExample(
        "v2-4",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id 53d5fdb05ca4d46ac7ca64b06545c66e \
    --latest-version-id 3 \
    --cli-binary-format raw-in-base64-out \
    --update-image-set-metadata-updates '{"revertToVersionId": "1"}'""",
        None,
        "4",
    ),
    PageExample(
        "v2-5",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id 53d5fdb05ca4d46ac7ca64b06545c66e \
    --latest-version-id 1 \
    --cli-binary-format raw-in-base64-out \
    --force \
    --update-image-set-metadata-updates file://metadata-updates.json""",
        "example5.json",
        "2",
    ),
    PageExample(
        "v2-6",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id 53d5fdb05ca4d46ac7ca64b06545c66e \
    --latest-version-id 1 \
    --cli-binary-format raw-in-base64-out \
    --force \
    --update-image-set-metadata-updates file://metadata-updates.json""",
        "example6.json",
        "2",
    ),
    PageExample(
        "v2-7",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id 53d5fdb05ca4d46ac7ca64b06545c66e \
    --latest-version-id 1 \
    --cli-binary-format raw-in-base64-out \
    --force \
    --update-image-set-metadata-updates file://metadata-updates.json""",
        "example7.json",
        "2",
    ),
    # The v1 page prints "5" as the new version of an update naming version 1: a slip.
    PageExample(
        "v1",
        r"""aws medical-imaging update-image-set-metadata \
    --datastore-id 12345678901234567890123456789012 \
    --image-set-id ea92b0d8838c72a3f25d00d13616f87e \
    --latest-version-id 1 \
    --update-image-set-metadata-updates file://metadata-updates.json""",
        "v1-base64.json",
        "2",
    ),
]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


async def run_as_printed(stack: Stack, command: str, folder: Path) -> Run:
    """The page's command with our CLI, in `folder`, adding only the endpoint and a principal."""
    argv = shlex.split(command.replace("\\\n", " "))  # the shell's line continuation
    assert argv[:2] == ["aws", "medical-imaging"]
    argv = [CLI, *argv[2:], "--endpoint-url", f"http://{stack.endpoint}"]
    argv += ["--dev-principal", "demo-admin"]
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=folder, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
def rewound(stack: Stack) -> Stack:
    """The demo, with the page's image sets back at version 1 as seeded."""
    assert stack.datastore_id == DEMO_DATASTORE_ID
    rewind_examples(EmulatorAdmin(stack.emulator_url), stack.datastore_id)
    return stack


async def advance_to_version_3(stack: Stack, folder: Path) -> None:
    """Example 4 reverts from version 3 (the page's image set had two updates): make them."""
    for version, name in (("1", "FIRST^NAME"), ("2", "SECOND^NAME")):
        document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
        updates = {"DICOMUpdates": {"updatableAttributes": json.dumps(document)}}
        command = shlex.join(
            [
                *("aws", "medical-imaging", "update-image-set-metadata"),
                *("--datastore-id", DEMO_DATASTORE_ID, "--image-set-id", IMAGE_SET_B),
                *("--latest-version-id", version, "--cli-binary-format", "raw-in-base64-out"),
                *("--update-image-set-metadata-updates", json.dumps(updates)),
            ]
        )
        run = await run_as_printed(stack, command, folder)
        assert run.code == 0, run.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
async def test_page_example_runs_as_printed(
    rewound: Stack, healthimaging: Any, tmp_path: Path, example: PageExample
) -> None:
    if example.updates_file:
        shutil.copy(PAGE_FILES / example.updates_file, tmp_path / "metadata-updates.json")
    image_set = IMAGE_SET_B if IMAGE_SET_B in example.command else IMAGE_SET_A
    if example.documented_version == "4":
        await advance_to_version_3(rewound, tmp_path)

    run = await run_as_printed(rewound, example.command, tmp_path)

    assert run.code == 0, run.stderr
    output = json.loads(run.stdout)
    assert set(output) == OUTPUT_KEYS
    assert (output["datastoreId"], output["imageSetId"]) == (DEMO_DATASTORE_ID, image_set)
    assert output["latestVersionId"] == example.documented_version
    # The page prints the submit response (LOCKED); our CLI waits and prints the final state.
    assert (output["imageSetState"], output["imageSetWorkflowStatus"]) == ("ACTIVE", "UPDATED")
    after = await image_set_metadata(healthimaging, DEMO_DATASTORE_ID, image_set)
    assert_effect(example.name, after)


def assert_effect(name: str, document: Any) -> None:
    """What the page says each example does, read back from the emulator."""
    series = document["Study"]["Series"]
    instance = series[EXAMPLE_SERIES]["Instances"].get(EXAMPLE_SERIES, {})
    if name in ("v2-1", "v1"):
        assert document["Patient"]["DICOM"]["PatientName"] == "MX^MX"
    elif name == "v2-2":
        assert "StudyDescription" not in document["Study"]["DICOM"]
    elif name == "v2-3":
        assert EXAMPLE_SERIES not in series[EXAMPLE_SERIES]["Instances"]
        assert len(series[EXAMPLE_SERIES]["Instances"]) == 1
    elif name == "v2-4":
        assert document["Patient"]["DICOM"]["PatientName"] == "CompressedSamples^CT1"
    elif name == "v2-5":
        assert (instance["DICOM"]["001910F9"], instance["DICOMVRs"]["001910F9"]) == ("97", "DS")
    elif name == "v2-6":
        assert instance["DICOM"]["00091001"] == "GE_GENESIS_DD"
    else:
        assert list(series[EXAMPLE_SERIES_7]["Instances"]) == [EXAMPLE_SOP_7[:-1] + "9"]
