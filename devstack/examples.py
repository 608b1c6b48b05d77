"""Local stack: the AWS CLI reference page's own image sets, built from pydicom's CT sample.

The update-image-set-metadata page's examples name their data store, image sets, series and
instances. The demo seeds image sets with exactly those identifiers so that every example runs
as printed, adding only `--endpoint-url` and a principal.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, generate_uid

from devstack.admin import EmulatorAdmin
from devstack.seeds import sample_path

DEMO_DATASTORE_ID = "12345678901234567890123456789012"
"""The AWS page's data store id: the demo's, so the examples run as printed."""
IMAGE_SET_A = "ea92b0d8838c72a3f25d00d13616f87e"
"""Examples 1-3 and the v1 page's example: one series of two instances, StudyDescription CHEST."""
IMAGE_SET_B = "53d5fdb05ca4d46ac7ca64b06545c66e"
"""Examples 4-7: the series and instance of examples 5-6, and those of example 7."""
EXAMPLE_SERIES = "1.1.1.1.1.1.12345.123456789012.123.12345678901234.1"
"""The series UID of examples 3, 5 and 6; they name their instance with the same UID."""
EXAMPLE_SERIES_7 = "1.3.6.1.4.1.5962.99.1.3633258862.2104868982.1369432891697.3656.0"
EXAMPLE_SOP_7 = "1.3.6.1.4.1.5962.99.1.3633258862.2104868982.1369432891697.3659.0"
STUDY_DESCRIPTION = "CHEST"
"""Example 2 removes StudyDescription `CHEST`; a removal must name the current value."""

LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    # Example 3 removes an instance: its series keeps a second one.
    IMAGE_SET_A: ((EXAMPLE_SERIES, EXAMPLE_SERIES), (EXAMPLE_SERIES, EXAMPLE_SERIES[:-1] + "2")),
    IMAGE_SET_B: ((EXAMPLE_SERIES, EXAMPLE_SERIES), (EXAMPLE_SERIES_7, EXAMPLE_SOP_7)),
}
"""Image set id → its (SeriesInstanceUID, SOPInstanceUID) pairs."""


def write_examples(folder: Path) -> dict[str, list[Path]]:
    """CT_small.dcm rewritten to the page's UIDs: the files of each image set, keyed by its id.

    CT_small carries the GE private element (0009,1001) that example 6 updates. Each image set is
    its own study, with a StudyInstanceUID derived from the image set id (stable across runs).
    """
    written: dict[str, list[Path]] = {}
    for image_set_id, instances in LAYOUT.items():
        study_uid = generate_uid(entropy_srcs=[image_set_id])
        written[image_set_id] = []
        for index, (series_uid, sop_uid) in enumerate(instances):
            dataset = dcmread(sample_path("CT_small.dcm"))
            dataset.StudyInstanceUID = study_uid
            dataset.StudyDescription = STUDY_DESCRIPTION
            dataset.SeriesInstanceUID = UID(series_uid)
            dataset.SOPInstanceUID = UID(sop_uid)
            dataset.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            path = folder / image_set_id / f"instance-{index}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(path)
            written[image_set_id].append(path)
    return written


def seed_examples(emulator: EmulatorAdmin, datastore_id: str, folder: Path) -> list[str]:
    """Seed the page's image sets (non-primary, version 1) into a running emulator."""
    for image_set_id, paths in write_examples(folder).items():
        body = {
            "paths": [str(path) for path in paths],
            "datastoreId": datastore_id,
            "imageSetId": image_set_id,
            "isPrimary": False,  # examples 1 and 7 change Patient attributes and a UID
        }
        emulator.admin("POST", "seed", body)
    return list(LAYOUT)


def rewind_examples(emulator: EmulatorAdmin, datastore_id: str) -> None:
    """Put the page's image sets back at version 1, the version every example but 4 names."""
    for image_set_id in LAYOUT:
        emulator.admin("POST", "rewind", {"datastoreId": datastore_id, "imageSetId": image_set_id})
