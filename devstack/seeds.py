"""Local stack: DICOM files to seed the emulator with, from pydicom's samples with fresh UIDs."""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SAMPLES = ("CT_small.dcm", "MR_small.dcm")
"""pydicom's sample files the copies are made from, in turn."""


def sample_path(name: str) -> Path:
    """One of pydicom's test files."""
    return Path(str(get_testdata_file(name)))


def fresh_copies(count: int, folder: Path) -> list[Path]:
    """`count` copies of the samples with fresh study/series/instance UIDs: one image set each."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = [dcmread(sample_path(name)) for name in SAMPLES]
    written = []
    for index in range(count):
        dataset = samples[index % len(samples)]
        _renew(dataset, generate_uid(), generate_uid())
        written.append(folder / f"copy-{index:05d}.dcm")
        dataset.save_as(written[-1])
    return written


def samples_then_copies(count: int, folder: Path) -> list[Path]:
    """The samples themselves first (the demo's two image sets), then fresh copies up to `count`."""
    samples = [sample_path(name) for name in SAMPLES]
    if count <= len(samples):
        return samples[:count]
    return [*samples, *fresh_copies(count - len(samples), folder)]


def two_series_studies(count: int, folder: Path) -> list[Path]:
    """`count` studies, each one image set of two series: "A" with two instances, "B" with one.

    Two of each let tests remove a series or an instance and still leave a valid image set.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sample = dcmread(sample_path("CT_small.dcm"))
    written = []
    for study in range(count):
        study_uid = generate_uid()
        for series, instances in (("A", 2), ("B", 1)):
            series_uid = generate_uid()
            for instance in range(instances):
                _renew(sample, study_uid, series_uid)
                written.append(folder / f"study-{study:03d}-{series}{instance}.dcm")
                sample.save_as(written[-1])
    return written


def _renew(dataset: Dataset, study_uid: str, series_uid: str) -> None:
    """Give `dataset` these study and series UIDs and a fresh SOP instance UID."""
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
