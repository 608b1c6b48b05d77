"""The CLI as a process against the real stack: the seeds' examples, skeletons, return codes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.e2e.conftest import Stack, image_set_metadata

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).with_name("imaging-proxy"))
RESPONSE_KEYS = {
    "datastoreId",
    "imageSetId",
    "latestVersionId",
    "imageSetState",
    "imageSetWorkflowStatus",
    "createdAt",
    "updatedAt",
}


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def cli(stack: Stack, *args: str, principal: str = "demo-admin") -> Result:
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        "--endpoint-url",
        f"http://{stack.endpoint}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "IMAGING_PROXY_DEV_PRINCIPAL": principal},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def target(stack: Stack, image_set: str, version: str = "1") -> list[str]:
    return [
        "update-image-set-metadata",
        "--datastore-id",
        stack.datastore_id,
        "--image-set-id",
        image_set,
        "--latest-version-id",
        version,
    ]


def updates_file(
    tmp_path: Path, updates: dict[str, Any], name: str = "metadata-updates.json"
) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(updates))
    return f"file://{path}"


def raw(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


def assert_finished(result: Result, stack: Stack, image_set: str, version: str) -> None:
    assert result.code == 0, result.stderr
    response = result.json()
    assert set(response) == RESPONSE_KEYS
    assert (response["datastoreId"], response["imageSetId"]) == (stack.datastore_id, image_set)
    assert response["latestVersionId"] == version
    assert (response["imageSetState"], response["imageSetWorkflowStatus"]) == ("ACTIVE", "UPDATED")
    assert isinstance(response["createdAt"], float) and isinstance(response["updatedAt"], float)


async def fresh(
    stack: Stack, healthimaging: Any, wanted: Callable[[Any], bool] = lambda _: True
) -> tuple[str, Any]:
    """An unused image set (and its metadata) that fits `wanted`."""
    while True:
        image_set = stack.take_image_set()
        metadata = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
        if wanted(metadata):
            return image_set, metadata


def first_instance(metadata: Any) -> tuple[str, str, dict[str, Any]]:
    series_uid, series = next(iter(metadata["Study"]["Series"].items()))
    instance_uid, instance = next(iter(series["Instances"].items()))
    return series_uid, instance_uid, instance["DICOM"]


def instance_document(series: str, instance: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"SchemaVersion": 1.1, "Study": {"Series": {series: {"Instances": {instance: body}}}}}


# --- the v2 page's seven examples and the v1 page's example ---------------------------------


async def test_example_1_insert_or_update_an_attribute(
    stack: Stack, healthimaging: Any, tmp_path: Path
) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "MX^MX"}}}
    updates = updates_file(tmp_path, {"DICOMUpdates": {"updatableAttributes": raw(document)}})

    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        updates,
    )

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert after["Patient"]["DICOM"]["PatientName"] == "MX^MX"


def removable_study_attribute(metadata: Any) -> tuple[str, str] | None:
    for key, value in metadata["Study"]["DICOM"].items():
        if isinstance(value, str) and key not in ("StudyInstanceUID", "StudyID"):
            return key, value
    return None


async def test_example_2_remove_an_attribute(
    stack: Stack, healthimaging: Any, tmp_path: Path
) -> None:
    image_set, before = await fresh(
        stack, healthimaging, lambda m: removable_study_attribute(m) is not None
    )
    found = removable_study_attribute(before)
    assert found is not None
    key, value = found
    document = {"SchemaVersion": 1.1, "Study": {"DICOM": {key: value}}}
    updates = updates_file(tmp_path, {"DICOMUpdates": {"removableAttributes": raw(document)}})

    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        updates,
    )

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert key not in after["Study"]["DICOM"]


def seed_two_instances(stack: Stack, tmp_path: Path) -> str:
    """The seeds hold one instance per series and an image set keeps at least one: add one."""
    sample = get_testdata_file("CT_small.dcm")
    assert isinstance(sample, str)
    source = pydicom.dcmread(sample)
    paths = []
    for n in (1, 2):
        source.SOPInstanceUID = f"{source.SOPInstanceUID}.{n}"
        paths.append(str(tmp_path / f"instance{n}.dcm"))
        source.save_as(paths[-1])
    body = {"paths": paths, "datastoreId": stack.datastore_id}
    answer = call_emulator(stack, "/_emulator/seed", body, "POST")
    [image_set] = answer["imageSetIds"]
    return str(image_set)


def several_instances(metadata: Any) -> bool:
    return any(len(s["Instances"]) > 1 for s in metadata["Study"]["Series"].values())


async def test_example_3_remove_an_instance(
    stack: Stack, healthimaging: Any, tmp_path: Path
) -> None:
    image_set = seed_two_instances(stack, tmp_path)
    before = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert several_instances(before)
    series_uid, instance_uid = next(
        (uid, next(iter(s["Instances"])))
        for uid, s in before["Study"]["Series"].items()
        if len(s["Instances"]) > 1
    )
    document = instance_document(series_uid, instance_uid, {})
    updates = updates_file(tmp_path, {"DICOMUpdates": {"removableAttributes": raw(document)}})

    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        updates,
    )

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    series = after["Study"]["Series"].get(series_uid, {"Instances": {}})
    assert instance_uid not in series["Instances"]


async def test_example_4_revert_to_a_previous_version(stack: Stack, healthimaging: Any) -> None:
    image_set, before = await fresh(stack, healthimaging)
    original = before["Patient"]["DICOM"]["PatientName"]
    for version, name in (("1", "FIRST^EDIT"), ("2", "SECOND^EDIT")):
        document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
        edit = json.dumps({"DICOMUpdates": {"updatableAttributes": raw(document)}})
        done = await cli(
            stack,
            *target(stack, image_set, version),
            "--cli-binary-format",
            "raw-in-base64-out",
            "--update-image-set-metadata-updates",
            edit,
        )
        assert done.code == 0, done.stderr

    result = await cli(
        stack,
        *target(stack, image_set, "3"),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        '{"revertToVersionId": "1"}',
    )

    assert_finished(result, stack, image_set, "4")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert after["Patient"]["DICOM"]["PatientName"] == original


async def test_example_5_add_a_private_element_to_an_instance(
    stack: Stack, healthimaging: Any, tmp_path: Path
) -> None:
    image_set, before = await fresh(stack, healthimaging)
    series_uid, instance_uid, _ = first_instance(before)
    body = {"DICOM": {"001910F9": "97"}, "DICOMVRs": {"001910F9": "DS"}}
    document = instance_document(series_uid, instance_uid, body)
    updates = updates_file(tmp_path, {"DICOMUpdates": {"updatableAttributes": raw(document)}})

    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--force",
        "--update-image-set-metadata-updates",
        updates,
    )

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert str(first_instance(after)[2]["001910F9"]).startswith("97")


def has_private_00091001(metadata: Any) -> bool:
    return "00091001" in first_instance(metadata)[2]


async def test_example_6_update_a_private_element(
    stack: Stack, healthimaging: Any, tmp_path: Path
) -> None:
    image_set, before = await fresh(stack, healthimaging, has_private_00091001)
    series_uid, instance_uid, _ = first_instance(before)
    document = instance_document(series_uid, instance_uid, {"DICOM": {"00091001": "GE_GENESIS_DD"}})
    updates = updates_file(tmp_path, {"DICOMUpdates": {"updatableAttributes": raw(document)}})

    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--force",
        "--update-image-set-metadata-updates",
        updates,
    )

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert first_instance(after)[2]["00091001"] == "GE_GENESIS_DD"


async def test_example_7_update_a_sop_instance_uid_with_force(
    stack: Stack, healthimaging: Any, tmp_path: Path
) -> None:
    image_set, before = await fresh(stack, healthimaging)
    series_uid, instance_uid, _ = first_instance(before)
    new_uid = instance_uid[:-1] + ("9" if instance_uid[-1] != "9" else "8")
    document = instance_document(series_uid, instance_uid, {"DICOM": {"SOPInstanceUID": new_uid}})
    updates = updates_file(tmp_path, {"DICOMUpdates": {"updatableAttributes": raw(document)}})

    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--force",
        "--update-image-set-metadata-updates",
        updates,
    )

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert new_uid in json.dumps(after)


async def test_v1_example_base64_blob_by_default(
    stack: Stack, healthimaging: Any, tmp_path: Path
) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    blob = (
        "eyJTY2hlbWFWZXJzaW9uIjoxLjEsIlBhdGllbnQiOnsiRElDT00iOnsiUGF0aWVudE5hbWUiOiJNWF5NWCJ9fX0="
    )
    updates = updates_file(tmp_path, {"DICOMUpdates": {"updatableAttributes": blob}})

    result = await cli(
        stack, *target(stack, image_set), "--update-image-set-metadata-updates", updates
    )

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert after["Patient"]["DICOM"]["PatientName"] == "MX^MX"


# --- behaviours -----------------------------------------------------------------------------


def patient_name(name: str) -> str:
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": name}}}
    return json.dumps({"DICOMUpdates": {"updatableAttributes": raw(document)}})


async def test_no_wait_prints_the_submit_response_as_the_aws_cli(
    stack: Stack, healthimaging: Any
) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    result = await cli(
        stack,
        *target(stack, image_set),
        "--no-wait",
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        patient_name("NO^WAIT"),
    )
    assert result.code == 0, result.stderr
    response = result.json()
    assert set(response) == RESPONSE_KEYS
    assert (response["imageSetState"], response["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING")
    assert response["latestVersionId"] == "2"


async def test_text_output_and_query(stack: Stack, healthimaging: Any) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        patient_name("TEXT^QUERY"),
        "--output",
        "text",
        "--query",
        "[latestVersionId, imageSetWorkflowStatus]",
    )
    assert (result.code, result.stdout) == (0, "2\tUPDATED\n")
    assert "finished: ACTIVE/UPDATED" in result.stderr  # plain progress lines off a terminal


async def test_skeleton_round_trip(stack: Stack, healthimaging: Any, tmp_path: Path) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    generated = await cli(stack, "update-image-set-metadata", "--generate-cli-skeleton", "input")
    assert generated.code == 0
    skeleton = generated.json()
    document = {"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "SKELETON^TRIP"}}}
    skeleton.update(datastoreId=stack.datastore_id, imageSetId=image_set, latestVersionId="1")
    skeleton.update(force=False, includeStudyImageSets=False)
    updates = skeleton["updateImageSetMetadataUpdates"]
    del updates["revertToVersionId"]
    updates["DICOMUpdates"] = {
        "updatableAttributes": base64.b64encode(raw(document).encode()).decode()
    }
    path = tmp_path / "input.json"
    path.write_text(json.dumps(skeleton))

    result = await cli(stack, "update-image-set-metadata", "--cli-input-json", f"file://{path}")

    assert_finished(result, stack, image_set, "2")
    after = await image_set_metadata(healthimaging, stack.datastore_id, image_set)
    assert after["Patient"]["DICOM"]["PatientName"] == "SKELETON^TRIP"


async def test_evaluate_update_prints_the_decision_and_changes(
    stack: Stack, healthimaging: Any
) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    args = [
        "evaluate-update",
        *target(stack, image_set)[1:],
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        patient_name("DRY^RUN"),
    ]
    allowed = await cli(stack, *args)
    # demo-editor holds a role here, so the policy judges the dry run (a caller without any role
    # is refused before its document is read: PERMISSION_DENIED, see docs/SECURITY.md)
    denied = await cli(stack, *args, principal="demo-editor")

    assert (allowed.code, denied.code) == (0, 0)
    assert allowed.json()["decision"]["allow"] is True
    assert denied.json()["decision"]["allow"] is False
    assert denied.json()["decision"]["decisionId"]
    [change] = allowed.json()["changes"]
    assert (change["tag"], change["keyword"], change["level"]) == (
        "00100010",
        "PatientName",
        "patient",
    )
    assert not [
        r
        for r in stack.requests()
        if r.get("imageSetId") == image_set and r["operation"] == "UpdateImageSetMetadata"
    ]


# --- return codes ---------------------------------------------------------------------------


async def test_policy_denial_is_254_with_decision_id(stack: Stack, healthimaging: Any) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    result = await cli(
        stack,
        *target(stack, image_set),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        patient_name("DENIED^VIEWER"),
        principal="demo-viewer",
    )
    assert (result.code, result.stdout) == (254, "")
    assert (
        "An error occurred (PolicyDeniedException) when calling the UpdateImageSetMetadata "
        "operation:" in result.stderr
    )
    assert "decision id: " in result.stderr


async def test_stale_version_is_254(stack: Stack, healthimaging: Any) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    result = await cli(
        stack,
        *target(stack, image_set, "7"),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        patient_name("STALE^VERSION"),
    )
    assert result.code == 254, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "An error occurred (ConflictException) when calling the UpdateImageSetMetadata operation: "
    )


async def test_unknown_image_set_is_resource_not_found_254(stack: Stack) -> None:
    result = await cli(
        stack,
        *target(stack, "0" * 32),
        "--cli-binary-format",
        "raw-in-base64-out",
        "--update-image-set-metadata-updates",
        patient_name("NO^SUCH"),
    )
    assert result.code == 254, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "An error occurred (ResourceNotFoundException) when calling the UpdateImageSetMetadata "
        "operation: "
    )


async def test_internal_server_error_is_named_after_the_retries(
    stack: Stack, healthimaging: Any
) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    with faults(stack, error_rate=1.0, operations=["UpdateImageSetMetadata"]):
        result = await cli(
            stack,
            *target(stack, image_set),
            "--cli-binary-format",
            "raw-in-base64-out",
            "--update-image-set-metadata-updates",
            patient_name("NOT^APPLIED"),
        )
    assert result.code == 254, result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        "An error occurred (InternalServerException) when calling the UpdateImageSetMetadata "
        "operation: "
    )
    assert "the update was not applied" in result.stderr


async def test_raw_json_without_raw_in_base64_out_is_252(stack: Stack, healthimaging: Any) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    result = await cli(
        stack, *target(stack, image_set), "--update-image-set-metadata-updates", patient_name("X^Y")
    )
    assert result.code == 252
    assert "Invalid base64" in result.stderr and "X^Y" not in result.stderr


async def test_bad_configuration_is_253(stack: Stack, tmp_path: Path) -> None:
    result = await cli(
        stack,
        "watch-update",
        "--operation-id",
        "x",
        "--client-cert",
        str(tmp_path / "c.pem"),
        "--client-key",
        str(tmp_path / "k.pem"),
    )
    assert result.code == 253


async def test_unreachable_proxy_is_255(stack: Stack) -> None:
    process = await asyncio.create_subprocess_exec(
        CLI,
        "watch-update",
        "--operation-id",
        "x",
        "--endpoint-url",
        "http://127.0.0.1:1",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "IMAGING_PROXY_MAX_ATTEMPTS": "2"},
    )
    _, err = await process.communicate()
    assert process.returncode == 255
    assert b"Could not connect to the endpoint URL" in err


@contextmanager
def faults(stack: Stack, **knobs: Any) -> Iterator[None]:
    call_emulator(stack, "/_emulator/faults", knobs, "PUT")
    try:
        yield
    finally:
        call_emulator(stack, "/_emulator/faults", {}, "PUT")
        call_emulator(stack, "/_emulator/release-stalled", {}, "POST")


def call_emulator(stack: Stack, path: str, body: dict[str, Any], method: str) -> Any:
    request = urllib.request.Request(
        stack.emulator_url + path,
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


async def test_update_failed_is_254_with_the_final_state(stack: Stack, healthimaging: Any) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    with faults(stack, update_failure_rate=1.0):
        result = await cli(
            stack,
            *target(stack, image_set),
            "--cli-binary-format",
            "raw-in-base64-out",
            "--update-image-set-metadata-updates",
            patient_name("WILL^FAIL"),
        )
    assert result.code == 254, result.stderr
    assert result.json()["imageSetWorkflowStatus"] == "UPDATE_FAILED"
    assert (
        "An error occurred (UPDATE_FAILED) when calling the UpdateImageSetMetadata operation"
        in result.stderr
    )


WITHOUT_IDENTITY = {k: v for k, v in os.environ.items() if not k.startswith("IMAGING_PROXY_")}


async def test_ctrl_c_is_130_and_watch_update_re_attaches(stack: Stack, healthimaging: Any) -> None:
    image_set, _ = await fresh(stack, healthimaging)
    with faults(stack, update_stall_rate=1.0):
        process = await asyncio.create_subprocess_exec(
            CLI,
            *target(stack, image_set),
            "--endpoint-url",
            f"http://{stack.endpoint}",
            "--cli-binary-format",
            "raw-in-base64-out",
            "--update-image-set-metadata-updates",
            patient_name("CTRL^C"),
            "--dev-principal",  # on the command line: the hint must repeat it
            "demo-admin",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=WITHOUT_IDENTITY,
        )
        assert process.stderr is not None
        seen = b""
        while b"submitted:" not in seen:
            line = await asyncio.wait_for(process.stderr.readline(), 60)
            assert line, seen
            seen += line
        process.send_signal(signal.SIGINT)
        _, err = await process.communicate()
        assert process.returncode == 130, err
        message = err.decode()
        assert "The update goes on" in message
        hint = next(line for line in message.splitlines() if line.startswith("Re-attach with: "))
    # Leaving `faults` released the stalled update; the hint, run as printed, follows it.
    command = shlex.split(hint.removeprefix("Re-attach with: "))
    again = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=WITHOUT_IDENTITY,
    )  # fmt: skip
    out, err = await again.communicate()
    assert again.returncode is not None
    assert_finished(Result(again.returncode, out.decode(), err.decode()), stack, image_set, "2")
