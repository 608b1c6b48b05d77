"""The shorthand port parses exactly as the AWS CLI's own parser (installed as a dev dependency)."""

from __future__ import annotations

from pathlib import Path

import pytest
from awscli.shorthand import (  # type: ignore[import-untyped]
    ShorthandParseError as AwsShorthandParseError,
)
from awscli.shorthand import ShorthandParser as AwsShorthandParser
from imaging_proxy_client.cli.parameters.params import load_paramfile
from imaging_proxy_client.cli.parameters.shorthand import ShorthandParseError, ShorthandParser

SAME_AS_AWS = [
    "DICOMUpdates={updatableAttributes=eyJTY2hlbWFWZXJzaW9uIjoxLjF9}",
    "DICOMUpdates={removableAttributes=eyJhIjoxfQ==,updatableAttributes=eyJiIjoyfQ==}",
    "revertToVersionId=1",
    "revertToVersionId = 3 ",
    'DICOMUpdates={updatableAttributes=\'{"SchemaVersion":1.1,"Patient":{}}\'}',
    'DICOMUpdates={updatableAttributes="{\\"SchemaVersion\\":1.1}"}',
    "a=b,c=d",
    "a=b,c,d",
    "a=[b,c],d={e=f,g=[h]}",
    "a=b\\,c",
    "a=",
    "=b",
]


@pytest.mark.parametrize("value", SAME_AS_AWS)
def test_parses_like_the_aws_cli(value: str) -> None:
    assert ShorthandParser().parse(value) == AwsShorthandParser().parse(value)


@pytest.mark.parametrize("value", ["a", "a=b,a=c", "DICOMUpdates={x=1", "a=[b,c", "a='it''s'"])
def test_rejects_what_the_aws_cli_rejects_with_the_same_message(value: str) -> None:
    with pytest.raises(AwsShorthandParseError) as theirs:
        AwsShorthandParser().parse(value)
    with pytest.raises(ShorthandParseError) as ours:
        ShorthandParser().parse(value)
    assert str(ours.value) == str(theirs.value)


def test_at_equals_reads_a_value_from_a_file(tmp_path: Path) -> None:
    blob = tmp_path / "blob.json"
    blob.write_bytes(b'{"SchemaVersion": 1.1}')
    parser = ShorthandParser(load_paramfile)

    parsed = parser.parse(f"DICOMUpdates={{updatableAttributes@=fileb://{blob}}}")

    assert parsed == {"DICOMUpdates": {"updatableAttributes": b'{"SchemaVersion": 1.1}'}}
    assert parser.parse(f"revertToVersionId@=file://{blob}") == {
        "revertToVersionId": '{"SchemaVersion": 1.1}'
    }


def test_without_at_a_file_reference_stays_text(tmp_path: Path) -> None:
    parsed = ShorthandParser(load_paramfile).parse("revertToVersionId=file://nowhere")
    assert parsed == {"revertToVersionId": "file://nowhere"}
