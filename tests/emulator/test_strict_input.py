"""The emulator refuses what HealthImaging refuses: non-JSON numbers, lone surrogates, unlisted
attributes outside an instance, VR formats and VM without force, the 10 KB payload quota."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.config import DEFAULT_TPS, Quotas, RateLimit
from tests.emulator.conftest import (
    DEMO_DATASTORE,
    boto3_client,
    emulator_thread,
    fast_settings,
    metadata,
    sample,
    settled,
)
from tests.emulator.test_update_semantics import CT_SERIES, instance_update, update

NOT_JSON = [
    b'{"Patient": {"DICOM": {"PatientName": NaN}}}',
    b'{"Study": {"DICOM": {"PatientWeight": Infinity}}}',
    b'{"Study": {"DICOM": {"PatientWeight": 1e999}}}',
    b'{"Study": {"DICOM": {"PatientWeight": -1e999}}}',
    b'{"Study": {"DICOM": {"StudyID": 18446744073709551616}}}',
    b'{"Patient": {"DICOM": {"PatientName": "A\\ud800"}}}',
    b'{"Patient": {"DICOM": {"\\udc00": "A"}}}',
]


def raw_update(client: Any, image_set_id: str, updatable: bytes, **kwargs: Any) -> Any:
    return client.update_image_set_metadata(
        datastoreId=DEMO_DATASTORE,
        imageSetId=image_set_id,
        latestVersionId="1",
        updateImageSetMetadataUpdates={"DICOMUpdates": {"updatableAttributes": updatable}},
        **kwargs,
    )


@pytest.mark.parametrize("document", NOT_JSON)
def test_non_json_values_are_refused(client: Any, seeded: list[str], document: bytes) -> None:
    with pytest.raises(client.exceptions.ValidationException):
        raw_update(client, seeded[0], document, force=True)
    assert metadata(client, DEMO_DATASTORE, seeded[0])["Patient"]  # the image set is untouched


def test_a_surrogate_pair_escape_is_json(client: Any, seeded: list[str]) -> None:
    raw_update(client, seeded[0], b'{"Patient": {"DICOM": {"PatientName": "\\ud83d\\ude00"}}}')
    settled(client, DEMO_DATASTORE, seeded[0])
    name = metadata(client, DEMO_DATASTORE, seeded[0])["Patient"]["DICOM"]["PatientName"]
    assert name == "\U0001f600"


REFUSED_WITHOUT_FORCE = [
    {"Study": {"DICOM": {"StudyDate": "2024-01-02"}}},
    {"Study": {"DICOM": {"StudyTime": "25"}}},
    {"Study": {"DICOM": {"PatientAge": 30}}},
    {"Study": {"DICOM": {"AccessionNumber": "A" * 17}}},
    {"Study": {"DICOM": {"StudyDescription": ["ONE"]}}},
    instance_update({"Rows": 70000}),
    instance_update({"Rows": "512"}),
    instance_update({"SOPClassUID": "1.02"}),
    instance_update({"PixelSpacing": "0.5"}),
    instance_update({"ImageType": ["ORIGINAL", "PRIMARY"]}),
    instance_update({"ReferencedImageSequence": []}),
    instance_update({"00100011": "x"}),
]


@pytest.mark.parametrize("updatable", REFUSED_WITHOUT_FORCE)
def test_doomed_without_force(client: Any, seeded: list[str], updatable: dict[str, Any]) -> None:
    with pytest.raises(client.exceptions.ValidationException):
        update(client, seeded[0], updatable=updatable)


def test_force_lets_nonconforming_values_through(client: Any, seeded: list[str]) -> None:
    update(
        client, seeded[0], updatable={"Study": {"DICOM": {"StudyDate": "2024-01-02"}}}, force=True
    )
    settled(client, DEMO_DATASTORE, seeded[0])


def test_conforming_values_need_no_force(client: Any, seeded: list[str]) -> None:
    updatable = {
        "Study": {"DICOM": {"StudyDate": "20240102", "StudyTime": "101500", "PatientAge": "030Y"}},
    }
    update(
        client, seeded[0], updatable=updatable | instance_update({"SmallestImagePixelValue": -5})
    )
    settled(client, DEMO_DATASTORE, seeded[0])


@pytest.mark.parametrize(
    "updatable",
    [
        {"Study": {"DICOM": {"00100011": "x"}}},
        {"Patient": {"DICOM": {"ImageComments": "x"}}},
        {"Study": {"Series": {CT_SERIES: {"DICOM": {"00091001": "x"}}}}},
    ],
)
def test_unlisted_attributes_only_on_an_instance(
    client: Any, seeded: list[str], updatable: dict[str, Any]
) -> None:
    with pytest.raises(client.exceptions.ValidationException):
        update(client, seeded[0], updatable=updatable, force=True)


def test_the_payload_quota_counts_both_blobs() -> None:
    tps = {**DEFAULT_TPS, "UpdateImageSetMetadata": RateLimit(1000, 1000)}
    with emulator_thread(fast_settings(quotas=Quotas(tps=tps))) as emulator:
        image_set = emulator.reset_and_seed([sample("CT_small.dcm")])[0]
        client = boto3_client(emulator.url)
        document = b'{"Study": {"DICOM": {"StudyDescription": "A"}}}'
        padded = document + b" " * (5_121 - len(document))
        both = {"updatableAttributes": padded, "removableAttributes": padded}
        with pytest.raises(client.exceptions.ServiceQuotaExceededException) as raised:
            client.update_image_set_metadata(
                datastoreId=DEMO_DATASTORE,
                imageSetId=image_set,
                latestVersionId="1",
                updateImageSetMetadataUpdates={"DICOMUpdates": both},
            )
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
        raw_update(client, image_set, document + b" " * (10_240 - len(document)))  # at the quota
