"""Parameters: JSON/shorthand, file:// and fileb://, blobs per --cli-binary-format, input files."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from imaging_proxy_client.cli.errors import ParamError, ParamValidationError
from imaging_proxy_client.cli.parameters import params, shapes

DOCUMENT = '{"SchemaVersion":1.1,"Patient":{"DICOM":{"PatientName":"MX^MX"}}}'
# The v1 page's example blob: the same document, base64 encoded.
V1_BLOB = "eyJTY2hlbWFWZXJzaW9uIjoxLjEsIlBhdGllbnQiOnsiRElDT00iOnsiUGF0aWVudE5hbWUiOiJNWF5NWCJ9fX0="
IDS = {"datastoreId": "d" * 32, "imageSetId": "i" * 32, "latestVersionId": "1"}
FLAG = "--update-image-set-metadata-updates"


def updates_from(argument: str) -> dict[str, Any]:
    return params.parse_structure(FLAG, params.resolve_argument(FLAG, argument))


def request(updates: dict[str, Any], fmt: params.BinaryFormat = "base64") -> params.UpdateParams:
    return params.update_params({**IDS, "updateImageSetMetadataUpdates": updates}, fmt)


def test_the_v1_example_blob_is_base64_by_default() -> None:
    updates = updates_from(json.dumps({"DICOMUpdates": {"updatableAttributes": V1_BLOB}}))
    update = request(updates)
    assert update.dicom_updates == params.DicomUpdates(DOCUMENT.encode(), None)


def test_raw_in_base64_out_takes_the_string_literally_as_in_the_v2_examples(tmp_path: Path) -> None:
    path = tmp_path / "metadata-updates.json"
    path.write_text(json.dumps({"DICOMUpdates": {"updatableAttributes": DOCUMENT}}))
    update = request(updates_from(f"file://{path}"), "raw-in-base64-out")
    assert update.dicom_updates is not None
    assert update.dicom_updates.updatable_attributes == DOCUMENT.encode()


def test_raw_json_under_the_default_format_is_a_clear_error_without_the_value() -> None:
    updates = updates_from(json.dumps({"DICOMUpdates": {"updatableAttributes": DOCUMENT}}))
    with pytest.raises(ParamValidationError) as raised:
        request(updates)
    message = str(raised.value)
    assert "Invalid base64" in message
    assert "raw-in-base64-out" in message
    assert "MX^MX" not in message
    assert raised.value.exit_code == 252


@pytest.mark.parametrize("fmt", params.BINARY_FORMATS)
def test_fileb_is_always_raw_bytes(tmp_path: Path, fmt: params.BinaryFormat) -> None:
    blob = tmp_path / "patient.json"
    blob.write_bytes(DOCUMENT.encode())
    updates = updates_from(f"DICOMUpdates={{updatableAttributes@=fileb://{blob}}}")
    update = request(updates, fmt)
    assert update.dicom_updates is not None
    assert update.dicom_updates.updatable_attributes == DOCUMENT.encode()


def test_file_contents_follow_the_binary_format(tmp_path: Path) -> None:
    blob = tmp_path / "patient.b64"
    blob.write_text(V1_BLOB)
    updates = updates_from(f"DICOMUpdates={{removableAttributes@=file://{blob}}}")
    update = request(updates)
    assert update.dicom_updates == params.DicomUpdates(None, DOCUMENT.encode())


def test_shorthand_revert() -> None:
    update = request(updates_from("revertToVersionId=1"))
    assert (update.revert_to_version_id, update.dicom_updates) == ("1", None)


def test_missing_file_is_a_parameter_error() -> None:
    with pytest.raises(ParamError) as raised:
        updates_from("file:///nonexistent/updates.json")
    assert str(raised.value).startswith(
        f"Error parsing parameter '{FLAG}': Unable to load paramfile"
    )


def test_invalid_json_does_not_echo_the_document() -> None:
    with pytest.raises(ParamError) as raised:
        updates_from('{"DICOMUpdates": {"updatableAttributes": "SECRET^NAME"')
    assert "Invalid JSON" in str(raised.value)
    assert "SECRET" not in str(raised.value)


def test_duplicate_json_keys_are_rejected() -> None:
    with pytest.raises(ParamError, match="duplicate key"):
        updates_from('{"revertToVersionId": "1", "revertToVersionId": "2"}')


def test_validation_reports_every_problem_as_botocore_words_it() -> None:
    bad = {
        "datastoreId": "d" * 32,
        "bogus": 1,
        "force": "yes",
        "updateImageSetMetadataUpdates": {
            "DICOMUpdates": {"x": "1", "updatableAttributes": {"nested": 1}},
            "revertToVersionId": "1",
        },
    }
    with pytest.raises(ParamValidationError) as raised:
        params.update_params(bad, "raw-in-base64-out")
    assert raised.value.problems == (
        'Missing required parameter in input: "imageSetId"',
        'Missing required parameter in input: "latestVersionId"',
        'Unknown parameter in input: "bogus", must be one of: datastoreId, imageSetId, '
        "latestVersionId, force, includeStudyImageSets, updateImageSetMetadataUpdates",
        "Invalid type for parameter force, type: <class 'str'>, valid types: <class 'bool'>",
        'Unknown parameter in updateImageSetMetadataUpdates.DICOMUpdates: "x", must be one of: '
        "removableAttributes, updatableAttributes",
        "Invalid type for parameter updateImageSetMetadataUpdates.DICOMUpdates."
        "updatableAttributes, type: <class 'dict'>, valid types: <class 'bytes'>, "
        "<class 'bytearray'>, file-like object",
        "Invalid number of parameters set for tagged union structure "
        "updateImageSetMetadataUpdates. Can only set one of the following keys: DICOMUpdates, "
        "revertToVersionId.",
    )


def test_an_empty_union_must_set_a_member() -> None:
    with pytest.raises(ParamValidationError, match="Must set one of the following keys"):
        request({})


def test_command_line_overrides_the_input_file() -> None:
    cli_input = params.load_cli_input(json.dumps({**IDS, "force": True}), None)
    merged = params.merge_input({"latestVersionId": "7", "force": False}, cli_input)
    assert merged == {**IDS, "latestVersionId": "7", "force": False}


def test_yaml_input_binary_values_are_raw_bytes() -> None:
    text = yaml.safe_dump(
        {**IDS, "updateImageSetMetadataUpdates": {"DICOMUpdates": {"updatableAttributes": b"{}"}}}
    )
    assert "!!binary" in text
    update = params.update_params(params.load_cli_input(None, text), "base64")
    assert update.dicom_updates == params.DicomUpdates(b"{}", None)


def test_json_and_yaml_input_together_are_rejected() -> None:
    with pytest.raises(ParamError, match="may not be specified along with --cli-input-yaml"):
        params.load_cli_input("{}", "{}")


def test_input_skeleton_matches_the_aws_cli() -> None:
    # `aws medical-imaging update-image-set-metadata --generate-cli-skeleton` (awscli 1.46)
    assert shapes.input_skeleton(shapes.UPDATE_INPUT) == {
        "datastoreId": "",
        "imageSetId": "",
        "latestVersionId": "",
        "force": True,
        "includeStudyImageSets": True,
        "updateImageSetMetadataUpdates": {
            "DICOMUpdates": {"removableAttributes": None, "updatableAttributes": None},
            "revertToVersionId": "",
        },
    }


def test_yaml_skeleton_loads_to_the_json_skeleton() -> None:
    loaded = yaml.safe_load(shapes.yaml_input_skeleton(shapes.UPDATE_INPUT))
    assert loaded == shapes.input_skeleton(shapes.UPDATE_INPUT)


def test_a_filled_in_skeleton_prunes_unset_members() -> None:
    skeleton = shapes.input_skeleton(shapes.UPDATE_INPUT)
    skeleton.update(IDS, force=False, includeStudyImageSets=False)
    skeleton["updateImageSetMetadataUpdates"]["DICOMUpdates"]["updatableAttributes"] = V1_BLOB
    update = params.update_params(skeleton, "base64")
    assert update.dicom_updates == params.DicomUpdates(DOCUMENT.encode(), None)
    assert update.revert_to_version_id is None


def test_base64_round_trip_of_the_documented_blob() -> None:
    assert base64.b64decode(V1_BLOB).decode() == DOCUMENT
